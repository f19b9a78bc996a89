"""Fitted subspaces as a folder that lives next to a PEFT adapter.

``FOLDER/subspace.safetensors`` holds, per layer ``i``, the tensors ``layer.i.basis``
(``d × k``, orthonormal) and ``layer.i.center`` (``d``), plus ``reference.i.*`` for the
frozen reference ``U₀`` when there is one; ``FOLDER/subspace.json`` says what they are:
the estimator, layers, ranks and hidden size, and whatever provenance the writer adds
(the model it was fitted on with its SHA-256, the corpus files, the step). No pickle: a
folder from anywhere loads as plain tensors and JSON.

>>> save_subspaces("run/subspace", {9: subspace}, {"estimator": "lda"})  # doctest: +SKIP
>>> with erasing(model, load_subspace("run/subspace"), alpha=1.0):      # doctest: +SKIP
...     model.generate(...)
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from vardecouple.io import write_dir_atomic
from vardecouple.subspace import Subspace

__all__ = ["FORMAT", "SavedSubspaces", "load_subspace", "save_subspaces"]

FORMAT = "vardecouple.subspace/1"
TENSORS, INFO = "subspace.safetensors", "subspace.json"


@dataclass(frozen=True)
class SavedSubspaces(Mapping[int, Subspace]):
    """Subspaces by layer (a read-only mapping), the reference ``U₀`` if saved, and what
    ``subspace.json`` says about them."""

    subspaces: dict[int, Subspace]
    reference: dict[int, Subspace] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, layer: int) -> Subspace:
        return self.subspaces[layer]

    def __iter__(self) -> Iterator[int]:
        return iter(self.subspaces)

    def __len__(self) -> int:
        return len(self.subspaces)


def save_subspaces(
    folder: str | Path,
    subspaces: Mapping[int, Subspace],
    info: Mapping[str, Any] | None = None,
    reference: Mapping[int, Subspace] | None = None,
) -> Path:
    """Write ``subspaces`` (and ``reference``) to ``folder`` atomically; ``info`` (JSON
    values) is recorded in ``subspace.json`` beside the layers, ranks and hidden size."""
    if not subspaces:
        raise ValueError("save_subspaces: no subspace to save")
    tensors: dict[str, torch.Tensor] = {}
    for kind, by_layer in (("layer", subspaces), ("reference", reference or {})):
        for i, s in by_layer.items():
            state = s.state_dict()
            tensors[f"{kind}.{int(i)}.basis"] = state["basis"].contiguous()
            tensors[f"{kind}.{int(i)}.center"] = state["center"].contiguous()
    first = next(iter(subspaces.values()))
    record = dict(info or {}) | {
        "format": FORMAT,
        "layers": sorted(int(i) for i in subspaces),
        "ranks": {str(int(i)): s.rank for i, s in sorted(subspaces.items())},
        "dim": first.dim,
        "reference_layers": sorted(int(i) for i in reference or {}),
    }
    text = json.dumps(record, indent=1, sort_keys=True)  # fails on non-JSON info, before writing

    def fill(tmp: Path) -> None:
        save_file(tensors, str(tmp / TENSORS), metadata={"format": FORMAT})
        (tmp / INFO).write_text(text + "\n", encoding="utf-8")

    return write_dir_atomic(folder, fill)


def load_subspace(folder: str | Path) -> SavedSubspaces:
    """The subspaces :func:`save_subspaces` wrote to ``folder`` (a ValueError naming the
    file and what is wrong when it is not such a folder)."""
    folder = Path(folder)
    info_path, tensor_path = folder / INFO, folder / TENSORS
    if not info_path.is_file() or not tensor_path.is_file():
        raise ValueError(f"{folder}: not a saved subspace (expected {INFO} and {TENSORS})")
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{info_path}: not valid JSON: {exc}") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise ValueError(f"{info_path}: format is not {FORMAT!r}")
    tensors = load_file(str(tensor_path))
    found: dict[str, dict[int, Subspace]] = {"layer": {}, "reference": {}}
    for kind, layers in (("layer", info["layers"]), ("reference", info["reference_layers"])):
        for i in layers:
            basis, center = tensors.get(f"{kind}.{i}.basis"), tensors.get(f"{kind}.{i}.center")
            if basis is None or center is None:
                raise ValueError(f"{tensor_path}: no tensors for {kind} {i} ({info_path} lists it)")
            found[kind][int(i)] = Subspace(basis, center)
    return SavedSubspaces(found["layer"], found["reference"], info)
