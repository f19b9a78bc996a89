r"""Where the time of a whole ``vardecouple eval`` goes (issue 14), resumable per direction.

What it measures
----------------
``evaluate_one`` (what ``vardecouple eval --config CONFIG`` runs) on the config's test
split, with wall-clock timers around each phase: preparing the data, training the variety
identifier, loading the model, decoding each direction, and scoring — corpus chrF++/BLEU,
the bootstrap interval and the identifier's rates — per direction. ``--set KEY=VALUE``
overrides ``[eval]`` keys (e.g. ``--set max_examples=null`` for the full test split).

**Resumable.** ``--out`` is an eval folder: a direction whose hypotheses are already
there is read back, not decoded, and its decoding seconds are taken from the timings
JSON (``--timings``, default ``OUT/timings.json``, written after every direction). The
scores are recomputed each time (they are what this profiles too). The run stops at
``--max-minutes`` of decoding (after the direction that crosses it) so that it can be
completed over several sittings.

How to run
----------
::

    .venv/bin/python benchmarks/eval_profile.py --config examples/arabic-flores.toml \
        --adapter ADAPTER --out .bench/eval-defaults \
        --timings benchmarks/results/eval_profile_defaults.json
    .venv/bin/python benchmarks/eval_profile.py --config examples/arabic-flores.toml \
        --quick --out DIR   # smoke run: 2 sentences per direction
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import _common
import vardecouple.evaluate.scoring as evaluate_module
import vardecouple.experiment.arms as arms_module
import vardecouple.experiment.evaluation as experiment_module  # evaluate_one
from vardecouple.experiment.config import load_config

#: where the timed functions are defined or imported by name
MODULES = (evaluate_module, arms_module, experiment_module)


def _timed(module: Any, name: str, phase: str, spent: dict[str, float]) -> None:
    """Wrap ``module.name`` so that its wall time adds to ``spent[phase]``, in every module
    of :data:`MODULES` that holds the same function under that name."""
    real = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent[phase] = spent.get(phase, 0.0) + time.perf_counter() - start

    setattr(module, name, wrapper)
    for other in MODULES:
        if getattr(other, name, None) is real:
            setattr(other, name, wrapper)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an [eval] key (JSON value), e.g. max_examples=null")  # fmt: skip
    parser.add_argument("--adapter", default=None)
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="the eval folder (it holds corpus text: keep it out of git)",
    )
    parser.add_argument("--timings", type=Path, default=None,
                        help="the timings JSON (default: OUT/timings.json)")  # fmt: skip
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop after the direction crossing this much decoding")  # fmt: skip
    parser.add_argument("--score-only", action="store_true",
                        help="time only data, identifier and scoring of the directions "
                        "already decoded in OUT (decoding untouched)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: --set max_examples=2 (after the other --set)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.set.append("max_examples=2")

    config = load_config(args.config)
    updates = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    config = config.model_copy(update={"eval": config.eval.model_copy(update=updates)})
    timings_file = args.timings or args.out / "timings.json"
    timings: dict[str, Any] = (json.loads(timings_file.read_text(encoding="utf-8"))
                               if timings_file.exists() else {})  # fmt: skip
    if timings and timings.get("eval") != config.eval.model_dump():
        raise SystemExit(f"{timings_file}: made with other [eval] settings; use another --out")
    timings["eval"] = config.eval.model_dump()
    timings.setdefault("decode_seconds", {})
    timings.setdefault("sittings", []).append({
        "sitting": _common.utc_now(), "command": _common.command_line(sys.executable),
        "machine": _common.machine("transformers"), "git": _common.git_state()})  # fmt: skip

    spent: dict[str, float] = {}
    _timed(experiment_module, "prepare_data", "prepare data", spent)
    _timed(evaluate_module, "train_identifier", "train variety identifier", spent)
    _timed(experiment_module, "load_base", "load model", spent)
    _timed(evaluate_module, "corpus_scores", "score: chrF++ and BLEU", spent)
    _timed(evaluate_module, "bootstrap_ci", "score: bootstrap interval", spent)
    _timed(evaluate_module.VarietyIdentifier, "rate_vs", "score: variety rates", spent)
    _timed(evaluate_module.VarietyIdentifier, "target_rate", "score: variety rates", spent)
    if args.score_only:
        return score_only(config, args.out, timings, timings_file, spent)
    real_decode = evaluate_module.decode
    budget = args.max_minutes * 60 if args.max_minutes else None

    class Enough(Exception):
        pass

    def decode(*a: Any, desc: str = "decode", **kw: Any) -> list[str]:
        if budget is not None and sum(timings["decode_seconds"].values()) >= budget:
            raise Enough
        start = time.perf_counter()
        out = real_decode(*a, desc=desc, **kw)
        timings["decode_seconds"][desc] = time.perf_counter() - start
        timings.setdefault("sentences", {})[desc] = len(out)
        _common.write_json(timings_file, timings)
        return out

    evaluate_module.decode = decode
    scores = args.out / "scores.json"
    scores.unlink(missing_ok=True)  # scored again on every sitting
    start = time.perf_counter()
    try:
        experiment_module.evaluate_one(config, args.out, adapter=args.adapter, progress=True)
    except Enough:
        done = len(timings["decode_seconds"])
        timings["phases_before_decoding_this_sitting"] = dict(spent)
        _common.write_json(timings_file, timings)
        print(f"stopped after {done} directions ({args.max_minutes} min of decoding)")
        return 0
    wall = time.perf_counter() - start
    record = json.loads(scores.read_text(encoding="utf-8"))
    decoded = sum(timings["decode_seconds"].values())
    phases = {k: v for k, v in spent.items()} | {"decode (all directions)": decoded}
    timings |= {"phases_this_sitting": phases, "wall_this_sitting": wall,
                "decoding": record["decoding"]}  # fmt: skip
    _common.write_json(timings_file, timings)
    rows = [[k, f"{v:.1f}", f"{100 * v / (sum(phases.values())):.1f}"] for k, v in
            sorted(phases.items(), key=lambda kv: -kv[1])]  # fmt: skip
    print("\n".join(_common.md_table(["phase", "seconds", "%"], ["l", "r", "r"], rows)))
    print(f"sentences: {sum(timings['sentences'].values())}, decoding {decoded / 60:.1f} min")
    return 0


def score_only(config: Any, out: Path, timings: dict, timings_file: Path, spent: dict) -> int:
    """Time what ``evaluate_one`` does besides decoding, on the directions decoded so far."""
    from vardecouple.evaluate.scoring import read_lines, test_sets

    splits = experiment_module.prepare_data(config)
    tests = test_sets(splits, config.eval.max_examples)
    identifier, _ = evaluate_module.train_identifier(splits, tests, seed=config.data.seed)
    done = {d: rows for d, rows in tests.items() if (out / "hypotheses" / f"{d}.txt").exists()}
    hyps = {d: read_lines(out / "hypotheses" / f"{d}.txt", len(r)) for d, r in done.items()}
    ev = config.eval
    evaluate_module.score_hypotheses(
        hyps,
        done,
        identifier,
        config.data.standard,
        n_samples=ev.bootstrap_samples,
        seed=ev.bootstrap_seed,
    )
    timings["scoring"] = {"directions": sorted(done), "phases": dict(spent),
                          "sentences": sum(len(r) for r in done.values())}  # fmt: skip
    _common.write_json(timings_file, timings)
    rows = [[k, f"{v:.1f}"] for k, v in sorted(spent.items(), key=lambda kv: -kv[1])]
    print("\n".join(_common.md_table(["phase", "seconds"], ["l", "r"], rows)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
