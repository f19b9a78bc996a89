r"""Which estimator should the decoupler use? The subspace-recovery targets of issue 16.

Extends ``subspace_recovery.py`` (issue 3) to the estimators that could replace the
paper's probe as the default, scored against the *Bayes-optimal* directions
:math:`\Sigma_W^{-1}\Delta\mu`
(:meth:`vardecouple.probes.synthetic.PlantedVarieties.bayes_direction`;
with isotropic noise they are the planted discriminating directions themselves), on
three planted families at d = 640 (the width of gemma3-270m), 4 non-standard varieties,
a rank-4 standard subspace, classes balanced:

* ``isotropic``: unit noise, SNR 10/50/200, each variety offset by sqrt(SNR) σ along its
  own dense direction (as in ``subspace_recovery.py``);
* ``anisotropic``: the same, but the noise has the eigenvalues of the within-variety
  covariance of real gemma3-270m states at layer 9 (``results/gemma_spectrum.json``,
  written by ``gemma_spectrum.py``; one direction holds 95.6% of the variance), scaled
  to mean 1 and put on the coordinates in a random order per seed (Gemma's outliers
  are axis-aligned). Here the mean difference is *not* the Bayes direction;
* ``sparse``: isotropic, SNR 50, each discriminating direction supported on 32 random
  coordinates (the structure the paper probe's per-coordinate gates assume).

For every n in 256…4096 and 5 seeds each estimator is fitted twice on the same draw:
rank 4 with ``classes="all"`` (scored by the largest principal angle to the span of
:math:`\Sigma_W^{-1}D`) and rank 1 with ``classes="standard-vs-rest"`` (the decoupler's
default reading; angle to :math:`\Sigma_W^{-1}\Delta\mu`, Δμ the pooled non-standard mean
minus the standard's). The 1-D direction is also scored by its held-out balanced
accuracy on a fresh draw of 4096 states from the same family (threshold: the midpoint
of the standard's and the pooled rest's projected means on the training draw), next to
the Bayes direction's with the same rule.

The issue's targets, per family, SNR and reading, on the medians over seeds: an
estimator is *non-increasing* when median(n) ≤ median(n/2) + 2° for every n, and
*within 1.25×* when its median is at most 1.25 × the better of ``mean-diff`` and
``leace(side="row")`` at every n ≥ 256.

Command::

    .venv/bin/python benchmarks/subspace_targets.py            # full run (~15 min)
    .venv/bin/python benchmarks/subspace_targets.py --quick    # n <= 512, 1 seed

Finished (family, SNR) cells are kept in ``.bench/subspace_targets/`` (``--quick``:
``.bench/subspace_targets_quick/``) and reused, so an interrupted run resumes; the
results go to ``results/subspace_targets.{json,md,png}`` (``--quick``: ``results/quick/``;
``--out DIR``: that folder).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch
from torch import Tensor
from tqdm import tqdm

from _common import (
    RESULTS,
    ROOT,
    Run,
    md_table,
    median,
    pyplot,
    save_figure,
    write_json,
    write_results,
)
from _planted import DIM, RANK, balanced_accuracy, largest_angle, timed_fit
from _planted import draw as planted
from vardecouple.probes import make_estimator
from vardecouple.probes.synthetic import PlantedVarieties

NS = (256, 512, 1024, 2048, 4096)
SEEDS = (0, 1, 2, 3, 4)
TEST_N = 4096
SPARSE_SUPPORT = 32
FAMILIES: tuple[tuple[str, float], ...] = (
    ("isotropic", 10.0),
    ("isotropic", 50.0),
    ("isotropic", 200.0),
    ("anisotropic", 10.0),
    ("anisotropic", 50.0),
    ("anisotropic", 200.0),
    ("sparse", 50.0),
)
# label -> (estimator name, options shared by both readings)
ESTIMATORS: dict[str, tuple[str, dict[str, Any]]] = {
    "mean-diff": ("mean-diff", {}),
    "leace (row)": ("leace", {"side": "row"}),
    "lda": ("lda", {}),
    "variational (paper)": ("variational", {}),
}
BASELINES = ("mean-diff", "leace (row)")
READINGS = {"all": ("all", RANK), "1-D": ("standard-vs-rest", 1)}
SPECTRUM = RESULTS / "gemma_spectrum.json"


def gemma_variances() -> Tensor:
    """Layer 9's within-variety eigenvalues of gemma3-270m, scaled to mean 1."""
    spectrum = json.loads(SPECTRUM.read_text(encoding="utf-8"))
    evals = torch.tensor(spectrum["layers"]["9"]["eigenvalues"], dtype=torch.float64)
    if evals.numel() != DIM or not bool((evals > 0).all()):
        raise SystemExit(f"{SPECTRUM}: layer 9 needs {DIM} positive eigenvalues")
    return evals / evals.mean()


def draw(family: str, snr: float, n: int, seed: int, sample_seed: int) -> PlantedVarieties:
    noise = None
    if family == "anisotropic":
        order = torch.randperm(DIM, generator=torch.Generator().manual_seed(seed))
        noise = gemma_variances()[order]
    support = SPARSE_SUPPORT if family == "sparse" else None
    return planted(n, snr, seed, support=support, noise_variances=noise, sample_seed=sample_seed)


def run_cell(
    family: str, snr: float, ns: tuple[int, ...], seeds: tuple[int, ...]
) -> dict[str, Any]:
    """Every estimator × reading × n × seed of one (family, SNR) cell."""
    cell: dict[str, Any] = {"family": family, "snr": snr, "ns": list(ns), "seeds": list(seeds)}
    angles = {f"{lab}|{r}": {str(n): [] for n in ns} for lab in ESTIMATORS for r in READINGS}
    accuracy = {lab: {str(n): [] for n in ns} for lab in [*ESTIMATORS, "bayes"]}
    seconds = {lab: {str(n): [] for n in ns} for lab in ESTIMATORS}
    mean_diff_to_bayes: dict[str, list[float]] = {str(n): [] for n in ns}
    bar = tqdm(total=len(ns) * len(seeds), desc=f"{family} SNR {snr:g}", unit="draw")
    for n in ns:
        for seed in seeds:
            train = draw(family, snr, n, seed, seed)
            test = draw(family, snr, TEST_N, seed, 1000 + seed)
            targets = {r: train.bayes_direction(classes) for r, (classes, _) in READINGS.items()}
            accuracy["bayes"][str(n)].append(balanced_accuracy(targets["1-D"], train, test))
            mean_diff_to_bayes[str(n)].append(
                largest_angle(train.standard_vs_rest_direction, targets["1-D"])
            )
            for label, (name, options) in ESTIMATORS.items():
                for reading, (classes, rank) in READINGS.items():
                    est = make_estimator(name, rank, classes=classes, **options)
                    sub, took = timed_fit(est, train.states, train.labels, ignore="")
                    seconds[label][str(n)].append(took)
                    angles[f"{label}|{reading}"][str(n)].append(
                        largest_angle(sub.basis, targets[reading])
                    )
                    if reading == "1-D":
                        accuracy[label][str(n)].append(balanced_accuracy(sub.basis, train, test))
            bar.update()
    bar.close()
    cell.update(
        angles=angles,
        accuracy=accuracy,
        fit_seconds=seconds,
        planted_mean_difference_to_bayes=mean_diff_to_bayes,
    )
    return cell


def checks(cell: dict[str, Any], label: str, reading: str) -> dict[str, Any]:
    """The issue's two targets for one estimator and reading in one cell."""
    ns = cell["ns"]
    med = [median(cell["angles"][f"{label}|{reading}"][str(n)]) for n in ns]
    best = [min(median(cell["angles"][f"{b}|{reading}"][str(n)]) for b in BASELINES) for n in ns]
    increasing = [n for i, n in enumerate(ns[1:], 1) if med[i] > med[i - 1] + 2.0]
    outside = [n for n, m, b in zip(ns, med, best, strict=True) if n >= 256 and m > 1.25 * b]
    return {
        "non_increasing": not increasing,
        "increases_at": increasing,
        "within_1.25x": not outside,
        "outside_at": outside,
        "ratio_to_best": [m / b for m, b in zip(med, best, strict=True)],
    }


def report(cells: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "<!-- generated by benchmarks/subspace_targets.py; copy the tables into BENCHMARKS.md -->",
        "",
        f"- **Command:** `{meta['command']}`",
        f"- **Date:** {meta['date']}. **Runtime:** {meta['seconds']:.0f} s (this run; "
        "cells reused from an earlier run are not counted).",
        f"- **Git:** {meta['git'].get('commit')}; src changes: {meta['git'].get('src_changes')}.",
        f"- **Seeds:** {len(cells[0]['seeds'])}; medians over seeds, (min–max) in the JSON.",
        "",
    ]
    ns = cells[0]["ns"]
    for reading, title in (
        ("1-D", "standard-vs-rest direction, rank 1 (the decoupler's default reading)"),
        ("all", f"all classes, rank {RANK}"),
    ):
        lines += [f"### Largest angle to the Bayes direction(s), {title} (°, lower is better)", ""]
        rows = []
        for cell in cells:
            for label in ESTIMATORS:
                vals = [median(cell["angles"][f"{label}|{reading}"][str(n)]) for n in ns]
                rows.append(
                    [f"{cell['family']} SNR {cell['snr']:g}", label, *(f"{v:.1f}" for v in vals)]
                )
        lines += md_table(
            ["family", "estimator", *(f"n={n}" for n in ns)], ["l", "l", *"r" * len(ns)], rows
        )
        lines.append("")
    lines += ["### Held-out balanced accuracy of the 1-D direction (fresh draw of 4096)", ""]
    rows = []
    for cell in cells:
        for label in [*ESTIMATORS, "bayes"]:
            vals = [median(cell["accuracy"][label][str(n)]) for n in ns]
            rows.append(
                [f"{cell['family']} SNR {cell['snr']:g}", label, *(f"{v:.3f}" for v in vals)]
            )
    lines += md_table(
        ["family", "estimator", *(f"n={n}" for n in ns)], ["l", "l", *"r" * len(ns)], rows
    )
    lines += ["", "### The planted mean difference vs the Bayes direction (°, no estimation)", ""]
    rows = [
        [
            f"{c['family']} SNR {c['snr']:g}",
            *(f"{median(c['planted_mean_difference_to_bayes'][str(n)]):.1f}" for n in ns),
        ]
        for c in cells
    ]
    lines += md_table(["family", *(f"n={n}" for n in ns)], ["l", *"r" * len(ns)], rows)
    lines += [
        "",
        "### Targets: non-increasing in n (+2° slack) and within 1.25× of the better of "
        "mean-diff and leace (row) at every n",
        "",
    ]
    rows = []
    for cell in cells:
        for label in ("lda", "leace (row)", "variational (paper)"):
            for reading in READINGS:
                c = checks(cell, label, reading)
                rows.append(
                    [
                        f"{cell['family']} SNR {cell['snr']:g}",
                        label,
                        reading,
                        "yes" if c["non_increasing"] else f"no (n={c['increases_at']})",
                        "yes" if c["within_1.25x"] else f"no (n={c['outside_at']})",
                        " ".join(f"{r:.2f}" for r in c["ratio_to_best"]),
                    ]
                )
    lines += md_table(
        [
            "family",
            "estimator",
            "reading",
            "non-increasing",
            "within 1.25×",
            "ratio to best baseline per n",
        ],
        ["l", "l", "l", "l", "l", "l"],
        rows,
    )
    return "\n".join(lines) + "\n"


def plot(cells: list[dict[str, Any]], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(
        2, len(cells), figsize=(3.2 * len(cells), 6.4), sharex=True, squeeze=False
    )
    for j, cell in enumerate(cells):
        ns = cell["ns"]
        for i, reading in enumerate(("1-D", "all")):
            ax = axes[i][j]
            for label in ESTIMATORS:
                per_n = [cell["angles"][f"{label}|{reading}"][str(n)] for n in ns]
                ax.plot(ns, [median(v) for v in per_n], marker="o", ms=3, label=label)
                ax.fill_between(ns, [min(v) for v in per_n], [max(v) for v in per_n], alpha=0.15)
            ax.set_xscale("log", base=2)
            ax.set_ylim(0, 90)
            ax.set_title(f"{cell['family']} SNR {cell['snr']:g}\n{reading}", fontsize=9)
            if j == 0:
                ax.set_ylabel("largest angle to Σ⁻¹Δμ (°)")
            if i == 1:
                ax.set_xlabel("n")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n <= 512, 1 seed (a smoke run)")
    parser.add_argument("--out", type=Path, default=None, help="output folder")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    ns, seeds = (NS[:2], SEEDS[:1]) if args.quick else (NS, SEEDS)
    cache = ROOT / ".bench" / ("subspace_targets_quick" if args.quick else "subspace_targets")
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    run = Run("subspace_targets")
    cells = []
    for family, snr in FAMILIES:
        path = cache / f"{family}_snr{snr:g}.json"
        if path.exists():
            cells.append(json.loads(path.read_text(encoding="utf-8")))
            print(f"{family} SNR {snr:g}: reused {path}", flush=True)
            continue
        cell = run_cell(family, snr, ns, seeds)
        cell["git"] = run.git
        write_json(path, cell)
        cells.append(cell)
    meta = run.record(
        seconds=run.seconds,
        spectrum=f"{SPECTRUM.name}: layer 9, {json.loads(SPECTRUM.read_text())['data']}",
    )
    checked = {
        f"{c['family']} SNR {c['snr']:g}|{label}|{reading}": checks(c, label, reading)
        for c in cells
        for label in ESTIMATORS
        for reading in READINGS
    }
    text = report(cells, meta)
    write_results(out / "subspace_targets", {**meta, "cells": cells, "checks": checked}, text)
    plot(cells, out / "subspace_targets.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
