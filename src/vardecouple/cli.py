"""The ``vardecouple`` command line.

Sub-commands so far:

- ``vardecouple train CONFIG --arm NAME --out DIR``: fine-tune one arm of a TOML config
  (LoRA + the online decoupler), resumable with ``--resume``.
- ``vardecouple planted``: draw a synthetic family of varieties with a planted standard
  subspace and planted discriminating directions, run every estimator on it and print
  how close each gets (largest principal angle, degrees). A one-minute check that the
  method's core works on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from vardecouple import __version__


def _planted(args: argparse.Namespace) -> int:
    import torch

    from vardecouple.subspace import ESTIMATORS, make_estimator
    from vardecouple.synthetic import planted_varieties

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


def _train(args: argparse.Namespace) -> int:
    from vardecouple.arms import train_arm
    from vardecouple.config import load_config

    config = load_config(args.config, data_root=args.data_root).with_recorded_defaults(args.out)
    seed = args.seed if args.seed is not None else config.train.seeds[0]
    config.arm(args.arm)  # a wrong arm name fails before any loading
    if config.arm(args.arm).match_penalty_of or config.arm(args.arm).kind != "train":
        raise ValueError(
            f"train: arm {args.arm!r} is not a plain trained arm (kind or match_penalty_of);"
            " `vardecouple run` trains it"
        )
    from vardecouple.arms import train_state

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


def _command_line() -> str:
    import shlex

    return "vardecouple " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _run(args: argparse.Namespace) -> int:
    from vardecouple.config import load_config
    from vardecouple.experiment import run_experiment, run_state

    config = load_config(args.config, data_root=args.data_root).with_recorded_defaults(args.out)
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
        command=_command_line(),
        overwrite=args.overwrite,
        progress=True,
        jobs=args.jobs,
    )
    print(f"results: {results}\nreport:  {results.parent / 'report.md'}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from vardecouple.report import write_report

    print(f"report: {write_report(Path(args.run_dir))}")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from vardecouple.config import load_config
    from vardecouple.experiment import evaluate_one

    config = load_config(args.config, data_root=args.data_root)
    erase = None
    given = (args.erase_layers, args.erase_alpha, args.erase_estimator, args.erase_rank)
    if any(x is not None for x in given):
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
            batch_size=d.probe_batch_size,
            max_length=config.data.max_length,
            seed=config.train.seeds[0],
        )  # fmt: skip
    out = evaluate_one(
        config,
        args.out,
        model=args.model,
        adapter=args.adapter,
        erase=erase,
        command=_command_line(),
    )
    if out is not None:  # the main process (the only one under torchrun)
        print(f"scores: {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from vardecouple.demo import QUICK, DemoConfig, run_demo

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
        command=_command_line(),
        overwrite=args.overwrite,
    )
    if state.status == "finished":
        print(f"demo: {args.out} is already finished (same version and sizes); nothing to do."
              f"\nreport: {state.report}  (--overwrite redoes it)")  # fmt: skip
    else:
        print(f"demo finished; report: {state.report}")
    return 0


def _probe(args: argparse.Namespace) -> int:
    from vardecouple.probing import run_probe

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
    )
    print(f"probe: {path}\nplots: {path.parent / 'plots'}")
    return 0


class _ListFlag(argparse.Action):
    """A list flag, one habit everywhere: ``--x a b c``, ``--x a,b,c`` or a mix; a
    repeated flag adds to the list. ``item`` converts (and checks) each element."""

    def __init__(self, option_strings: list[str], dest: str, item: Any = str, **kwargs: Any):
        self.item = item
        super().__init__(option_strings, dest, nargs="+", **kwargs)

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        items = []
        for value in values:
            for part in value.split(","):
                if not part.strip():
                    raise argparse.ArgumentError(self, f"empty item in {value!r}")
                try:
                    items.append(self.item(part.strip()))
                except (ValueError, argparse.ArgumentTypeError) as exc:
                    raise argparse.ArgumentError(self, str(exc)) from None
        before = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, [*(before or []), *items])


LISTS = "lists: space- or comma-separated (a b c or a,b,c)"


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line (what, where, expected) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="vardecouple",
        description=(
            "Decouple a dominant standard variety's subspace while fine-tuning language "
            "models on low-resource varieties (arXiv 2508.12803, made explicit)."
        ),
        epilog="Every list flag takes space- or comma-separated values (a b c or a,b,c).",
    )
    parser.add_argument("--version", action="version", version=f"vardecouple {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    t = sub.add_parser(
        "train",
        help="fine-tune one arm of a config (LoRA + online decoupling)",
        description="Fine-tune one arm of a TOML config; see examples/ for configs.",
    )
    t.add_argument("config", help="the TOML config")
    t.add_argument("--arm", required=True, help="the [arms.NAME] table to train")
    t.add_argument("--out", required=True, help="output folder (log, checkpoint, adapter)")
    t.add_argument(
        "--data-root", default=None, help="base of relative paths (default: the config's folder)"
    )
    t.add_argument("--seed", type=int, default=None, help="default: the first of train.seeds")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    t.set_defaults(func=_train)
    r = sub.add_parser(
        "run",
        help="train and evaluate every arm × seed of a config; results.json + report.md",
        description="Train and evaluate every arm × seed; resumes after an interruption.",
    )
    r.add_argument("config", help="the TOML config")
    r.add_argument("--out", required=True, help="run folder (resumed when it exists)")
    r.add_argument("--data-root", default=None, help="base of relative paths")
    r.add_argument(
        "--overwrite", action="store_true", help="delete a finished run in --out and redo it"
    )
    r.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        help="train the seeds of an arm in this many processes at once (default 1)",
    )
    r.set_defaults(func=_run)
    e = sub.add_parser(
        "eval",
        help="evaluate one model (and adapter) on a config's test split",
        description="Decode the config's test split; hypotheses and scores.json in --out.",
    )
    e.add_argument("--config", required=True, help="the TOML config (data, eval settings)")
    e.add_argument("--model", default=None, help="model spec (default: the config's)")
    e.add_argument("--adapter", default=None, help="a LoRA adapter folder (peft)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--data-root", default=None, help="base of relative paths")
    ers = e.add_argument_group(
        "inference-time erasure (any of these turns it on; defaults from [decoupler])"
    )
    ers.add_argument(
        "--erase-layers",
        action=_ListFlag,
        item=_layer,
        default=None,
        help="0-based layers, e.g. 9 or 6 9 or 6,9 (default: middle)",
    )
    ers.add_argument(
        "--erase-alpha", type=_alpha, default=None, help="α of h ← h − α·UUᵀ(h − c) (default 1)"
    )
    ers.add_argument("--erase-estimator", default=None, help="the estimator fitting U")
    ers.add_argument("--erase-rank", type=_positive_int, default=None, help="rank of U")
    e.epilog = LISTS
    e.set_defaults(func=_eval)
    d = sub.add_parser(
        "demo",
        help="the whole study out of the box (synthetic family, tiny model) or on a corpus",
        description=(
            "Run copy/base/standard/decoupled/random arms end to end and write a report. "
            "Default: a synthetic language family and a tiny model pre-trained on it "
            "(no network). With --corpus DIR --standard CODE [--model gemma3-270m]: "
            "a real line-aligned corpus and model."
        ),
    )
    d.add_argument("--out", required=True, help="output folder (data, model, run/report.md)")
    d.add_argument("--corpus", default=None, help="a line-aligned corpus folder instead")
    d.add_argument("--standard", default=None, help="the standard variety code (with --corpus)")
    d.add_argument(
        "--varieties", action=_ListFlag, default=None, help="codes; default: all other codes"
    )
    d.add_argument("--model", default="tiny-random", help="model spec (with --corpus)")
    d.add_argument("--steps", type=_positive_int, default=None, help="training steps per arm")
    d.add_argument("--seeds", action=_ListFlag, item=int, default=None, help="default: 0 1")
    d.add_argument("--test-rows", type=_positive_int, default=None, help="test rows")
    d.add_argument("--pretrain-steps", type=_positive_int, default=None)
    d.add_argument("--lam", type=float, default=None, help="λ of the decoupled arm")
    d.add_argument("--quick", action="store_true", help="a small study (about a minute)")
    d.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a demo of another version or sizes in --out (a finished demo of the "
        "same one is kept: the command says so and exits 0)",
    )
    d.epilog = LISTS
    d.set_defaults(func=_demo)
    rep = sub.add_parser(
        "report",
        help="(re)write RUN_DIR/report.md and its plots from RUN_DIR/results.json",
        description="Write report.md and plots/ from a run folder's results.json.",
    )
    rep.add_argument("run_dir", help="a folder written by `vardecouple run`")
    rep.set_defaults(func=_report)
    pb = sub.add_parser(
        "probe",
        help="geometry and codelengths of the varieties' sentence states, layer by layer",
        description=(
            "Probe a model (and LoRA adapters) on a line-aligned corpus: per decoder layer "
            "and variety, L2/cosine distance, linear CKA, principal angles, overlap and the "
            "online/variational codelengths; OUT/probe.json and OUT/plots/."
        ),
    )
    pb.add_argument("--model", required=True, help="model spec (gemma3-270m, tiny-random, ...)")
    pb.add_argument(
        "--adapter",
        action=_ListFlag,
        default=None,
        metavar="DIR",
        help="peft adapter folder(s), each probed after the base model",
    )
    pb.add_argument("--corpus", required=True, help="a line-aligned corpus folder")
    pb.add_argument("--standard", required=True, help="the standard variety code")
    pb.add_argument(
        "--varieties", action=_ListFlag, default=None, help="codes; default: all other codes"
    )
    pb.add_argument(
        "--layers", action=_ListFlag, default=None, help="all (default) or 0-based indices: 0 3 9"
    )
    pb.add_argument(
        "--max-rows", type=_positive_int, default=1000, help="first N rows (default 1000)"
    )
    pb.add_argument("--rank", type=_positive_int, default=4, help="PCA rank K (default 4)")
    pb.add_argument("--batch-size", type=_positive_int, default=16, help="default 16")
    pb.add_argument(
        "--max-length", type=_positive_int, default=256, help="tokens per sentence (default 256)"
    )
    pb.add_argument("--seed", type=int, default=0, help="seed of the probes (default 0)")
    pb.add_argument("--out", required=True, help="output folder (probe.json, plots/)")
    pb.epilog = LISTS
    pb.set_defaults(func=_probe)
    p = sub.add_parser(
        "planted",
        help="recover a planted subspace with every estimator (a quick self-check)",
        description="Run every subspace estimator on a synthetic family with planted structure.",
    )
    p.add_argument("--n", type=_positive_int, default=2000, help="number of states (default 2000)")
    p.add_argument("--dim", type=_positive_int, default=64, help="state dimension (default 64)")
    p.add_argument(
        "--rank", type=_positive_int, default=4, help="planted standard rank (default 4)"
    )
    p.add_argument(
        "--varieties", type=_positive_int, default=3, help="non-standard varieties (default 3)"
    )
    p.add_argument(
        "--snr", type=float, default=50.0, help="standard-subspace variance ratio (default 50)"
    )
    p.add_argument(
        "--separation", type=float, default=5.0, help="variety offset in noise sd (default 5)"
    )
    p.add_argument(
        "--support",
        type=_positive_int,
        default=None,
        help="put the discriminating directions on this many coordinates",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_planted)
    return parser


def _layer(text: str) -> int:
    try:
        layer = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected layer indices like 6 9 or 6,9, got {text!r}"
        ) from None
    if layer < 0:
        raise argparse.ArgumentTypeError(f"layer indices are 0-based and >= 0, got {text!r}")
    return layer


def _alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _quiet_hf_bars() -> None:
    """transformers reads the environment once, at import; if it is imported, tell it."""
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if not _terminal(sys.stderr):
        # a log file or CI: no progress-bar redraws from transformers / huggingface_hub
        # either (ours write whole lines: vardecouple.progress)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        _quiet_hf_bars()
    try:
        return int(args.func(args))
    except (
        ValueError,
        FileExistsError,
        FileNotFoundError,
        FloatingPointError,
        NotImplementedError,
    ) as exc:
        # bad input, a loss that left the finite numbers, an unsupported engine: one line
        print(f"vardecouple {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
