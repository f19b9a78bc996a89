"""`vardecouple train` killed with SIGKILL and resumed ends exactly where an
uninterrupted run ends: adapter weights, logged metrics (overlaps, i.e. the subspaces)
and summary bit-identical on CPU. Kill points: a random step after the first checkpoint
(from outside), during a probe refresh, while checkpoint files are written, and between
the two renames that swap a checkpoint in."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import MINI_CORE

EXE = str(Path(sys.executable).with_name("vardecouple"))
CONFIG = (
    MINI_CORE.replace("steps = 4", "steps = 14")
    .replace("checkpoint_every = 2", "checkpoint_every = 4")
    .replace("refresh_every = 2", "refresh_every = 3")
    .replace("seeds = [0, 1]", "seeds = [0]")
)


def _train(cfg: Path, out: Path, *extra: str, fault: str | None = None) -> subprocess.Popen:
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    env.pop("VARDECOUPLE_FAULT", None)
    if fault:
        env["VARDECOUPLE_FAULT"] = fault
    cmd = [EXE, "train", str(cfg), "--arm", "decoupled", "--out", str(out), *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _records(out: Path) -> list[dict]:
    lines = (out / "train_log.jsonl").read_text().splitlines()
    drop = ("seconds", "tokens_per_s")
    return [{k: v for k, v in json.loads(x).items() if k not in drop} for x in lines]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("crash")
    cfg = folder / "c.toml"
    cfg.write_text(CONFIG)
    proc = _train(cfg, folder / "whole")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err.decode()[-2000:]
    return cfg, folder / "whole"


def _kill_after_step(proc: subprocess.Popen, log: Path, step: int) -> None:
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and any(
            json.loads(x).get("step", -1) >= step and "loss" in json.loads(x)
            for x in log.read_text().splitlines()
            if x.strip().endswith("}")
        ):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=60)


@pytest.mark.parametrize(
    "fault",
    [None, "refresh:3", "checkpoint-files:2", "checkpoint-swap:2"],
    ids=["random-step", "during-refresh", "checkpoint-files", "checkpoint-swap"],
)
def test_sigkill_then_resume_is_bit_identical(whole, tmp_path: Path, fault: str | None) -> None:
    cfg, done = whole
    out = tmp_path / "cut"
    proc = _train(cfg, out, fault=fault)
    if fault is None:  # from outside, at a random step after the first checkpoint (step 4)
        _kill_after_step(proc, out / "train_log.jsonl", random.Random(0).randint(5, 11))
    else:
        proc.wait(timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    assert not (out / "train_summary.json").exists()
    assert (out / "checkpoint").is_dir() or (out / ".checkpoint.old").is_dir()
    again = _train(cfg, out, "--resume")
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err.decode()[-2000:]
    assert _records(out) == _records(done)  # losses, penalties, λ, overlaps (the subspaces)
    a, b = _weights(out), _weights(done)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((out / "train_summary.json").read_text())
    reference = json.loads((done / "train_summary.json").read_text())
    assert summary["final_overlap"] == reference["final_overlap"]
    assert summary["steps"] == reference["steps"] == 14
    # resumed from a checkpoint, not restarted: the last complete one before the kill
    expected = {None: (4, 8), "refresh:3": (4,), "checkpoint-files:2": (4,),
                "checkpoint-swap:2": (4,)}[fault]  # fmt: skip
    assert reference["resumed_from"] == 0 and summary["resumed_from"] in expected


def test_a_non_finite_loss_stops_with_one_line_and_keeps_the_checkpoint(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    import vardecouple.train as train_module
    from vardecouple.cli import main

    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    real, calls = train_module.supervised_loss, {"n": 0}

    def poisoned(*args, **kwargs):
        loss, hidden = real(*args, **kwargs)
        calls["n"] += 1
        # call 1 measures step 0's start penalty, so call 10 is step 8
        return (loss * float("nan") if calls["n"] == 10 else loss), hidden

    monkeypatch.setattr(train_module, "supervised_loss", poisoned)
    code = main(["train", str(cfg), "--arm", "decoupled", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]  # the rest: progress bar
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert errors[0].startswith("vardecouple train: error: train: non-finite"), errors
    assert "at step 8" in errors[0], errors
    import hashlib

    folder = tmp_path / "o" / "checkpoint"
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    for name, digest in manifest.items():  # the files match their checksums: intact
        assert hashlib.sha256((folder / name).read_bytes()).hexdigest() == digest
    state = torch.load(tmp_path / "o" / "checkpoint" / "state.pt", weights_only=True)
    assert state["next_step"] == 8  # the last good checkpoint, before the bad step
    assert not (tmp_path / "o" / "train_summary.json").exists()
