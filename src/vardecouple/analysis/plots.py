"""Plots of a probe run (headless matplotlib): one PNG per metric, layer on the x axis."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless; the Figure API keeps no global pyplot state
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from vardecouple.io import write_atomic

__all__ = [
    "CODE_METRICS",
    "METRICS",
    "plot_probe",
]


METRICS: dict[str, str] = {  # name -> axis label
    "l2": "L2 distance of parallel sentences",
    "cosine": "cosine distance of parallel sentences",
    "cka": "linear CKA",
    "angle_mean": "mean principal angle (degrees)",
    "angle_largest": "largest principal angle (degrees)",
    "overlap": "overlap with the standard's PCA subspace",
    "online_codelength": "online codelength (bits)",
    "online_compression": "online compression",
    "variational_codelength": "variational codelength (bits)",
    "variational_compression": "variational compression",
    "variational_model_bits": "variational model cost KL(q‖p) (bits)",
}
CODE_METRICS = tuple(m for m in METRICS if m.startswith(("online", "variational")))


def plot_probe(data: dict[str, Any], folder: Path) -> list[Path]:
    """One PNG per metric, ``probe_<metric>.png``: the metric against layer, one line per
    variety; one panel per model, side by side, shared y axis. Code metrics add the
    ``K``-class ``all`` (dashed; codelengths on a right-hand axis of their own, as the
    ``K``-class code covers ``K·n`` labels, not ``2n``)."""
    folder.mkdir(parents=True, exist_ok=True)
    labels, layers, varieties = list(data["results"]), data["layers"], data["varieties"]
    palette = matplotlib.colormaps["tab10"]
    colors = {v: palette(i % 10) for i, v in enumerate(varieties)} | {"all": "black"}
    k = len(varieties) + 1
    written = []
    for metric, axis in METRICS.items():
        fig = Figure(figsize=(max(7.0, 2.2 + 4.0 * len(labels)), 4.6), layout="constrained")
        axes = fig.subplots(1, len(labels), sharey=True, squeeze=False)[0]
        twins: list[Any] = []
        for ax, label in zip(axes, labels, strict=True):
            res = data["results"][label]
            for v in [*varieties, "all"] if metric in CODE_METRICS else varieties:
                ys = [res[str(la)][v][metric] for la in layers]
                ys = [math.nan if y is None else y for y in ys]
                where = ax
                if v == "all" and metric.endswith("codelength"):
                    where = ax.twinx()
                    if twins:
                        where.sharey(twins[0])
                    twins.append(where)
                where.plot(layers, ys, marker="o", ms=3, color=colors[v],
                           ls="--" if v == "all" else "-")  # fmt: skip
            if metric.endswith("compression"):
                ax.axhline(1.0, color="grey", lw=0.8, ls=":")
            ax.set(title=label, xlabel="decoder layer (0-based)")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        axes[0].set_ylabel(axis)
        for twin in twins[:-1]:
            twin.tick_params(right=False, labelright=False)
        if twins:
            twins[-1].set_ylabel(f"all ({k} classes): {axis}")
        handles = [Line2D([], [], color=colors[v], label=v) for v in varieties]
        if metric in CODE_METRICS:
            handles.append(Line2D([], [], color="black", ls="--", label=f"all ({k} classes)"))
        ncol = min(len(handles), max(2, int(fig.get_figwidth() // 1.6)))
        fig.legend(handles=handles, loc="outside lower center", ncol=ncol,
                   title=f"variety (each against the standard {data['standard']})")  # fmt: skip
        fig.suptitle(f"{axis} by layer\n{data['model']}, {data['rows']} rows per variety")
        path = folder / f"probe_{metric}.png"
        write_atomic(path, lambda t, f=fig: f.savefig(t, format="png", dpi=110))
        written.append(path)
    return written
