"""Summarise several ``train_speed.py`` runs: the median and spread of each ratio.

The decoupled/standard ratio is noisy on a shared 2-core machine (a few percent from step
to step), so the target is judged on the median of several whole runs, each of which
already takes medians over its steps. Reads ``benchmarks/results/STEM_run*.json`` and
writes ``STEM_runs.json`` / ``STEM_runs.md`` beside them (``--results DIR`` reads another
folder, ``--out DIR`` writes into another)::

    .venv/bin/python benchmarks/train_speed_runs.py --stem train_speed_2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from _common import RESULTS, md_table, spread, write_results


def _ratio_with_refresh(run: dict[str, Any], variant: str, standard_refreshes: bool) -> float:
    """(c)/(b) in tokens/s with the ``variant`` warm refresh amortised over the example's
    schedule in (c), and in (b) too when ``standard_refreshes`` (as ``train()`` does)."""
    arms, every = run["arms"], run["setup"]["refresh_every"]
    extra = run["refresh_variants"][variant]["median_seconds"] / every
    warmup = run["setup"]["warmup_steps"]

    def tokens_per_s(arm: dict[str, Any], add: float) -> float:
        rates = [t / (s + add) for s, t in zip(arm["seconds"], arm["tokens"], strict=True)]
        return statistics.median(rates[warmup:])

    b = tokens_per_s(arms["b"], extra if standard_refreshes else 0.0)
    return tokens_per_s(arms["c"], extra) / b


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rows: dict[str, list[float]] = {
        "(b)/(a): this loop vs HF Trainer": [r["ratios"]["b_over_a"] for r in runs],
        "(d)/(b): bf16 vs fp32 training step": [r["ratios"]["bf16_over_b"] for r in runs],
        "(d)/(b) paired": [r["ratios"]["paired_bf16_over_b"] for r in runs],
        "(c)/(b): penalised step alone": [r["ratios"]["c_step_over_b"] for r in runs],
    }
    for variant in ("unfolded", "exact", "bf16"):
        rows[f"(c)/(b), `{variant}` refresh amortised in (c)"] = [
            _ratio_with_refresh(r, variant, False) for r in runs
        ]
    rows["(c)/(b), `exact` refresh in both (as train() runs them)"] = [
        _ratio_with_refresh(r, "exact", True) for r in runs
    ]
    for variant in runs[0]["refresh_variants"]:
        rows[f"warm refresh `{variant}` (s)"] = [
            r["refresh_variants"][variant]["median_seconds"] for r in runs
        ]
        rows[f"angle of `{variant}` to exact (°)"] = [
            r["refresh_variants"][variant]["largest_angle_to_exact_deg"] for r in runs
        ]
    return {name: {"runs": values, **spread(values)} for name, values in rows.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--stem", default="train_speed_2")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the runs are")
    parser.add_argument("--out", type=Path, default=None, help="output folder (--results)")
    args = parser.parse_args(argv)
    # STEM_run1.json, STEM_run2.json, ... (not STEM_runs.json, this script's own output)
    paths = sorted(p for p in args.results.glob(f"{args.stem}_run*.json") if p.stem[-1].isdigit())
    if not paths:
        print(f"no {args.stem}_run*.json in {args.results}", file=sys.stderr)
        return 2
    runs = [json.loads(p.read_text()) for p in paths]
    summary = summarise(runs)
    table = md_table(
        ["quantity", "median", "min–max", *(p.stem.rsplit("_", 1)[1] for p in paths)],
        ["l", "r", "r", *("r" for _ in paths)],
        [
            [
                name,
                f"{s['median']:.2f}",
                f"{s['min']:.2f}–{s['max']:.2f}",
                *(f"{v:.2f}" for v in s["runs"]),
            ]
            for name, s in summary.items()
        ],
    )
    commits = sorted({r["git"].get("commit", "?")[:7] for r in runs})
    dates = [r["date"] for r in runs]
    text = "\n".join(
        [f"{len(runs)} runs ({', '.join(dates)}; commit {', '.join(commits)}):", "", *table]
    )
    report = {"runs": [p.name for p in paths], "summary": summary}
    write_results((args.out or args.results) / f"{args.stem}_runs", report, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
