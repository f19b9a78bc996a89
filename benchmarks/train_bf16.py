"""bf16 against fp32 training on the Arabic example: losses over the first 100 steps.

For each seed (0, 1, 2) the ``decoupled`` arm of ``examples/arabic-flores.toml`` trains
100 steps twice through :func:`vardecouple.experiment.arms.train_arm` — the path ``vardecouple
train`` takes — once with ``[train] dtype = "fp32"`` and once with ``"bf16"`` (autocast
forward and backward; fp32 LoRA weights, AdamW state, loss and penalty). Everything
else is the example's: data, LoRA, λ, the variational probe at layer 9, the cosine
schedule (over 100 steps here). The dev loss of each final adapter is then measured the
same way for both dtypes (fp32, :func:`vardecouple.train.dev_loss`, on the example's 50
held-out dev rows in every direction), and once for the base model, for scale.

Target (issue): the final dev loss of bf16 within 1% (relative) of fp32's in every seed.
The tokens/s of each run are reported too, but they come from runs made one after
another on a shared machine; the side-by-side speed comparison is
``benchmarks/train_speed.py`` (arm (d)).

Resumable: every (seed, dtype) run lives in ``.bench/train_bf16/`` (``--work``;
adapters and checkpoints: never committed) and a rerun continues or skips finished runs;
the results (``train_bf16.{json,md}`` in ``--out``, default ``benchmarks/results/``) are
rewritten after each run. Command::

    .venv/bin/python benchmarks/train_bf16.py [--seeds 0 1 2] [--steps 100]
    .venv/bin/python benchmarks/train_bf16.py --quick --out DIR   # 1 seed, 2 steps
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch

from _common import RESULTS, ROOT, Run, md_table, write_json, write_results
from vardecouple.experiment.arms import load_base, prepare_data, tokenized_features, train_arm
from vardecouple.experiment.config import load_config
from vardecouple.train.step import dev_loss

CONFIG = ROOT / "examples" / "arabic-flores.toml"
ARM = "decoupled"
WORK = ROOT / ".bench" / "train_bf16"
TARGET_RELATIVE = 0.01


def run_one(seed: int, dtype: str, steps: int, work: Path) -> dict[str, Any]:
    """Train (or resume, or read) one run; return its losses and speed."""
    config = load_config(CONFIG)  # its corpora root is relative to examples/
    train = config.train.model_copy(update={"steps": steps, "dtype": dtype, "checkpoint_every": 50})
    config = config.model_copy(update={"train": train})
    out = work / f"seed-{seed}-{dtype}"
    if not (out / "train_summary.json").exists():
        t0 = time.perf_counter()
        train_arm(config, ARM, out, seed=seed, resume=(out / "train_log.jsonl").exists())
        print(f"seed {seed} {dtype}: {time.perf_counter() - t0:.0f} s", flush=True)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    summary = json.loads((out / "train_summary.json").read_text())
    steps_ = [r for r in log if "lm_loss" in r]
    return {
        "seed": seed,
        "dtype": summary["dtype"],
        "steps": len(steps_),
        "lm_loss": [r["lm_loss"] for r in steps_],
        "penalty": [r["penalty"] for r in steps_],
        "final_dev_loss": measured_dev_loss(config, out / "adapter", work),
        "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in steps_),
        "train_seconds": summary["train_seconds"],
        "resumed_from": summary["resumed_from"],
    }


def measured_dev_loss(config: Any, adapter: Path | None, work: Path) -> float:
    """fp32 dev loss of the base model with ``adapter`` (``None``: the base model alone),
    cached beside the adapter (or in the ``work`` folder) so that a rerun reads it."""
    cache = (adapter.parent if adapter else work) / ("dev_loss.json" if adapter else "base.json")
    if cache.exists():
        return float(json.loads(cache.read_text())["dev_loss"])
    from peft import PeftModel

    splits = prepare_data(config)
    loaded = load_base(config, splits)
    model = PeftModel.from_pretrained(loaded.model, adapter) if adapter else loaded.model
    dev = tokenized_features(config, splits, loaded.tokenizer, examples=splits.dev)
    loss = dev_loss(model, dev, loaded.tokenizer.pad_token_id)
    write_json(cache, {"dev_loss": loss, "rows": len(dev)})
    return loss


def markdown(report: dict[str, Any]) -> str:
    rows = []
    for seed, pair in report["by_seed"].items():
        a, b = pair["fp32"], pair["bf16"]
        rows.append(
            [
                seed,
                f"{a['final_dev_loss']:.4f}",
                f"{b['final_dev_loss']:.4f}",
                f"{pair['dev_relative_change']:+.2%}",
                f"{statistics.mean(a['lm_loss'][-10:]):.4f}",
                f"{statistics.mean(b['lm_loss'][-10:]):.4f}",
                f"{a['median_tokens_per_s']:.0f}",
                f"{b['median_tokens_per_s']:.0f}",
            ]
        )
    lines = md_table(
        [
            "seed",
            "dev fp32",
            "dev bf16",
            "Δ dev",
            "train fp32 (last 10)",
            "train bf16 (last 10)",
            "tok/s fp32",
            "tok/s bf16",
        ],
        ["l", "r", "r", "r", "r", "r", "r", "r"],
        rows,
    )
    worst = report["largest_dev_relative_change"]
    met = "met" if report["target_met"] else "**missed**"
    return "\n".join(
        [
            *lines,
            "",
            f"Base model (no training) dev loss {report['base_dev_loss']:.4f}. "
            f"Largest |Δ dev| {worst:.2%} (target ≤ {TARGET_RELATIVE:.0%}: {met}).",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: --seeds 0 --steps 2 (own work folder)"
    )
    parser.add_argument("--work", type=Path, default=None, help=f"run folders (default {WORK})")
    parser.add_argument("--out", type=Path, default=RESULTS, help="output folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.steps = [0], 2
    work = args.work or (WORK.with_name(WORK.name + "_quick") if args.quick else WORK)
    torch.set_num_threads(2)
    run = Run("train_bf16", "transformers", "peft", "accelerate")
    by_seed: dict[str, dict[str, Any]] = {}
    base_dev = measured_dev_loss(load_config(CONFIG), None, work)
    for seed in args.seeds:
        pair = {dtype: run_one(seed, dtype, args.steps, work) for dtype in ("fp32", "bf16")}
        a, b = pair["fp32"]["final_dev_loss"], pair["bf16"]["final_dev_loss"]
        by_seed[str(seed)] = pair | {"dev_relative_change": (b - a) / a}
        worst = max(abs(p["dev_relative_change"]) for p in by_seed.values())
        report = run.record(
            config=str(CONFIG.relative_to(ROOT)),
            arm=ARM,
            steps=args.steps,
            by_seed=by_seed,
            base_dev_loss=base_dev,
            largest_dev_relative_change=worst,
            target_relative=TARGET_RELATIVE,
            target_met=worst <= TARGET_RELATIVE,
            complete=len(by_seed) == len(args.seeds),
        )
        text = markdown(report)
        write_results(args.out / "train_bf16", report, text + "\n")
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
