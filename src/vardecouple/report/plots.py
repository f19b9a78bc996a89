"""The report's plots (PNG, headless matplotlib): one without data says so on its canvas."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # headless; the Figure API below keeps no global pyplot state
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from vardecouple.io import write_atomic
from vardecouple.report.data import ALPHA, MEANS, NAMES, RunView, layer_key

__all__ = [
    "PLOTS",
    "plot_deltas",
    "plot_held_out_penalty",
    "plot_overlap_layer",
    "plot_overlap_step",
    "plot_scores",
]
PLOTS = (
    "chrf_by_direction.png",
    "deltas.png",
    "overlap_by_step.png",
    "overlap_by_layer.png",
    "target_rate.png",
    "held_out_penalty.png",
)


# ---------------------------------------------------------------- plots


def _save(fig: Figure, path: Path) -> None:
    write_atomic(path, lambda t: fig.savefig(t, format="png", dpi=110, bbox_inches="tight"))


def _empty(ax: Any, what: str) -> None:
    ax.text(0.5, 0.5, f"no data: {what}", ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()


def _bars(ax: Any, groups: list[str], series: list[tuple[str, str, float, list, Any]]) -> None:
    """Grouped bars; ``series`` = (label, colour, alpha, heights, yerr or None)."""
    width = 0.8 / max(len(series), 1)
    for i, (label, color, alpha, ys, err) in enumerate(series):
        x = np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width
        y = [np.nan if v is None else v for v in ys]
        ax.bar(x, y, width, yerr=err, capsize=2, label=label, color=color, alpha=alpha)
    ax.set_xticks(
        np.arange(len(groups)),
        groups,
        rotation=30 if len(groups) > 2 else 0,
        ha="right" if len(groups) > 2 else "center",
    )
    ax.grid(axis="y", alpha=0.3)


def _wide(n_groups: int, n_series: int) -> tuple[float, float]:
    return max(7.0, 2.0 + n_groups * (0.25 * n_series + 0.4)), 4.5


def plot_scores(run: RunView, path: Path, metric: str, title: str) -> str:
    """Grouped bars per direction per arm; returns what the error bars are."""
    scale = 100.0 if metric == "target_variety_rate" else 1.0
    fig = Figure(figsize=_wide(len(run.dirs), len(run.arms)), layout="constrained")
    ax, modes, series = fig.add_subplot(), set(), []
    for arm in run.arms:
        ys, err = [], []
        for d in run.dirs:
            s = run.stat(arm, d, metric)
            ys.append(s[0] * scale if s else None)
            cis = run.values(arm, d, f"{metric}_ci95") if s else []
            if s and cis and len(cis) == len(run.values(arm, d, metric)):
                lo, hi = np.mean(cis, axis=0)
                err.append((max(s[0] - lo, 0.0), max(hi - s[0], 0.0)))
                modes.add("the bootstrap 95% CI (per-seed interval bounds averaged over seeds)")
            else:
                err.append((s[1] * scale, s[1] * scale) if s else (0.0, 0.0))
                if s and s[2] > 1:
                    modes.add("± 1 sd over seeds")
        if any(y is not None for y in ys):
            series.append((arm, run.colors[arm], 1.0, ys, np.array(err).T))
    if series:
        _bars(ax, run.dirs, series)
        ax.set(xlabel="direction", ylabel=NAMES[metric], title=title)
        ax.legend(title="arm", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        _empty(ax, f"no {NAMES[metric]} scores")
    _save(fig, path)
    return " and ".join(sorted(modes)) or "none (one seed, no bootstrap CI)"


def plot_deltas(run: RunView, path: Path) -> None:
    deltas = run.res["deltas"]
    arms = [a for a in run.arms if deltas.get(a)]
    groups = [d for d in [*run.dirs, *MEANS] if any(d in deltas[a] for a in arms)]
    w, _ = _wide(len(groups), len(arms))
    fig = Figure(figsize=(w, 7), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True)
    for ax, metric in zip(axes, ("chrf++", "bleu"), strict=True):
        if not groups:
            _empty(ax, "no deltas against the standard arm")
            continue
        width = 0.8 / len(arms)
        for i, arm in enumerate(arms):
            for j, g in enumerate(groups):
                d = deltas[arm].get(g, {}).get(metric)
                if d is None:
                    continue
                x, c, sig = (
                    j + (i - (len(arms) - 1) / 2) * width,
                    run.colors[arm],
                    d["p_value"] < ALPHA,
                )
                err = [[max(d["delta"] - d["ci95"][0], 0)], [max(d["ci95"][1] - d["delta"], 0)]]
                ax.errorbar(
                    x,
                    d["delta"],
                    yerr=err,
                    fmt="o",
                    color=c,
                    capsize=3,
                    ms=7,
                    markerfacecolor=c if sig else "white",
                )
                if sig:
                    ax.annotate("*", (x, d["ci95"][1]), ha="center", va="bottom", fontsize=13)
        ax.axhline(0, color="black", lw=0.8)
        means = sum(g in MEANS for g in groups)
        if means and len(groups) > means:
            ax.axvline(len(groups) - means - 0.5, color="grey", ls=":", lw=1)
        ax.margins(y=0.12)
        ax.set_ylabel(f"Δ {NAMES[metric]} vs standard")
        ax.grid(axis="y", alpha=0.3)
        labels = [MEANS.get(g, g) for g in groups]
        ax.set_xticks(range(len(groups)), labels, rotation=30, ha="right")
    fig.suptitle("Difference to the standard arm, paired bootstrap 95% CI")
    axes[1].set_xlabel("direction")
    handles = [Line2D([], [], marker="o", ls="", color=run.colors[a], label=a) for a in arms]
    handles += [
        Line2D([], [], marker="o", ls="", color="grey", label=f"filled, *: p < {ALPHA}"),
        Line2D([], [], marker="o", ls="", color="grey", mfc="white", label="hollow: n.s."),
    ]
    fig.legend(handles=handles, loc="outside right upper")
    _save(fig, path)


def _per_layer_curves(
    run: RunView,
    curves: dict[str, dict],
    points: Callable[[Any, str], list[tuple[float, float]]],
    styles: list[tuple[str, str, str]],
    *,
    ylabel: str,
    empty: str,
    title: str,
    path: Path,
) -> None:
    """One subplot per layer, one colour per arm, one line style per series: for each
    ``(key, linestyle, legend label)`` of ``styles``, ``points(curve of one layer, key)``
    gives the (step, value) points drawn."""
    layers = sorted({la for c in curves.values() for la in c}, key=layer_key)
    fig = Figure(figsize=(max(7.0, 4.2 * min(len(layers), 3) + 2), 4.2), layout="constrained")
    axes = fig.subplots(1, max(len(layers), 1), sharey=True, squeeze=False)[0]
    if not layers:
        _empty(axes[0], empty)
    for ax, layer in zip(axes, layers, strict=False):
        for arm, c in curves.items():
            for key, ls, _ in styles:
                pts = points(c.get(layer, {}), key)
                if pts:
                    ax.plot(*zip(*pts, strict=True), ls=ls, marker="o", ms=3, color=run.colors[arm])
        ax.set(title=f"layer {layer}", xlabel="training step", ylabel=ylabel)
        ax.grid(alpha=0.3)
    handles = [Line2D([], [], color=run.colors[a], label=a) for a in curves]
    handles += [Line2D([], [], color="grey", ls=ls, label=label) for _, ls, label in styles]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 5))
    fig.suptitle(title)
    _save(fig, path)


def plot_overlap_step(run: RunView, path: Path) -> None:
    """Per layer, each trained arm's reference overlap of the low-resource varieties
    (solid, mean) and of the standard (dashed) at each refresh, mean over seeds."""
    curves = {a: run.curves(a) for a in run.trained()}
    groups = {"low": run.varieties, "standard": [run.standard]}

    def points(curve: dict, key: str) -> list[tuple[float, float]]:
        pts = [(s, run.ovl(curve[s], groups[key])) for s in sorted(curve)]
        return [p for p in pts if p[1] is not None]

    _per_layer_curves(
        run,
        {a: c for a, c in curves.items() if c},
        points,
        [("low", "-", "low-resource (mean)"), ("standard", "--", f"standard ({run.standard})")],
        ylabel="reference overlap",
        empty="no refresh records in the train logs",
        title="Overlap with the frozen reference subspace U₀ during training "
        f"({run.over_seeds(short=True)})",
        path=path,
    )


def plot_held_out_penalty(run: RunView, path: Path) -> None:
    """Per layer, each trained arm's held-out penalty under U₀ (solid) and under the U it
    was trained against until each refresh (dotted), mean over seeds."""
    curves = {a: run.curves(a, "held_out_penalty") for a in run.trained()}

    def points(curve: dict, key: str) -> list[tuple[float, float]]:
        return [(s, float(np.mean([t[key] for t in curve[s] if key in t])))
                for s in sorted(curve) if any(key in t for t in curve[s])]  # fmt: skip

    _per_layer_curves(
        run,
        {a: c for a, c in curves.items() if any(c.values())},
        points,
        [("reference", "-", "under U₀ (frozen)"), ("previous", ":", "under the U trained against")],
        ylabel="held-out penalty",
        empty="no held-out penalty in the train logs",
        title="The penalty on held-out probe tokens at each refresh "
        f"({run.over_seeds(short=True)})",
        path=path,
    )


def plot_overlap_layer(run: RunView, path: Path) -> None:
    arms = run.trained()
    tabs = {(a, w): run.tables(a, w) for a in arms for w in ("initial", "final")}
    layers = sorted({la for t in tabs.values() for la in t}, key=layer_key)
    fig = Figure(
        figsize=(max(7.0, 2.0 + len(layers) * (0.5 * len(arms) + 0.5)), 4.2), layout="constrained"
    )
    ax = fig.add_subplot()
    if not layers:
        _empty(ax, "no initial/final overlap tables")
    else:
        series = [
            (
                f"{a} {lab}",
                run.colors[a],
                alpha,
                [run.ovl(tabs[a, w].get(la, []), run.varieties) for la in layers],
                None,
            )
            for a in arms
            for w, lab, alpha in (("initial", "before", 0.35), ("final", "after", 1.0))
        ]
        _bars(ax, [f"layer {la}" for la in layers], series)
        ax.set(
            xlabel="probed layer",
            ylabel="reference overlap (low-resource mean)",
            title="Reference overlap before (light) and after (dark) fine-tuning"
            + ("" if run.mechanism_seeds is None else f" ({run.over_seeds(short=True)})"),
        )
        handles = [Patch(color=run.colors[a], label=a) for a in arms]
        handles += [
            Patch(color="grey", alpha=0.35, label="before (initial)"),
            Patch(color="grey", label="after (final)"),
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _save(fig, path)
