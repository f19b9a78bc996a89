"""Safe loading: checkpoints are verified (checksums, a complete manifest) and their state
loads with ``weights_only=True``, so a pickled payload is refused, never run; remote code
is off unless asked."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from vardecouple.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


class _Payload:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 3)


def _rehash(folder: Path) -> None:
    """What an attacker with write access would do: make the manifest match."""
    manifest = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest()
                for n in ("adapter.safetensors", "state.pt")}  # fmt: skip
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))


def test_a_checkpoint_round_trips(tmp_path: Path) -> None:
    model = _model()
    save_checkpoint(tmp_path / "ck", model, {"next_step": 3, "x": torch.ones(2)})
    other = nn.Linear(4, 3)
    state = load_checkpoint(tmp_path / "ck", other)
    assert state["next_step"] == 3 and torch.equal(state["x"], torch.ones(2))
    assert torch.equal(other.weight, model.weight)


def test_a_pickled_payload_in_state_is_refused_and_never_runs(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ck", _model(), {"next_step": 3})
    marker = tmp_path / "payload-ran"
    torch.save({"next_step": 3, "evil": _Payload(str(marker))}, tmp_path / "ck" / "state.pt")
    _rehash(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(tmp_path / "ck", _model())
    assert not marker.exists()


def test_tampered_or_incomplete_checkpoints_are_detected(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "ck", _model(), {"next_step": 3})
    data = bytearray((tmp_path / "ck" / "adapter.safetensors").read_bytes())
    data[-1] ^= 1
    (tmp_path / "ck" / "adapter.safetensors").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(tmp_path / "ck", _model())
    (tmp_path / "ck" / "MANIFEST.json").write_text("{}")  # an emptied manifest
    with pytest.raises(CheckpointError, match="MANIFEST"):
        load_checkpoint(tmp_path / "ck", _model())
    (tmp_path / "ck" / "MANIFEST.json").unlink()
    with pytest.raises(CheckpointError, match="no MANIFEST"):
        load_checkpoint(tmp_path / "ck", _model())


def test_remote_code_is_off_unless_the_config_asks() -> None:
    from vardecouple.config import ModelSection

    assert ModelSection(spec="x").trust_remote_code is False
