"""The ``probe.json`` file of ``vardecouple probe``: written atomically with its plots,
and merged from parts probed apart.

A run probes each trained arm's adapter as soon as it is made (adapters do not outlive
the session that made them) with ``run_probe(include_base=False, plots=False)``, and
:func:`merge_probes` joins those parts into the one ``probe.json`` that a single
``vardecouple probe`` of the base model and every adapter would have written.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vardecouple.analysis.plots import plot_probe
from vardecouple.io import write_atomic

__all__ = ["SCHEMA", "merge_probes", "write_probe"]

SCHEMA = "vardecouple.probe/1"


def write_probe(data: dict[str, Any], target: Path, *, plots: bool = True) -> Path:
    """``probe.json`` (atomically, never over an existing one) and, with ``plots``, its
    plots beside it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if plots:
        plot_probe(data, target.parent / "plots")
    if target.exists():
        raise FileExistsError(f"probe: {target} appeared while probing; not overwritten")
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    write_atomic(target, lambda t: Path(t).write_text(text, encoding="utf-8"))
    return target


#: What the parts of one probe must share to be merged into one ``probe.json``.
_SHARED = ("schema", "model", "standard", "varieties", "rows", "layers", "rank", "seed",
           "saved_subspace_layers")  # fmt: skip


def merge_probes(
    parts: Sequence[str | Path], out: str | Path, *, not_probed: Mapping[str, str] | None = None
) -> Path:
    """One ``out/probe.json`` (and its plots) from the ``probe.json`` of probes of the
    same rows, layers, rank and seed made separately (``run_probe(include_base=False)``),
    models in the order given; ``not_probed`` records the models that could not be
    probed, with why. A part that differs in any of those settings is a ValueError."""
    datas = [json.loads(Path(p).read_text(encoding="utf-8")) for p in parts]
    if not datas:
        raise ValueError("probe: no parts to merge")
    first, seen = datas[0], set()
    for path, data in zip(parts, datas, strict=True):
        differs = [k for k in _SHARED if data.get(k) != first.get(k)]
        if differs:
            raise ValueError(f"probe: {path} differs from {parts[0]} in {', '.join(differs)}")
        again = sorted(seen & set(data["results"]))
        if again:
            raise ValueError(f"probe: {path} probes {', '.join(again)} again")
        seen |= set(data["results"])
    merged = {k: first[k] for k in ("schema", "model")} | {
        "adapters": {k: v for d in datas for k, v in d["adapters"].items()},
        "corpus": first["corpus"],
    } | {k: first[k] for k in _SHARED[2:]} | {
        "seconds": round(sum(d["seconds"] for d in datas), 3),
        "timing": {k: v for d in datas for k, v in d["timing"].items()},
        "results": {k: v for d in datas for k, v in d["results"].items()},
    }  # fmt: skip
    if not_probed:
        merged["not_probed"] = dict(not_probed)
    return write_probe(merged, Path(out) / "probe.json")
