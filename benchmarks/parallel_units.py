"""Two arm × seed units at once on one thread each, or one at a time on both threads?

``vardecouple run --jobs 2`` (with ``--order arm``) trains and decodes two seeds of an arm
in two spawned processes with one torch thread each; without it a run makes one unit at a
time with every thread. Which gets more of a study done per hour on this machine? This
measures it on the real units of ``examples/study-arabic.toml`` (gemma3-270m, LoRA r 16,
bf16 autocast, batches of 8 FLORES-200 pairs; exact greedy decoding with the study's
``[eval]`` settings), in two workloads:

* **train**: the ``standard`` arm through :func:`vardecouple.experiment.arms.train_arm`
  (the path ``vardecouple run`` takes), ``--steps`` steps, into a temporary folder. The
  step time is each step's ``seconds`` from ``train_log.jsonl`` (the optimiser step, not
  the model load or the step-0 probe refresh), median over the steps from ``--skip`` on.
  Throughput: steps per second summed over the processes (``jobs / median step``).
* **decode**: :func:`vardecouple.evaluate.scoring.evaluate_model` with ``[eval]``'s
  decoding settings on the first ``--rows`` devtest rows of ``arb_Arab->arz_Arab`` and
  ``arz_Arab->arb_Arab`` (one of each direction kind), the model with the adapter of
  ``studies/arabic/runs/standard/seed-0`` (adapters are not committed: where it is absent,
  the base model; the JSON records which).
  Throughput: sentences decoded per second of wall time, from the moment every process
  of the variant has loaded its model until the last one finishes.

Variants: ``one`` = one process with 2 threads; ``two`` = two processes with 1 thread
each, at once, each doing the same work as ``one`` (training seed 1, or decoding the same
rows), so that the throughputs compare equal work. Every worker is a fresh subprocess
(``OMP_NUM_THREADS`` and ``torch.set_num_threads`` set to its share,
``OMP_WAIT_POLICY=PASSIVE`` as ``make`` sets it); the processes of a variant load their
model, then wait for each other at a file barrier before the timed part. Rounds alternate
the variants' order; the ratio two/one is taken per round, and its median reported. The
JSON also says whether one thread and two give the same numbers: the training losses and
the hypotheses of each variant's first process.

Nothing else may run on the machine meanwhile (a study paused). Command::

    .venv/bin/python benchmarks/parallel_units.py [--rounds 2] [--steps 16] [--rows 48]
    .venv/bin/python benchmarks/parallel_units.py --quick --out DIR   # tiny, to try it
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

from _common import RESULTS, ROOT, Run, md_table, median, write_results

CONFIG = ROOT / "examples" / "study-arabic.toml"
ADAPTER_RUN = ROOT / "studies" / "arabic" / "runs" / "standard" / "seed-0"
DIRECTIONS = ["arb_Arab->arz_Arab", "arz_Arab->arb_Arab"]
SEED = 1  # every process trains this seed: the variants do the same work
VARIANTS = {"one": [2], "two": [1, 1]}  # the threads of each process


# --------------------------------------------------------------------------- workers
def _barrier(folder: Path, name: str, expect: int) -> None:
    """Say this worker is ready, then wait until ``expect`` workers are."""
    (folder / f"{name}.ready").touch()
    while len(list(folder.glob("*.ready"))) < expect:
        time.sleep(0.05)


def worker(args: argparse.Namespace) -> None:
    """One process of a variant: load, wait at the barrier, do the timed work, write JSON."""
    import torch

    torch.set_num_threads(args.threads)
    from vardecouple.evaluate.scoring import evaluate_model, test_sets
    from vardecouple.experiment.arms import load_base, prepare_data, train_arm
    from vardecouple.experiment.config import load_config
    from vardecouple.experiment.context import decode_config, has_adapter, load_trained

    config = load_config(CONFIG)
    splits = prepare_data(config)
    work, barrier = Path(args.work), Path(args.barrier)
    result: dict[str, Any] = {"seed": args.seed, "threads": torch.get_num_threads()}
    if args.worker == "train":
        train = config.train.model_copy(update={"steps": args.steps, "checkpoint_every": 10**6})
        config = config.model_copy(update={"train": train})
        _barrier(barrier, f"{args.index}", args.expect)  # the load is inside train_arm
        start = time.perf_counter()
        train_arm(config, "standard", work, seed=args.seed, progress=False, splits=splits)
        result["wall_s"] = time.perf_counter() - start
        log = [json.loads(x) for x in (work / "train_log.jsonl").read_text().splitlines()]
        steps = [r for r in log if "loss" in r]
        result["step_seconds"] = [r["seconds"] for r in steps]
        result["losses"] = [r["loss"] for r in steps]
    else:
        if has_adapter(config, ADAPTER_RUN):
            model, tokenizer = load_trained(config, splits, ADAPTER_RUN)
            result["adapter"] = str(ADAPTER_RUN.relative_to(ROOT))
        else:
            loaded = load_base(config, splits)
            model, tokenizer, result["adapter"] = loaded.model, loaded.tokenizer, None
        model.eval()
        tests = test_sets(splits, args.rows, DIRECTIONS)
        _barrier(barrier, f"{args.index}", args.expect)
        start = time.perf_counter()
        with torch.inference_mode():
            hyps, _, sentences = evaluate_model(
                model, tokenizer, tests, work, template=config.data.template,
                decode_config=decode_config(config), progress=False,
            )  # fmt: skip
        result["wall_s"] = time.perf_counter() - start
        result["started"], result["finished"] = start, time.perf_counter()
        result["sentences"] = sentences
        result["hypotheses"] = hyps
    Path(args.result).write_text(json.dumps(result))


# --------------------------------------------------------------------------- driver
def run_variant(kind: str, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run one variant of one workload in fresh subprocesses; what each process measured."""
    with tempfile.TemporaryDirectory(prefix="parallel-units-") as tmp:
        barrier = Path(tmp) / "barrier"
        barrier.mkdir()
        procs, results = [], []
        for k, threads in enumerate(VARIANTS[variant]):
            result = Path(tmp) / f"result-{k}.json"
            env = os.environ | {"OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE"}
            cmd = [sys.executable, __file__, "--worker", kind, "--threads", str(threads),
                   "--seed", str(SEED), "--index", str(k),
                   "--steps", str(args.steps), "--rows", str(args.rows),
                   "--expect", str(len(VARIANTS[variant])), "--barrier", str(barrier),
                   "--work", str(Path(tmp) / f"work-{k}"), "--result", str(result)]  # fmt: skip
            procs.append(subprocess.Popen(cmd, env=env))
            results.append(result)
        for p in procs:
            if p.wait() != 0:
                raise SystemExit(f"parallel_units: a {kind}/{variant} worker exited {p.returncode}")
        return {"processes": [json.loads(r.read_text()) for r in results]}


def throughput(kind: str, measured: dict[str, Any], skip: int) -> float:
    """Train: steps per second over the processes; decode: sentences per wall second."""
    procs = measured["processes"]
    if kind == "train":
        return sum(1.0 / median(p["step_seconds"][skip:]) for p in procs)
    wall = max(p["finished"] for p in procs) - min(p["started"] for p in procs)
    return sum(p["sentences"] for p in procs) / wall


def markdown(report: dict[str, Any]) -> str:
    rows = []
    for kind, block in report["workloads"].items():
        unit = "steps/s" if kind == "train" else "sentences/s"
        for r, rnd in enumerate(block["rounds"]):
            one, two = (f"{rnd[v]['throughput']:.3f} {unit}" for v in ("one", "two"))
            rows.append([kind, str(r), " → ".join(rnd["order"]), one, two, f"{rnd['ratio']:.2f}"])
        rows.append([kind, "median", "", "", "", f"**{block['median_ratio']:.2f}**"])
    head = ["workload", "round", "order", "one (1 × 2 threads)", "two (2 × 1 thread)", "two / one"]
    same = report["same_numbers"]
    lines = [f"# {report['benchmark']}", "", f"{report['date']}, `{report['command']}`", ""]
    lines += md_table(head, list("llllrr"), rows)
    lines += [
        "",
        f"- training losses (seed {SEED}), 2 threads vs 1: "
        f"max |Δ| = {same['train_max_loss_diff']:.3g}",
        f"- hypotheses identical, 2 threads vs 1: {same['decode_identical']} of "
        f"{same['decode_total']}",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=16, help="training steps per unit")
    parser.add_argument("--skip", type=int, default=2, help="steps left out of the median")
    parser.add_argument("--rows", type=int, default=48, help="test rows per direction")
    parser.add_argument("--workloads", nargs="+", default=["train", "decode"],
                        choices=["train", "decode"])  # fmt: skip
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--quick", action="store_true", help="1 round, 3 steps, 4 rows")
    # a worker's own arguments (the driver passes them)
    parser.add_argument("--worker", choices=["train", "decode"], help=argparse.SUPPRESS)
    for name in ("--threads", "--seed", "--index", "--expect"):
        parser.add_argument(name, type=int, default=1, help=argparse.SUPPRESS)
    for name in ("--barrier", "--work", "--result"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    if args.quick:
        args.rounds, args.steps, args.skip, args.rows = 1, 3, 1, 4
    run = Run("parallel_units", "torch", "transformers", "peft")
    report: dict[str, Any] = {"workloads": {}}
    for kind in args.workloads:
        rounds = []
        for r in range(args.rounds):
            order = ["one", "two"] if r % 2 == 0 else ["two", "one"]
            rnd: dict[str, Any] = {"order": order}
            for variant in order:
                measured = run_variant(kind, variant, args)
                measured["throughput"] = throughput(kind, measured, args.skip)
                rnd[variant] = measured
                print(f"{kind} round {r} {variant}: {measured['throughput']:.3f}/s", flush=True)
            rnd["ratio"] = rnd["two"]["throughput"] / rnd["one"]["throughput"]
            rounds.append(rnd)
        run.mark(f"after {kind}")
        ratio = median([x["ratio"] for x in rounds])
        report["workloads"][kind] = {"rounds": rounds, "median_ratio": ratio}
    same: dict[str, Any] = {"train_max_loss_diff": float("nan"), "decode_identical": 0,
                            "decode_total": 0}  # fmt: skip
    for kind, block in report["workloads"].items():
        first = block["rounds"][0]
        a = first["one"]["processes"][0]  # 2 threads
        b = first["two"]["processes"][0]  # 1 thread
        if kind == "train":
            same["train_max_loss_diff"] = max(
                abs(x - y) for x, y in zip(a["losses"], b["losses"], strict=True)
            )
        else:
            for d, hyps in a["hypotheses"].items():
                same["decode_total"] += len(hyps)
                same["decode_identical"] += sum(
                    x == y for x, y in zip(hyps, b["hypotheses"][d], strict=True)
                )
    report["same_numbers"] = same
    for block in report["workloads"].values():  # the outputs themselves are not kept
        for rnd in block["rounds"]:
            for variant in VARIANTS:
                for proc in rnd[variant]["processes"]:
                    proc.pop("hypotheses", None)
    report["settings"] = {k: getattr(args, k) for k in ("rounds", "steps", "skip", "rows")}
    report["settings"]["directions"] = DIRECTIONS
    report = run.record(**report, load=run.load, wall_s=run.seconds)
    for path in write_results(args.out / "parallel_units", report, markdown(report)):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
