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

from vardecouple.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint


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
    from vardecouple.experiment.sections import ModelSection

    assert ModelSection(spec="x").trust_remote_code is False


@pytest.fixture(scope="module")
def local_model(tmp_path_factory) -> Path:
    """A tiny Llama checkpoint folder (model and tokenizer), as a hub download leaves it."""
    from vardecouple.model.load import tiny_random

    model, tokenizer = tiny_random(["Der Hund hat gespielt.", "De Hund hett speelt."] * 4,
                                   num_layers=2, hidden_size=16)  # fmt: skip
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["folder", "hub-id"])
@pytest.mark.parametrize("asked", [True, False, None], ids=["true", "false", "unset"])
def test_the_config_trust_remote_code_reaches_from_pretrained(
    tmp_path: Path, monkeypatch, local_model: Path, kind: str, asked: bool | None
) -> None:
    """``[model] trust_remote_code`` is what the model and the tokenizer are loaded with
    (through the arm's loader): True only when the config sets it to true."""
    import transformers

    from vardecouple.experiment.arms import load_base
    from vardecouple.experiment.config import load_config

    calls: list[tuple[str, object]] = []

    def recording(cls_name: str, real):
        def from_pretrained(name, *args, **kwargs):
            calls.append((cls_name, kwargs.get("trust_remote_code", "absent")))
            # a hub id is served from the local folder (no network here)
            return real(local_model if kind == "hub-id" else name, *args, **kwargs)

        return from_pretrained

    for cls in (transformers.AutoModelForCausalLM, transformers.AutoTokenizer):
        monkeypatch.setattr(cls, "from_pretrained", recording(cls.__name__, cls.from_pretrained))
    spec = str(local_model) if kind == "folder" else "vardecouple-test/tiny-llama"
    line = "" if asked is None else f"trust_remote_code = {str(asked).lower()}\n"
    (tmp_path / "c.toml").write_text(
        f'name = "t"\n[data]\nroot = "{tmp_path}"\ncorpora = [{{ path = "c" }}]\n'
        f'standard = "deu_Latn"\nvarieties = ["nds_Latn"]\n[model]\nspec = "{spec}"\n{line}'
        "[arms.standard]\npenalize = false\n"
    )
    config = load_config(tmp_path / "c.toml")
    loaded = load_base(config, splits=None)
    assert loaded.num_layers == 2
    assert calls == [("AutoModelForCausalLM", asked is True), ("AutoTokenizer", asked is True)]
