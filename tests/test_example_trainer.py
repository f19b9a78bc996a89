"""examples/hf_trainer.py: an ordinary Trainer script with two added lines, as a user
runs it (from the repository root, relative paths), on tiny-random."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CORPORA
from vardecouple.probes.artifact import load_subspace

pytestmark = pytest.mark.usefixtures("corpora")
ROOT = Path(__file__).resolve().parent.parent


def _script(out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [
        sys.executable, "examples/hf_trainer.py", "--model", "tiny-random",
        "--corpus", str(CORPORA / "tatoeba-deu-nds"), "--standard", "deu_Latn",
        "--variety", "nds_Latn", "--out", str(out), *extra,
    ]  # fmt: skip
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=env, timeout=900)


def test_the_trainer_example_runs_saves_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = _script(out, "--steps", "4", "--save-steps", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    for step in (2, 4):
        state = json.loads((out / f"checkpoint-{step}" / "decoupler.json").read_text())
        assert state["format"] == "vardecouple.tree/1"
    saved = load_subspace(out / "final" / "subspace")
    assert len(saved) == 1 and saved.info["estimator"] == "lda"
    assert (out / "final" / "adapter_config.json").is_file()
    again = _script(out, "--steps", "6", "--save-steps", "2", "--resume")
    assert again.returncode == 0, again.stderr[-2000:]
    trainer_state = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())
    assert trainer_state["global_step"] == 6 and (out / "checkpoint-6" / "decoupler.json").exists()


def test_the_sft_variant_runs(tmp_path: Path) -> None:
    done = _script(tmp_path / "sft", "--steps", "2", "--save-steps", "2", "--sft")
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_subspace(tmp_path / "sft" / "final" / "subspace").info["estimator"] == "lda"
