"""The sub-commands: each reads its arguments, calls the library and prints what it did.

Every import of the library sits inside the command that needs it: `vardecouple --help`
then loads neither torch nor transformers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

__all__ = [
    "command_line",
    "demo_command",
    "eval_command",
    "planted_command",
    "probe_command",
    "report_command",
    "run_command",
    "train_command",
]


def planted_command(args: argparse.Namespace) -> int:
    import torch

    from vardecouple.probes import ESTIMATORS, make_estimator
    from vardecouple.probes.synthetic import planted_varieties

    torch.manual_seed(args.seed)
    data = planted_varieties(
        args.n,
        args.dim,
        args.rank,
        n_varieties=args.varieties,
        snr=args.snr,
        separation=args.separation,
        support=args.support,
        seed=args.seed,
    )
    rows = []
    for name in ESTIMATORS:
        discriminative = name in ("variational", "mean-diff", "leace", "lda")
        target = data.discriminating_basis if discriminative else data.standard_basis
        rank = target.shape[1]
        options = {"classes": "all"} if name in ("variational", "lda") else {}
        est = make_estimator(name, rank, **options)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sub = est.fit(data.states, data.labels)
        seconds = time.perf_counter() - start
        angle = float(sub.principal_angles(target).max())
        rows.append(
            {
                "estimator": name,
                "target": "discriminating" if discriminative else "standard",
                "rank": sub.rank,
                "largest_angle_deg": round(angle, 2),
                "overlap_of_standard_states": round(sub.overlap(data.states[data.labels == 0]), 4),
                "fit_seconds": round(seconds, 3),
            }
        )
    if args.json:
        setup = {k: v for k, v in vars(args).items() if k not in ("func", "command", "json")}
        json.dump({"setup": setup, "results": rows}, sys.stdout, indent=2)
        print()
        return 0
    print(
        f"Planted family: n={args.n} states in d={args.dim}, {args.varieties} non-standard "
        f"variet{'y' if args.varieties == 1 else 'ies'}; standard subspace rank {args.rank} at "
        f"{args.snr:g}x the noise variance; varieties offset by {args.separation:g} noise sd."
    )
    print(f"{'estimator':<24}{'target':<16}{'rank':>5}{'angle°':>9}{'overlap':>9}{'fit s':>8}")
    for r in rows:
        print(
            f"{r['estimator']:<24}{r['target']:<16}{r['rank']:>5}{r['largest_angle_deg']:>9.2f}"
            f"{r['overlap_of_standard_states']:>9.3f}{r['fit_seconds']:>8.3f}"
        )
    print("angle° = largest principal angle to the planted subspace (0 = exact, 90 = orthogonal).")
    return 0


def train_command(args: argparse.Namespace) -> int:
    from vardecouple.experiment.arms import train_arm
    from vardecouple.experiment.config import load_config

    config = load_config(args.config, data_root=args.data_root).with_recorded_defaults(args.out)
    seed = args.seed if args.seed is not None else config.train.seeds[0]
    config.arm(args.arm)  # a wrong arm name fails before any loading
    if config.arm(args.arm).match_penalty_of or config.arm(args.arm).kind != "train":
        raise ValueError(
            f"train: arm {args.arm!r} is not a plain trained arm (kind or match_penalty_of);"
            " `vardecouple run` trains it"
        )
    from vardecouple.experiment.arms import train_state

    try:
        state = train_state(config, args.arm, seed, args.out)
    except FileExistsError:
        state = "other"  # train_arm checks the inputs first, then says so
    if state == "finished":
        print(f"train: {args.out} is already finished (same config, arm and seed); nothing "
              "to do.")  # fmt: skip
        return 0
    summary, _ = train_arm(config, args.arm, args.out, seed=seed, resume=args.resume)
    if os.environ.get("RANK", "0") != "0":  # several processes: the main one reports
        return 0
    if summary.get("resumed_from"):
        print(f"resumed from the checkpoint at step {summary['resumed_from']}")
    print(
        f"trained arm {args.arm!r} (seed {seed}) for {summary['steps']} steps in "
        f"{summary['train_seconds']:.0f} s; log, adapter and summary in {args.out}"
    )
    return 0


def command_line() -> str:
    import shlex

    return "vardecouple " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def run_command(args: argparse.Namespace) -> int:
    from vardecouple.experiment.config import load_config
    from vardecouple.experiment.run import run_experiment
    from vardecouple.experiment.schedule import run_state

    config = load_config(args.config, data_root=args.data_root).with_recorded_defaults(args.out)
    if args.rates_from is not None and not args.plan:
        raise ValueError("run: --rates-from goes with --plan")
    if args.interim:
        from vardecouple.experiment.interim import write_interim

        if args.plan or args.overwrite or args.jobs > 1:
            raise ValueError("run: --interim goes without --plan, --overwrite and --jobs")
        report = write_interim(config, args.out, command=command_line())
        print(f"interim: {report.parent / 'interim.json'}\nreport:  {report}")
        return 0
    if args.plan:
        from vardecouple.experiment.plan import format_plan, measured_rates, plan_run

        run_state(config, args.out)  # a folder of another config is refused, as a run would
        rates = measured_rates(args.rates_from if args.rates_from is not None else args.out)
        print(format_plan(plan_run(config, args.out, order_by=args.order), rates))
        return 0
    try:
        state = run_state(config, args.out)
    except FileExistsError:
        state = "other"  # run_experiment checks the inputs first, then says so
    if not args.overwrite and state == "finished":
        done = Path(args.out) / "results.json"
        print(f"run: {args.out} is already finished (same config); nothing to do.\n"
              f"results: {done}\nreport:  {done.parent / 'report.md'}")  # fmt: skip
        return 0
    results = run_experiment(
        config,
        args.out,
        command=command_line(),
        overwrite=args.overwrite,
        progress=True,
        jobs=args.jobs,
        order_by=args.order,
    )
    print(f"results: {results}\nreport:  {results.parent / 'report.md'}")
    return 0


def power_command(args: argparse.Namespace) -> int:
    from vardecouple.analysis.power import as_records, estimate_power, format_power

    if not (Path(args.run_dir) / "config.json").is_file():
        raise FileNotFoundError(f"power: {args.run_dir} holds no run (no config.json)")
    references = None
    if args.config is not None:
        from vardecouple.evaluate.scoring import test_sets
        from vardecouple.experiment.arms import prepare_data
        from vardecouple.experiment.config import load_config
        from vardecouple.experiment.schedule import run_state

        config = load_config(args.config, data_root=args.data_root)
        config = config.with_recorded_defaults(args.run_dir)
        run_state(config, args.run_dir)  # the references of another config: refused
        tests = test_sets(prepare_data(config), None, config.eval_directions())
        references = {d: [ex.tgt_text for ex in rows] for d, rows in tests.items()}
    elif args.data_root is not None:
        raise ValueError("power: --data-root goes with --config")
    estimates = [
        e
        for a, b in args.compare
        for e in estimate_power(
            args.run_dir,
            a,
            b,
            target=args.target,
            seed=args.seed,
            all_seeds=args.all_seeds,
            references=references,
        )
    ]
    print(json.dumps(as_records(estimates), indent=1) if args.json else format_power(estimates))
    return 0


def report_command(args: argparse.Namespace) -> int:
    from vardecouple.report import write_report

    print(f"report: {write_report(Path(args.run_dir))}")
    return 0


def eval_command(args: argparse.Namespace) -> int:
    from vardecouple.experiment.config import load_config
    from vardecouple.experiment.evaluation import evaluate_one

    config = load_config(args.config, data_root=args.data_root)
    erase = None
    fitting = (args.erase_layers, args.erase_estimator, args.erase_rank)
    if args.erase_from is not None and any(x is not None for x in fitting):
        raise ValueError(
            "eval: --erase-from takes its layers, estimator and rank from the saved "
            "subspace; drop --erase-layers/--erase-estimator/--erase-rank"
        )
    if args.erase_from is None and any(x is not None for x in (*fitting, args.erase_alpha)):
        from vardecouple.erase import EraseConfig

        d = config.decoupler
        erase = EraseConfig(
            layers=tuple(args.erase_layers) if args.erase_layers is not None else (
                tuple(d.layers) if d.layers is not None else None),
            alpha=args.erase_alpha if args.erase_alpha is not None else 1.0,
            estimator=args.erase_estimator or d.estimator,
            rank=args.erase_rank or d.rank,
            estimator_options=d.estimator_options if not args.erase_estimator else {},
            measure_fraction=d.measure_fraction,
            probe_batch_size=d.probe_batch_size,
            max_length=config.data.max_length,
            seed=config.train.seeds[0],
        )  # fmt: skip
    out = evaluate_one(
        config,
        args.out,
        model=args.model,
        adapter=args.adapter,
        erase=erase,
        erase_from=args.erase_from,
        erase_alpha=args.erase_alpha if args.erase_alpha is not None else 1.0,
        command=command_line(),
    )
    if out is not None:  # the main process (the only one under torchrun)
        print(f"scores: {out}")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from vardecouple.experiment.demo import run_demo
    from vardecouple.experiment.demo_setup import QUICK, DemoConfig

    demo = QUICK if args.quick else DemoConfig()
    sizes = {k: getattr(args, k) for k in ("steps", "test_rows", "pretrain_steps", "lam")}
    demo = replace(demo, **{k: v for k, v in sizes.items() if v is not None})
    if args.seeds is not None:
        demo = replace(demo, seeds=tuple(args.seeds))
    state = run_demo(
        args.out,
        demo=demo,
        corpus=args.corpus,
        standard=args.standard,
        varieties=args.varieties,
        model=args.model,
        command=command_line(),
        overwrite=args.overwrite,
    )
    if state.status == "finished":
        print(f"demo: {args.out} is already finished (same version and sizes); nothing to do."
              f"\nreport: {state.report}  (--overwrite redoes it)")  # fmt: skip
    else:
        print(f"demo finished; report: {state.report}")
    return 0


def probe_command(args: argparse.Namespace) -> int:
    from vardecouple.analysis.probing import run_probe
    from vardecouple.probes.artifact import load_subspace

    saved = load_subspace(args.subspace) if args.subspace is not None else None
    path = run_probe(
        args.model,
        args.corpus,
        args.standard,
        args.out,
        varieties=args.varieties,
        adapters=args.adapter or [],
        layers=",".join(args.layers) if args.layers else "all",
        max_rows=args.max_rows,
        rank=args.rank,
        batch_size=args.batch_size,
        max_length=args.max_length,
        seed=args.seed,
        subspaces=saved,
    )
    print(f"probe: {path}\nplots: {path.parent / 'plots'}")
    return 0
