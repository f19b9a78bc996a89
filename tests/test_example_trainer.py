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


def _script(
    out: Path, *extra: str, launcher: list[str] | None = None
) -> subprocess.CompletedProcess:
    args = [
        *(launcher or [sys.executable, "examples/hf_trainer.py"]), "--model", "tiny-random",
        "--corpus", str(CORPORA / "tatoeba-deu-nds"), "--standard", "deu_Latn",
        "--variety", "nds_Latn", "--out", str(out), *extra,
    ]  # fmt: skip
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
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


def test_two_trainer_processes_fit_the_probe_as_one_does(tmp_path: Path) -> None:
    """The example under ``torchrun`` with 2 CPU processes (gloo): the decoupler shards its
    probe rows and all-reduces, so the step-0 refresh (before any update) logs the
    overlaps and held-out penalties one process logs; training then runs and checkpoints
    the decoupler."""
    one = _script(tmp_path / "one", "--steps", "2", "--save-steps", "2")
    assert one.returncode == 0, one.stderr[-2000:]
    torchrun = Path(sys.executable).parent / "torchrun"
    args = [str(torchrun), "--standalone", "--nproc-per-node=2", "examples/hf_trainer.py"]
    two = _script(tmp_path / "two", "--steps", "2", "--save-steps", "2", launcher=args)
    assert two.returncode == 0, two.stderr[-3000:]
    logs = {}
    for name in ("one", "two"):
        state = json.loads((tmp_path / name / "checkpoint-2" / "trainer_state.json").read_text())
        refresh = [h for h in state["log_history"] if any("overlap" in k for k in h)]
        logs[name] = refresh[0]
        assert (tmp_path / name / "checkpoint-2" / "decoupler.json").is_file()
    # not vacuous: each of the two processes read its own shard of the probe rows
    read = [
        int(line.split("read ")[1].split()[0])
        for line in two.stdout.splitlines()
        if "read " in line
    ]
    total = int(one.stdout.split("read ")[1].split()[0])
    assert len(read) == 2 and sum(read) == total and max(read) < total, (read, total)
    keys = [k for k in logs["one"] if k.startswith("decoupling/")]
    assert sorted(keys) == sorted(k for k in logs["two"] if k.startswith("decoupling/"))
    assert any("/overlap/" in k for k in keys) and any("/held_out_penalty/" in k for k in keys)
    for key in keys:
        assert logs["two"][key] == pytest.approx(logs["one"][key], rel=1e-4), key
