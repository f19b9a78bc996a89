r"""Subspace recovery benchmark (issue 3): largest principal angle vs number of samples.

What it measures
----------------
Every estimator of :mod:`vardecouple.subspace` is fitted to planted data from
:func:`vardecouple.probes.synthetic.planted_varieties` with ``d = 640`` (the hidden width of
Gemma-3-270m), a rank-4 standard subspace and 4 non-standard varieties:

* the standard subspace ``U_s`` (640 × 4) carries ``SNR`` times the unit noise variance
  along each of its directions, for ``SNR`` in {10, 50, 200};
* each non-standard variety ``v = 1..4`` is offset by ``sqrt(SNR)`` noise standard
  deviations along its own discriminating direction ``D[:, v]`` (orthonormal, orthogonal
  to ``U_s``), so the squared offset equals ``SNR`` in noise-variance units;
* ``n`` in {64, 128, ..., 4096} states in total, the 5 classes balanced.

For each (SNR, n) cell and each of 3 seeds it records the largest principal angle
(degrees) between the estimate and the planted target:

* ``pca``, ``variational-generative``, ``random`` (rank 4) vs ``U_s``;
* ``variational`` with ``classes="all"``, ``mean-diff``, ``leace``, ``random`` (rank 4)
  vs the discriminating basis ``D`` (640 × 4);
* ``variational`` with the default ``classes="standard-vs-rest"`` (asked for rank 4,
  capped at 1 by the probe; the warning is silenced) vs the pooled standard-vs-rest
  direction.

A second block, *sparse discriminating directions*, repeats the discriminating rows
(``variational`` with ``classes="all"``, ``mean-diff``, ``leace`` vs ``D``) at SNR = 50
on data drawn with ``support=32``: each variety's offset direction then lives on 32
random coordinates of the 640 (``D`` is an orthonormal basis supported on those 32
coordinates; ``U_s`` stays dense and orthogonal to it). This is the structure that the
``variational`` probe's per-dimension gate prior assumes; the dense block is not.

An estimate of lower rank than its target (e.g. when ARD prunes a column) counts as
90°: a target direction is then missing entirely. Its effective rank is recorded.

It also times one ``fit`` (on a draw with n = 4096, SNR = 50) and one ``update`` (on a
fresh batch from the *same* planted model: new noise, labels and coefficients, same
``U_s`` and ``D``) for every estimator, with a fresh estimator per repetition
(5 repetitions, after one untimed warm-up), and reports the medians, the median of the
per-repetition ratio fit/update, and the solver iterations (``last_iterations``).

How to run
----------
::

    .venv/bin/python benchmarks/subspace_recovery.py            # full run (minutes)
    .venv/bin/python benchmarks/subspace_recovery.py --quick    # smoke run: n <= 512, 1 seed
    .venv/bin/python benchmarks/subspace_recovery.py --out DIR

It writes into ``--out`` (default ``benchmarks/results/``; ``benchmarks/results/quick/``
with ``--quick``), each file atomically:

* ``subspace_recovery.json``: every raw number, the machine, the torch version, the git
  commit (and which ``src/`` files differed from it), the load, the date and the command;
* ``subspace_recovery.md``: the markdown tables of the run (recovery per SNR, the
  sparse block, generative/PCA ratios, timings, the 10× target), ready to copy into
  ``BENCHMARKS.md``;
* ``subspace_recovery.png``: largest angle vs n, one panel per SNR; top row the
  standard-subspace estimators, bottom row the discriminating ones;
* ``subspace_recovery_sparse.png``: the sparse block, with the dense SNR = 50 curves
  of the same estimators for comparison.
Computation uses ``torch.set_num_threads(2)``. Unless ``OMP_WAIT_POLICY`` is already set,
the script sets it to ``PASSIVE`` before importing torch: on a 2-core machine shared with
other processes, OpenMP threads that spin-wait at barriers made a 0.5 s probe fit take
25 s or more (oversubscription); passive waiting avoids that.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP

import torch
from torch import Tensor
from tqdm import tqdm

from _common import RESULTS, Run, interleave, median, pyplot, save_figure, spread, write_results
from _common import md_table as _table
from _planted import DIM, N_VARIETIES, RANK, draw, quietly, separation
from vardecouple.probes import make_estimator
from vardecouple.probes.base import SubspaceEstimator
from vardecouple.probes.synthetic import PlantedVarieties
from vardecouple.subspace import principal_angles

SNRS: tuple[float, ...] = (10.0, 50.0, 200.0)
NS_FULL: tuple[int, ...] = (64, 128, 256, 512, 1024, 2048, 4096)
SEEDS_FULL: tuple[int, ...] = (0, 1, 2)
TIMING_N, TIMING_SNR, TIMING_REPS = 4096, 50.0, 5
SPARSE_SUPPORT = 32  # coordinates carrying the discriminating directions (sparse block)
SPARSE_SNRS: tuple[float, ...] = (50.0,)
THREADS = 2


@dataclass(frozen=True)
class Config:
    """One estimator configuration and the planted basis it is scored against."""

    label: str  # row name in tables and plot legends
    name: str  # make_estimator name
    target: str  # "standard", "discriminating" or "standard-vs-rest"
    options: dict[str, Any] = field(default_factory=dict)
    seeded: bool = False  # pass seed=<data seed> to the estimator


CONFIGS: tuple[Config, ...] = (
    Config("pca", "pca", "standard"),
    Config("variational-generative", "variational-generative", "standard"),
    Config("random", "random", "standard", seeded=True),
    Config("variational (all)", "variational", "discriminating", {"classes": "all"}),
    Config("mean-diff", "mean-diff", "discriminating"),
    Config("leace", "leace", "discriminating"),
    Config("random", "random", "discriminating", seeded=True),
    Config(
        "variational (standard-vs-rest)",
        "variational",
        "standard-vs-rest",
        {"classes": "standard-vs-rest"},
    ),
)


SPARSE_CONFIGS: tuple[Config, ...] = (
    Config("variational (all)", "variational", "discriminating", {"classes": "all"}),
    Config("mean-diff", "mean-diff", "discriminating"),
    Config("leace", "leace", "discriminating"),
)

TARGET_NAMES = {
    "standard": "U_s",
    "discriminating": "D",
    "standard-vs-rest": "std-vs-rest direction",
}


def fresh_batch(p: PlantedVarieties, n: int, snr: float, seed: int) -> PlantedVarieties:
    """A new batch from the same planted model as ``p`` (same ``U_s`` and ``D``).

    Mirrors :func:`planted_varieties` (``shared=True``): fresh noise, labels and
    coefficients. ``planted_varieties`` with another seed would also redraw the planted
    subspaces, and ``update`` would then be tracking a different model.
    """
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    u_s = p.standard_basis.to(f64)
    d_basis = p.discriminating_basis.to(f64)
    d, k = u_s.shape
    m = d_basis.shape[1]
    labels = (torch.arange(n) % (m + 1))[torch.randperm(n, generator=g)]
    states = torch.randn(n, d, generator=g, dtype=f64)
    states += (torch.randn(n, k, generator=g, dtype=f64) * snr**0.5) @ u_s.T
    offsets = torch.cat([torch.zeros(d, 1, dtype=f64), separation(snr) * d_basis], dim=1)
    states += offsets.T[labels]
    return PlantedVarieties(states.float(), labels, p.standard_basis, p.discriminating_basis)


def target_basis(p: PlantedVarieties, target: str) -> Tensor:
    if target == "standard":
        return p.standard_basis
    if target == "discriminating":
        return p.discriminating_basis
    return p.standard_vs_rest_direction


def build(config: Config, seed: int) -> SubspaceEstimator:
    options = dict(config.options)
    if config.seeded:
        options["seed"] = seed
    return make_estimator(config.name, RANK, **options)


def score(sub_basis: Tensor, target: Tensor) -> tuple[float, list[float]]:
    """Largest principal angle (degrees); 90 when the estimate lacks a target dimension."""
    angles = [float(x) for x in principal_angles(sub_basis, target)]
    largest = 90.0 if sub_basis.shape[1] < target.shape[1] else max(angles)
    return largest, angles


# --------------------------------------------------------------------------- recovery
def run_recovery(
    ns: tuple[int, ...],
    seeds: tuple[int, ...],
    configs: tuple[Config, ...] = CONFIGS,
    snrs: tuple[float, ...] = SNRS,
    support: int | None = None,
    desc: str = "recovery",
) -> list[dict[str, Any]]:
    """Largest principal angle per (config, SNR, n), one record per cell, seeds inside.

    Every config of one (SNR, n, seed) sees the same draw.
    """
    # results[(config index, snr, n)] -> per-seed records
    cells: dict[tuple[int, float, int], dict[str, Any]] = {}
    for ci, config in enumerate(configs):
        for snr in snrs:
            for n in ns:
                cells[(ci, snr, n)] = {
                    "estimator": config.label,
                    "name": config.name,
                    "options": config.options,
                    "target": config.target,
                    "snr": snr,
                    "separation": separation(snr),
                    "support": support,
                    "n": n,
                    "seeds": [],
                    "largest_angle": [],
                    "angles": [],
                    "rank": [],
                    "fit_seconds": [],
                    "iterations": [],
                    "errors": [],
                }
    total = len(snrs) * len(ns) * len(seeds) * len(configs)
    with tqdm(total=total, desc=desc, unit="fit", dynamic_ncols=True) as bar:
        for snr in snrs:
            for n in ns:
                for seed in seeds:
                    p = draw(n, snr, seed, support=support)
                    for ci, config in enumerate(configs):
                        bar.set_postfix_str(f"SNR={snr:g} n={n} seed={seed} {config.label}")
                        cell = cells[(ci, snr, n)]
                        cell["seeds"].append(seed)
                        try:
                            est = build(config, seed)
                            start = time.perf_counter()
                            sub = quietly(lambda est=est, p=p: est.fit(p.states, p.labels))
                            elapsed = time.perf_counter() - start
                            largest, angles = score(sub.basis, target_basis(p, config.target))
                            cell["largest_angle"].append(largest)
                            cell["angles"].append(angles)
                            cell["rank"].append(sub.rank)
                            cell["fit_seconds"].append(elapsed)
                            cell["iterations"].append(est.last_iterations)
                        except Exception:
                            tb = traceback.format_exc()
                            tqdm.write(f"ERROR {config.label} SNR={snr:g} n={n} seed={seed}\n{tb}")
                            cell["errors"].append({"seed": seed, "traceback": tb})
                            for key in ("largest_angle", "fit_seconds"):
                                cell[key].append(float("nan"))
                            cell["angles"].append([])
                            cell["rank"].append(0)
                            cell["iterations"].append(0)
                        bar.update()
    return [cell | spread(cell["largest_angle"]) for cell in cells.values()]


# --------------------------------------------------------------------------- timing
def run_timing(n: int, snr: float, reps: int) -> list[dict[str, Any]]:
    """One ``fit`` and one ``update`` per estimator and repetition, a fresh estimator each
    time, every estimator on the same draws (in the order of :data:`CONFIGS`), after one
    untimed warm-up round on other draws."""
    timed: list[Config] = []  # one per estimator (random appears twice in CONFIGS)
    for config in CONFIGS:
        if all(config.label != other.label for other in timed):
            timed.append(config)
    Draws = tuple[int, PlantedVarieties, PlantedVarieties]

    def fit_and_update(config: Config) -> Callable[[Draws], dict[str, Any]]:
        def call(x: Draws) -> dict[str, Any]:
            rep, p, q = x
            try:
                est = build(config, rep)
                start = time.perf_counter()
                sub = quietly(lambda: est.fit(p.states, p.labels))
                t_fit = time.perf_counter() - start
                it_fit = est.last_iterations
                a_fit, _ = score(sub.basis, target_basis(p, config.target))
                start = time.perf_counter()
                sub = quietly(lambda: est.update(q.states, q.labels))
                t_upd = time.perf_counter() - start
                it_upd = est.last_iterations
                a_upd, _ = score(sub.basis, target_basis(q, config.target))
            except Exception:
                return {"error": traceback.format_exc()}  # the warm-up's are not reported
            return {
                "fit_seconds": t_fit,
                "update_seconds": t_upd,
                "fit_iterations": it_fit,
                "update_iterations": it_upd,
                "angle_after_fit": a_fit,
                "angle_after_update": a_upd,
            }

        return call

    def draws(rep: int, seed: int, fresh_seed: int) -> Draws:
        p = draw(n, snr, seed)
        return rep, p, fresh_batch(p, n, snr, fresh_seed)

    with tqdm(total=reps * len(timed), desc="timing", unit="fit+update", dynamic_ncols=True) as bar:

        def report(rep: int, label: str, result: dict[str, Any], _seconds: float) -> None:
            if "error" in result:
                tqdm.write(f"ERROR timing {label} rep={rep}\n{result['error']}")
            bar.set_postfix_str(f"rep={rep} {label}")
            bar.update()

        runs = interleave(
            {config.label: fit_and_update(config) for config in timed},
            reps,
            setup=lambda rep: draws(rep, 100 + rep, 200 + rep),
            warmup=[draws(0, 10_000, 20_000)],  # imports, allocator, first-call overheads
            rotate=False,
            report=report,
        )
    keys = ("fit_seconds", "update_seconds", "ratio", "fit_iterations", "update_iterations")
    keys += ("angle_after_fit", "angle_after_update")
    results = []
    for config in timed:
        rec: dict[str, Any] = {
            "estimator": config.label,
            "name": config.name,
            "options": config.options,
            "target": config.target,
            "n": n,
            "snr": snr,
            **{key: [] for key in keys},
            "errors": [],
        }
        for rep, got in enumerate(runs.results[config.label]):
            if "error" in got:
                rec["errors"].append({"rep": rep, "traceback": got["error"]})
                continue
            t_fit, t_upd = got["fit_seconds"], got["update_seconds"]
            got["ratio"] = t_fit / t_upd if t_upd > 0 else float("inf")
            for key in keys:
                rec[key].append(got[key])
        rec["median_fit_seconds"] = median(rec["fit_seconds"])
        rec["median_update_seconds"] = median(rec["update_seconds"])
        rec["median_ratio"] = median(rec["ratio"])
        rec["median_fit_iterations"] = median([float(x) for x in rec["fit_iterations"]])
        rec["median_update_iterations"] = median([float(x) for x in rec["update_iterations"]])
        results.append(rec)
    return results


# --------------------------------------------------------------------------- targets
def check_targets(recovery: list[dict[str, Any]], timing: list[dict[str, Any]]) -> dict[str, Any]:
    by = {(c["estimator"], c["target"], c["snr"], c["n"]): c for c in recovery}
    generative = []
    for (label, target, snr, n), cell in sorted(by.items(), key=lambda kv: (kv[0][2], kv[0][3])):
        if label != "variational-generative":
            continue
        pca_cell = by[("pca", target, snr, n)]
        gen, pca = cell["median"], pca_cell["median"]
        ratio = gen / pca if pca > 0 else float("nan")
        per_seed = [
            g / q if q > 0 else float("nan")
            for g, q in zip(cell["largest_angle"], pca_cell["largest_angle"], strict=True)
        ]
        generative.append(
            {
                "snr": snr,
                "n": n,
                "generative": gen,
                "pca": pca,
                "ratio": ratio,
                "within_1_25": bool(ratio <= 1.25),
                "better_than_pca": bool(gen < pca),
                "per_seed_ratio": per_seed,
                "per_seed_within_1_25": all(r <= 1.25 for r in per_seed),
                "generative_rank": cell["rank"],
            }
        )
    update = [
        {
            "estimator": r["estimator"],
            "median_ratio": r["median_ratio"],
            "at_least_10x": bool(r["median_ratio"] >= 10.0),
        }
        for r in timing
    ]
    return {
        "generative_within_1_25x_pca_everywhere": all(g["within_1_25"] for g in generative),
        "generative_within_1_25x_pca_every_seed": all(
            g["per_seed_within_1_25"] for g in generative
        ),
        "generative_vs_pca": generative,
        "update_at_least_10x_cheaper": update,
    }


# --------------------------------------------------------------------------- output
# --------------------------------------------------------------------------- markdown
def target_rank(target: str) -> int:
    return 1 if target == "standard-vs-rest" else RANK


def _rank_deficient(cell: dict[str, Any]) -> bool:
    return any(r < target_rank(cell["target"]) for r in cell["rank"])


def _num(x: float, digits: int = 1) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def recovery_table(
    cells: list[dict[str, Any]], configs: tuple[Config, ...], snr: float, ns: tuple[int, ...]
) -> list[str]:
    """Median largest angle per estimator and n at one SNR, plus a † footnote table
    listing every cell where some seed's estimate had lower rank than its target."""
    by = {(c["estimator"], c["target"], c["n"]): c for c in cells if c["snr"] == snr}
    rows, short = [], []
    for config in configs:
        row = [config.label, TARGET_NAMES[config.target]]
        for n in ns:
            cell = by[(config.label, config.target, n)]
            mark = "†" if _rank_deficient(cell) else ""
            row.append(_num(cell["median"]) + mark)
            if mark:
                short.append(cell)
        rows.append(row)
    lines = _table(
        ["estimator", "target", *[f"n={n}" for n in ns]], ["l", "l", *["r"] * len(ns)], rows
    )
    if short:
        seeds = ("seeds " if len(short[0]["seeds"]) > 1 else "seed ") + ", ".join(
            str(s) for s in short[0]["seeds"]
        )
        lines += [
            "",
            "† An estimate of lower rank than its target (counted as 90°) for at least one seed:",
            "",
            *_table(
                [
                    "estimator",
                    "n",
                    f"ranks kept ({seeds})",
                    f"largest angle ({seeds})",
                ],
                ["l", "r", "l", "l"],
                [
                    [
                        c["estimator"],
                        str(c["n"]),
                        ", ".join(str(r) for r in c["rank"]),
                        ", ".join(_num(a) for a in c["largest_angle"]),
                    ]
                    for c in short
                ],
            ),
        ]
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The tables of one run, in the layout of BENCHMARKS.md's issue-3 section."""
    cfg, ns = report["config"], tuple(report["config"]["ns"])
    recovery, sparse, timing = report["recovery"], report["sparse_recovery"], report["timing"]
    targets = report["targets"]
    load = report["load_average_1_5_15min"]
    runtime = report["runtime_seconds"]
    out = [
        "<!-- generated by benchmarks/subspace_recovery.py; copy the tables into BENCHMARKS.md -->",
        "",
        f"- **Command:** `{report['command']}`",
        f"- **Date:** {report['date']}. **Runtime:** {runtime['total']:.0f} s in total "
        f"({runtime['recovery']:.0f} s dense recovery grid, {runtime['sparse']:.0f} s sparse "
        f"block, {runtime['timing']:.0f} s timings).",
        "- **Load average (1 min):** "
        + ", ".join(f"{k.replace('_', ' ')} {v[0]:.2f}" for k, v in load.items())
        + f"; {report['machine']['cpu_count']} CPU(s), "
        f"{report['machine']['torch_threads']} torch threads.",
        f"- **Git:** {report['git'].get('commit', report['git'].get('error'))}; "
        "src changes vs that commit: "
        + (", ".join(f"`{c.strip()}`" for c in report["git"].get("src_changes", [])) or "none")
        + ".",
        "",
        "### Median largest principal angle (degrees; lower is better)",
    ]
    for snr in cfg["snrs"]:
        out += [
            "",
            f"**SNR = {snr:g}** (separation {separation(snr):.2f} σ)",
            "",
            *recovery_table(recovery, CONFIGS, snr, ns),
        ]
    sp = cfg["sparse"]
    for snr in sp["snrs"]:
        out += [
            "",
            f"### Sparse discriminating directions (support = {sp['support']}, SNR = {snr:g}, "
            f"separation {separation(snr):.2f} σ)",
            "",
            *recovery_table(sparse, SPARSE_CONFIGS, snr, ns),
        ]
    gen = targets["generative_vs_pca"]
    rows = []
    for snr in cfg["snrs"]:
        cells = {g["n"]: g for g in gen if g["snr"] == snr}
        rows.append([f"{snr:g}", "of medians", *[_num(cells[n]["ratio"], 2) for n in ns]])
        rows.append(
            [
                f"{snr:g}",
                "worst seed",
                *[_num(max(cells[n]["per_seed_ratio"]), 2) for n in ns],
            ]
        )
    out += [
        "",
        "### Target 1: largest angle of `variational-generative` / `pca` (≤ 1.25 to pass)",
        "",
        *_table(["SNR", "ratio", *[f"n={n}" for n in ns]], ["r", "l", *["r"] * len(ns)], rows),
        "",
        f"Within 1.25 on the medians everywhere: "
        f"{'yes' if targets['generative_within_1_25x_pca_everywhere'] else 'no'}; "
        f"for every seed: {'yes' if targets['generative_within_1_25x_pca_every_seed'] else 'no'}.",
    ]
    t = cfg["timing"]
    rows = []
    for r in timing:
        ratios = r["ratio"]
        rows.append(
            [
                r["estimator"],
                _num(r["median_fit_seconds"], 3),
                _num(r["median_update_seconds"], 3),
                f"{_num(r['median_ratio'], 2)} ({_num(min(ratios), 2)}–{_num(max(ratios), 2)})"
                if ratios
                else "n/a",
                f"{r['median_fit_iterations']:g} / {r['median_update_iterations']:g}",
                f"{_num(median(r['angle_after_fit']))} / {_num(median(r['angle_after_update']))}",
            ]
        )
    out += [
        "",
        f"### Cost of one `fit` and one `update` (n = {t['n']}, SNR = {t['snr']:g}, "
        f"{t['repetitions']} repetitions, medians)",
        "",
        *_table(
            [
                "estimator",
                "fit (s)",
                "update (s)",
                "fit/update (min–max)",
                "iterations fit / update",
                "largest angle after fit / update (°)",
            ],
            ["l", "r", "r", "r", "r", "r"],
            rows,
        ),
        "",
        "### Target 2: `update` at least 10× cheaper than `fit`",
        "",
        *_table(
            ["estimator", "fit/update", "repetitions ≥ 10", "met?"],
            ["l", "r", "r", "l"],
            [
                [
                    r["estimator"],
                    _num(r["median_ratio"], 2),
                    f"{sum(x >= 10.0 for x in r['ratio'])} of {len(r['ratio'])}",
                    "yes" if r["median_ratio"] >= 10.0 else "no",
                ]
                for r in timing
            ],
        ),
    ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- plots
def curve(cells: list[dict[str, Any]], config: Config, snr: float) -> list[dict[str, Any]]:
    """The cells of ``config`` at ``snr``, by n."""
    return sorted(
        (
            c
            for c in cells
            if c["estimator"] == config.label and c["target"] == config.target and c["snr"] == snr
        ),
        key=lambda c: c["n"],
    )


def n_axis(ax: Any, ns: tuple[int, ...]) -> None:
    """A log2 axis of n ticked at ``ns``, angles from 0 to 92°, a light grid."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(ns))
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_ylim(0, 92)
    ax.grid(True, alpha=0.3)


def plot_sparse(
    sparse: list[dict[str, Any]],
    dense: list[dict[str, Any]],
    ns: tuple[int, ...],
    path: Path,
    title: str,
) -> None:
    """The sparse block (solid, min–max bars) over the dense curves of the same
    estimators at the same SNR (thin, dotted)."""
    plt = pyplot()
    colors = {"variational (all)": "tab:green", "mean-diff": "tab:red", "leace": "tab:purple"}
    markers = {"variational (all)": "o", "mean-diff": "s", "leace": "^"}
    snrs = sorted({c["snr"] for c in sparse})
    fig, axes = plt.subplots(1, len(snrs), figsize=(7.5 * len(snrs), 5.5), squeeze=False)
    for ax, snr in zip(axes[0], snrs, strict=True):
        for i, config in enumerate(SPARSE_CONFIGS):
            color, marker = colors[config.label], markers[config.label]
            dodge = 2 ** (0.06 * (i - 1))  # mean-diff and leace coincide
            for cells, dense_curve in ((dense, True), (sparse, False)):
                rows = curve(cells, config, snr)
                if not rows:
                    continue
                x = [c["n"] * dodge for c in rows]
                y = [c["median"] for c in rows]
                if dense_curve:
                    ax.plot(
                        x,
                        y,
                        color=color,
                        linestyle=":",
                        linewidth=1,
                        alpha=0.6,
                        label=f"{config.label}, dense D",
                    )
                else:
                    ax.errorbar(
                        x,
                        y,
                        yerr=[
                            [c["median"] - c["min"] for c in rows],
                            [c["max"] - c["median"] for c in rows],
                        ],
                        color=color,
                        marker=marker,
                        linestyle="-" if config.label != "leace" else "--",
                        capsize=2,
                        markersize=4,
                        label=f"{config.label}, {SPARSE_SUPPORT}-sparse D",
                    )
        n_axis(ax, ns)
        ax.set_title(f"SNR = {snr:g} (separation = {separation(snr):.2f} σ)")
        ax.set_xlabel("n (states, 5 balanced classes)")
        ax.set_ylabel("largest principal angle to D (°)")
        ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)


def plot(recovery: list[dict[str, Any]], ns: tuple[int, ...], path: Path, title: str) -> None:
    plt = pyplot()
    rows = (
        ("standard subspace $U_s$ (rank 4)", ("standard",)),
        (
            "discriminating basis $D$ (rank 4) / standard-vs-rest direction",
            ("discriminating", "standard-vs-rest"),
        ),
    )
    styles = {
        ("pca", "standard"): ("tab:blue", "o", "-"),
        ("variational-generative", "standard"): ("tab:orange", "s", "--"),
        ("random", "standard"): ("tab:gray", "x", ":"),
        ("variational (all)", "discriminating"): ("tab:green", "o", "-"),
        ("mean-diff", "discriminating"): ("tab:red", "s", "-"),
        ("leace", "discriminating"): ("tab:purple", "^", "--"),
        ("random", "discriminating"): ("tab:gray", "x", ":"),
        ("variational (standard-vs-rest)", "standard-vs-rest"): ("tab:olive", "D", "-."),
    }
    dodge = {key: 0.06 * (i % 4 - 1.5) for i, key in enumerate(styles)}
    fig, axes = plt.subplots(2, len(SNRS), figsize=(5.2 * len(SNRS), 8.5), sharex=True, sharey=True)
    for col, snr in enumerate(SNRS):
        for row, (row_title, targets) in enumerate(rows):
            ax = axes[row][col]
            for config in CONFIGS:
                if config.target not in targets:
                    continue
                cells = curve(recovery, config, snr)
                # estimators that coincide (pca / generative, mean-diff / leace) are
                # dodged sideways so that every line stays visible
                x = [c["n"] * 2 ** dodge[(config.label, config.target)] for c in cells]
                y = [c["median"] for c in cells]
                lo = [c["median"] - c["min"] for c in cells]
                hi = [c["max"] - c["median"] for c in cells]
                color, marker, ls = styles[(config.label, config.target)]
                label = config.label
                if config.target == "standard-vs-rest":
                    label += " (vs 1-D direction)"
                ax.errorbar(
                    x,
                    y,
                    yerr=[lo, hi],
                    color=color,
                    marker=marker,
                    linestyle=ls,
                    label=label,
                    capsize=2,
                    markersize=4,
                )
            n_axis(ax, ns)
            if row == 0:
                ax.set_title(f"SNR = {snr:g} (separation = {separation(snr):.2f} σ)")
            if row == 1:
                ax.set_xlabel("n (states, 5 balanced classes)")
            if col == 0:
                ax.set_ylabel(f"largest principal angle (°)\n{row_title}", fontsize=9)
                ax.legend(fontsize=8, loc="lower left")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: n <= 512, 1 seed")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default benchmarks/results/, benchmarks/results/quick/ with --quick)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    out: Path = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    ns = tuple(n for n in NS_FULL if n <= 512) if args.quick else NS_FULL
    seeds = SEEDS_FULL[:1] if args.quick else SEEDS_FULL
    timing_n, reps = (512, 2) if args.quick else (TIMING_N, TIMING_REPS)

    run = Run("subspace_recovery", python=Path(sys.executable).name)
    recovery = run_recovery(ns, seeds)
    recovery_seconds = run.seconds
    run.mark("before_sparse")
    sparse = run_recovery(
        ns, seeds, SPARSE_CONFIGS, SPARSE_SNRS, support=SPARSE_SUPPORT, desc="sparse"
    )
    sparse_seconds = run.seconds - recovery_seconds
    run.mark("before_timing")
    timing = run_timing(timing_n, TIMING_SNR, reps)
    run.mark("end")
    total_seconds = run.seconds
    timing_seconds = total_seconds - recovery_seconds - sparse_seconds

    report = run.record(
        runtime_seconds={
            "recovery": recovery_seconds,
            "sparse": sparse_seconds,
            "timing": timing_seconds,
            "total": total_seconds,
        },
        load_average_1_5_15min=run.load,
        config={
            "dim": DIM,
            "rank": RANK,
            "n_varieties": N_VARIETIES,
            "snrs": list(SNRS),
            "separation": "sqrt(snr) noise standard deviations",
            "ns": list(ns),
            "seeds": list(seeds),
            "sparse": {
                "support": SPARSE_SUPPORT,
                "snrs": list(SPARSE_SNRS),
                "estimators": [c.label for c in SPARSE_CONFIGS],
                "target": "discriminating",
            },
            "timing": {"n": timing_n, "snr": TIMING_SNR, "repetitions": reps, "warmup": 1},
            "quick": args.quick,
            "rank_deficient_estimate_counts_as": 90.0,
        },
        recovery=recovery,
        sparse_recovery=sparse,
        timing=timing,
        targets=check_targets(recovery, timing),
    )
    written = write_results(out / "subspace_recovery", report, markdown(report))
    plot(
        recovery,
        ns,
        out / "subspace_recovery.png",
        f"Largest principal angle vs n, d = {DIM}, rank {RANK}, {N_VARIETIES} non-standard "
        f"varieties; median over {len(seeds)} seed(s), bars = min–max\n"
        "estimates of lower rank than the target count as 90°; coinciding lines are dodged "
        "sideways",
    )
    plot_sparse(
        sparse,
        recovery,
        ns,
        out / "subspace_recovery_sparse.png",
        f"Sparse discriminating directions: each variety's offset direction lives on "
        f"{SPARSE_SUPPORT} of {DIM} coordinates\nlargest angle to D vs n; median over "
        f"{len(seeds)} seed(s), bars = min–max; dotted: the same estimators on dense D",
    )
    errors = sum(len(c["errors"]) for c in (*recovery, *sparse)) + sum(
        len(t["errors"]) for t in timing
    )
    written += [out / "subspace_recovery.png", out / "subspace_recovery_sparse.png"]
    print(f"wrote {', '.join(str(p) for p in written)}")
    print(f"total {total_seconds:.0f} s; {errors} error(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
