"""`vardecouple train` killed with SIGKILL and resumed ends exactly where an
uninterrupted run ends: adapter weights, logged metrics (overlaps, i.e. the subspaces)
and summary bit-identical on CPU, resumed from the last complete checkpoint. Kill points:
two steps after the first checkpoint drawn with a seeded RNG (from outside), during a probe
refresh, while checkpoint files are written, and between the two renames that swap a
checkpoint in."""

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

pytestmark = pytest.mark.usefixtures("corpora")
EXE = str(Path(sys.executable).with_name("vardecouple"))
STEPS, EVERY = 14, 4  # training steps; a checkpoint every 4 steps (for steps 4, 8, 12)
CONFIG = (
    MINI_CORE.replace("steps = 4", f"steps = {STEPS}")
    .replace("checkpoint_every = 2", f"checkpoint_every = {EVERY}")
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


def _last_step(log: Path) -> int:
    """The last training step the log records as done (-1 before the first)."""
    last = -1
    for line in log.read_text().splitlines() if log.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the line being written
            continue
        if "loss" in record:
            last = max(last, record["step"])
    return last


def _stop(proc: subprocess.Popen) -> None:
    """SIGSTOP ``proc`` and wait until it is stopped (so its log no longer moves)."""
    proc.send_signal(signal.SIGSTOP)
    stat = Path(f"/proc/{proc.pid}/stat")
    while proc.poll() is None and stat.read_text().rpartition(")")[2].split()[0] not in "Tt":
        time.sleep(0.001)


def _kill_after_step(proc: subprocess.Popen, log: Path, step: int) -> int:
    """SIGKILL from outside once ``step`` is done; returns the last step done at the kill.

    The run is frozen (SIGSTOP) before it is killed, so the steps it finished are known
    exactly. When the next step would be a checkpoint's (the run may be writing it),
    the run goes on to finish one more step first, so the last complete checkpoint is
    known too: the one of step ``EVERY · ⌊(last + 1) / EVERY⌋``."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and _last_step(log) < step:
        time.sleep(0.005)
    assert proc.poll() is None, f"the run ended before step {step}"
    _stop(proc)
    last = _last_step(log)
    if (last + 1) % EVERY == 0:
        proc.send_signal(signal.SIGCONT)
        while time.monotonic() < deadline and _last_step(log) <= last:
            time.sleep(0.005)
        _stop(proc)
        last = _last_step(log)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    return last


#: Steps a run is killed after from outside: two drawn with a seeded RNG among the steps
#: after the first checkpoint (step 4) whose next step writes none, so that they resume
#: from different checkpoints.
_AFTER_FIRST = [s for s in range(EVERY, STEPS - 1) if (s + 1) % EVERY]
_RNG = random.Random(0)
_FIRST = _RNG.choice(_AFTER_FIRST)
_OTHERS = [s for s in _AFTER_FIRST if (s + 1) // EVERY != (_FIRST + 1) // EVERY]
KILL_STEPS = [_FIRST, _RNG.choice(_OTHERS)]  # [12, 8]


@pytest.mark.parametrize(
    ("fault", "kill_step"),
    [*((None, k) for k in KILL_STEPS), ("refresh:3", None), ("checkpoint-files:2", None),
     ("checkpoint-swap:2", None)],
    ids=[*(f"kill-after-step-{k}" for k in KILL_STEPS), "during-refresh", "checkpoint-files",
         "checkpoint-swap"],
)  # fmt: skip
def test_sigkill_then_resume_is_bit_identical(
    whole, tmp_path: Path, fault: str | None, kill_step: int | None
) -> None:
    cfg, done = whole
    out = tmp_path / "cut"
    proc = _train(cfg, out, fault=fault)
    if kill_step is not None:  # from outside, at a drawn step after the first checkpoint
        last = _kill_after_step(proc, out / "train_log.jsonl", kill_step)
        # the last complete checkpoint: written after step EVERY·n − 1, for next step EVERY·n
        expected = EVERY * ((last + 1) // EVERY)
    else:
        proc.wait(timeout=600)
        # refresh 3 runs before step 6; checkpoint 2 is step 8's: both leave step 4's
        last, expected = None, 4
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
    assert summary["steps"] == reference["steps"] == STEPS
    # resumed from a checkpoint, not restarted: the last complete one before the kill
    assert reference["resumed_from"] == 0
    assert summary["resumed_from"] == expected, (fault, kill_step, last, expected)


def test_a_non_finite_loss_stops_with_one_line_and_keeps_the_checkpoint(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    import vardecouple.train.step as train_module
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
