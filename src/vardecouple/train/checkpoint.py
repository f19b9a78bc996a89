"""Resumable training checkpoints, written atomically and verified on load.

A checkpoint is a folder ``OUT/checkpoint`` holding

- ``adapter.safetensors``: the trainable (LoRA) weights;
- ``state.pt``: optimizer, LR scheduler, decoupler (estimators, subspaces, reference),
  RNG states and the next step — plain tensors and containers, loaded with
  ``torch.load(weights_only=True)`` (no pickle execution);
- ``MANIFEST.json``: the SHA-256 of both files.

It is written into a temporary folder, fsynced, and renamed over the old one, so a crash
mid-write leaves the previous checkpoint intact; a checkpoint whose files do not match
the manifest is reported and not used.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
import signal
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vardecouple.io import sha256_file

__all__ = [
    "CheckpointError",
    "fault_point",
    "has_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
    "trainable_state",
]

_FAULTS: dict[str, int] = {}


def fault_point(name: str) -> None:
    """Crash-test hook: with ``VARDECOUPLE_FAULT=name:N`` in the environment the process
    kills itself with SIGKILL the ``N``-th time it reaches ``name``; otherwise a no-op.

    Points: ``checkpoint-files`` (checkpoint files written, manifest not yet),
    ``checkpoint-swap`` (between moving the old checkpoint aside and renaming the new
    one in), ``refresh`` (a probe refresh about to start, in the training loop).
    """
    spec = os.environ.get("VARDECOUPLE_FAULT")
    if not spec or spec.partition(":")[0] != name:
        return
    _FAULTS[name] = _FAULTS.get(name, 0) + 1
    if _FAULTS[name] == int(spec.partition(":")[2] or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def has_checkpoint(folder: str | Path) -> bool:
    """Whether ``folder`` (or, after a crash between the two renames, its ``.old``) exists."""
    target = Path(folder)
    return target.is_dir() or target.with_name(f".{target.name}.old").is_dir()


class CheckpointError(ValueError):
    """A checkpoint that is missing, partial or corrupted."""


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters that require grad (the adapters), detached and contiguous."""
    return {
        name: p.detach().cpu().contiguous().clone()
        for name, p in model.named_parameters()
        if p.requires_grad
    }


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def save_checkpoint(
    folder: str | Path,
    model: nn.Module,
    state: dict[str, Any],
) -> Path:
    """Write the checkpoint atomically to ``folder`` (replacing an older one)."""

    target = Path(folder)
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_file(trainable_state(model), str(tmp / "adapter.safetensors"))
    full = state | {
        "torch_rng": torch.get_rng_state(),
        "python_rng": _python_rng_state(),
    }
    torch.save(full, tmp / "state.pt")
    fault_point("checkpoint-files")
    manifest = {name: sha256_file(tmp / name) for name in ("adapter.safetensors", "state.pt")}
    (tmp / "MANIFEST.json").write_text(json.dumps(manifest, indent=1))
    for name in ("adapter.safetensors", "state.pt", "MANIFEST.json"):
        _fsync(tmp / name)
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        if old.exists():
            shutil.rmtree(old)
        os.replace(target, old)
    fault_point("checkpoint-swap")
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)
    return target


def _python_rng_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def load_checkpoint(folder: str | Path, model: nn.Module) -> dict[str, Any]:
    """Verify and load: restores the adapter weights into ``model`` and the RNG states;
    returns the rest of the saved state (optimizer, scheduler, decoupler, step)."""

    target = Path(folder)
    if not target.is_dir() and target.with_name(f".{target.name}.old").is_dir():
        target = target.with_name(f".{target.name}.old")  # a crash between the two renames
    manifest_path = target / "MANIFEST.json"
    if not manifest_path.is_file():
        raise CheckpointError(f"checkpoint {target}: no MANIFEST.json (missing or partial)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict) or set(manifest) != {"adapter.safetensors", "state.pt"}:
        raise CheckpointError(
            f"checkpoint {target}: MANIFEST.json is not the checksums of adapter.safetensors "
            "and state.pt"
        )
    for name, digest in manifest.items():
        path = target / name
        if not path.is_file() or sha256_file(path) != digest:
            raise CheckpointError(f"checkpoint {target}: {name} does not match its checksum")
    weights = load_file(str(target / "adapter.safetensors"))
    params = dict(model.named_parameters())
    missing = [k for k in weights if k not in params]
    if missing:
        raise CheckpointError(f"checkpoint {target}: weights {missing[:3]} not in this model")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)
    try:  # plain tensors and containers only: no pickled code is ever executed
        state = torch.load(target / "state.pt", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"checkpoint {target}: state.pt holds objects other than tensors and plain "
            f"containers; refused (weights_only loading): {str(exc).splitlines()[0]}"
        ) from None
    torch.set_rng_state(state.pop("torch_rng"))
    version, internal, gauss = state.pop("python_rng")
    random.setstate((version, tuple(internal), gauss))
    return state
