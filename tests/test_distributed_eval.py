"""`vardecouple eval` under `torchrun` with 2 CPU processes (gloo): the processes share
the sentences and the main process gathers them in test order, so every file equals an
independent 1-process evaluation's; `run --jobs` gives each job its own GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CORPORA, MINI_CORE, spread_tiny_model
from vardecouple.data import load_corpus
from vardecouple.experiment.jobs import job_gpus

pytestmark = pytest.mark.usefixtures("corpora")
BIN = Path(sys.executable).parent


def _eval(cfg: Path, out: Path, processes: int, model: Path) -> str:
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    cmd = [str(BIN / "vardecouple"), "eval", "--config", str(cfg), "--out", str(out),
           "--model", str(model)]  # fmt: skip
    if processes > 1:
        cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={processes}",
               "--no-python", *cmd]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_two_processes_write_what_one_process_writes(tmp_path: Path) -> None:
    # odd test size: the shares differ in length; a shortlist: per-row masks follow the rows
    text = MINI_CORE.replace("test_rows = 20", "test_rows = 23").replace(
        "[eval]\n", '[eval]\nshortlist = "train-targets"\ncontinuous = true\n'
    )
    (tmp_path / "c.toml").write_text(text)
    model, tok = spread_tiny_model(load_corpus(CORPORA / "tatoeba-deu-nds"))
    model.save_pretrained(tmp_path / "model")  # spread weights: the hypotheses differ
    tok.save_pretrained(tmp_path / "model")
    one, two = tmp_path / "one", tmp_path / "two"
    _eval(tmp_path / "c.toml", one, 1, tmp_path / "model")
    said = _eval(tmp_path / "c.toml", two, 2, tmp_path / "model")
    assert said.count("scores:") == 1  # the main process alone reports and writes
    files = sorted(p.relative_to(one) for p in one.rglob("*.txt"))
    assert files == sorted(p.relative_to(two) for p in two.rglob("*.txt")) and len(files) == 6
    for f in files:
        assert (one / f).read_text() == (two / f).read_text(), f
    hyps = (one / "hypotheses" / "deu_Latn->nds_Latn.txt").read_text().splitlines()
    assert len(hyps) == 23 and len(set(hyps)) > 5  # not vacuous
    a, b = (json.loads((o / "scores.json").read_text()) for o in (one, two))
    assert a["metrics"] == b["metrics"] and a["decoding"] == b["decoding"]


def test_each_job_sees_its_own_gpu_in_turn() -> None:
    assert job_gpus(3, visible="", count=0) == [None, None, None]
    assert job_gpus(3, visible="", count=2) == ["0", "1", "0"]
    assert job_gpus(2, visible="5,7", count=2) == ["5", "7"]
    assert job_gpus(4, visible="5,7,9", count=3) == ["5", "7", "9", "5"]
