"""`vardecouple train` under `torchrun` with 2 CPU processes (gloo) optimises exactly what
one process does: each process takes half of every batch and weights its loss by its
share of the batch's tokens, so the averaged gradient is the whole batch's. Compared with
an independent single-process run of the same config: logged losses, penalties and
overlaps, the decoupler's subspaces (largest principal angle ≤ 1°) and the final adapter.
With the variational probe the 2-process run must stay within the spread of probe seeds.
Only the main process writes (one log line per record, one summary, one adapter)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import MINI_CORE

pytestmark = pytest.mark.usefixtures("corpora")
BIN = Path(sys.executable).parent
CONFIG = (
    MINI_CORE.replace("steps = 4", "steps = 6")
    .replace("checkpoint_every = 2", "checkpoint_every = 3")
    .replace("seeds = [0, 1]", "seeds = [0]")
    .replace("batch_size = 4", "batch_size = 6")  # 3 per process; uneven token counts
)


VARIATIONAL = CONFIG.replace(
    '\nestimator = "mean-diff"',
    '\nestimator = "variational"\nestimator_options = { seed = SEED, fit_epochs = 20 }',
)


def _train(cfg: Path, out: Path, processes: int, *extra: str, fault: str = "") -> int:
    env = os.environ | {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    env.pop("VARDECOUPLE_FAULT", None)
    if fault:
        env["VARDECOUPLE_FAULT"] = fault
    cmd = [str(BIN / "vardecouple"), "train", str(cfg), "--arm", "decoupled", "--out", str(out)]
    if processes > 1:
        cmd = [str(BIN / "torchrun"), "--standalone", f"--nproc-per-node={processes}",
               "--no-python", *cmd]  # fmt: skip
    done = subprocess.run([*cmd, *extra], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 or fault, done.stderr[-3000:]
    return done.returncode


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[int, Path]:
    folder = tmp_path_factory.mktemp("ddp")
    cfg = folder / "c.toml"
    cfg.write_text(CONFIG)
    out = {n: folder / f"p{n}" for n in (1, 2)}
    for n, path in out.items():
        _train(cfg, path, n)
    return out


def test_two_processes_resume_exactly_after_a_crash(runs) -> None:
    """Both processes killed (SIGKILL) as the refresh of step 4 starts; `--resume` on 2
    processes ends bit-identical to the uninterrupted 2-process run."""
    from safetensors.torch import load_file

    cfg, out = runs[1].parent / "c.toml", runs[1].parent / "crashed"
    assert _train(cfg, out, 2, fault="refresh:3") != 0
    assert not (out / "train_summary.json").exists()
    _train(cfg, out, 2, "--resume")
    drop = ("seconds", "tokens_per_s")
    whole, resumed = ([{k: v for k, v in r.items() if k not in drop} for r in _log(o)]
                      for o in (runs[2], out))  # fmt: skip
    assert resumed == whole
    a, b = (load_file(str(o / "adapter" / "adapter_model.safetensors")) for o in (runs[2], out))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "train_summary.json").read_text())["resumed_from"] == 3


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


def test_only_the_main_process_writes(runs) -> None:
    one, two = _log(runs[1]), _log(runs[2])
    assert [r["step"] for r in two] == [r["step"] for r in one]  # no record twice
    summary = json.loads((runs[2] / "train_summary.json").read_text())
    assert (
        summary["processes"] == 2
        and summary["tokens"] == json.loads((runs[1] / "train_summary.json").read_text())["tokens"]
    )


def test_logged_metrics_match_one_process(runs) -> None:
    one, two = _log(runs[1]), _log(runs[2])
    steps = [(a, b) for a, b in zip(one, two, strict=True) if "lm_loss" in a]
    assert len(steps) == 6
    for a, b in steps:
        for key in ("loss", "lm_loss", "penalty"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-9), (a["step"], key)
        assert b["lr"] == a["lr"]  # one scheduler step per optimizer step, not per process
    refreshes = [(a, b) for a, b in zip(one, two, strict=True) if a.get("refresh")]
    assert len(refreshes) == 4  # steps 0, 2, 4 and the final one
    for a, b in refreshes:
        for variety, o in a["overlap"]["1"].items():
            for which in ("own", "reference"):
                got = b["overlap"]["1"][variety][which]
                assert got == pytest.approx(o[which], rel=1e-5, abs=1e-9)


def test_subspaces_and_adapter_match_one_process(runs) -> None:
    from safetensors.torch import load_file

    from vardecouple.subspace import Subspace

    states = [torch.load(runs[n] / "checkpoint" / "state.pt", weights_only=True) for n in (1, 2)]
    for part in ("subspaces", "reference"):
        a, b = (Subspace.from_state_dict(s["decoupler"][part]["1"]) for s in states)
        assert float(a.principal_angles(b).max()) <= 1.0
    assert len(states[1]["process_rng"]) == 2  # each process resumes its own RNG stream
    weights = [load_file(str(runs[n] / "adapter" / "adapter_model.safetensors")) for n in (1, 2)]
    for name, w in weights[0].items():
        scale = float(w.abs().max()) + 1e-12
        assert float((weights[1][name] - w).abs().max()) / scale < 1e-3, name
    moved = max(float(w.abs().max()) for n, w in weights[0].items() if "lora_B" in n)
    assert moved > 1e-4  # training changed the adapter (B starts at zero)


@pytest.fixture(scope="module")
def variational(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ddp-variational")
    out = {}
    for seed, processes in ((0, 1), (1, 1), (2, 1), (0, 2)):
        cfg = folder / f"s{seed}.toml"
        cfg.write_text(VARIATIONAL.replace("SEED", str(seed)))
        out[f"{seed}-{processes}"] = folder / f"s{seed}-p{processes}"
        _train(cfg, out[f"{seed}-{processes}"], processes)
    return out


def test_variational_training_stays_within_the_probe_seed_spread(variational) -> None:
    from vardecouple.subspace import Subspace

    def basis(key: str) -> Subspace:
        state = torch.load(variational[key] / "checkpoint" / "state.pt", weights_only=True)
        return Subspace.from_state_dict(state["decoupler"]["subspaces"]["1"])

    def penalties(key: str) -> torch.Tensor:
        return torch.tensor([r["penalty"] for r in _log(variational[key]) if "lm_loss" in r])

    one = basis("0-1")
    spread = max(float(one.principal_angles(basis(k)).max()) for k in ("1-1", "2-1"))
    two = float(one.principal_angles(basis("0-2")).max())
    assert two <= spread, (two, spread)
    pen_spread = max(float((penalties(k) - penalties("0-1")).abs().max()) for k in ("1-1", "2-1"))
    pen_two = float((penalties("0-2") - penalties("0-1")).abs().max())
    assert pen_two <= pen_spread, (pen_two, pen_spread)


@pytest.mark.parametrize("engine", ["FSDP", "DEEPSPEED"])
def test_sharding_engines_are_refused_with_one_clear_error(engine, tmp_path, monkeypatch) -> None:
    import accelerate
    from accelerate.utils import DistributedType

    import vardecouple.train.loop as loop
    from vardecouple.train.loop import train
    from vardecouple.train.step import TrainConfig

    class Sharding(accelerate.Accelerator):
        distributed_type = property(lambda self: DistributedType[engine])

    monkeypatch.setattr(loop, "Accelerator", Sharding)
    with pytest.raises(NotImplementedError, match=f"{engine} is not supported"):
        train(None, None, [], None, TrainConfig(), tmp_path / "out")  # type: ignore[arg-type]
    assert not (tmp_path / "out").exists()  # refused before writing anything


GEMMA = (
    CONFIG.replace('spec = "tiny-random"', 'spec = "gemma3-270m"')
    .replace("layers = [1]", "layers = [9]")
    .replace("steps = 6", "steps = 3")
    .replace("checkpoint_every = 3", "checkpoint_every = 0")
    .replace("max_train_examples = 300", "max_train_examples = 60")
    .replace("batch_size = 6", "batch_size = 4")
    .replace("lam = 1.0", "lam = 0.01")
)


@pytest.mark.slow
def test_two_processes_train_gemma_as_one_does(tmp_path) -> None:
    """gemma3-270m, German–Low German, 3 steps, mean-diff probe at layer 9: `torchrun` with
    2 processes logs the losses, penalties and overlaps of the 1-process run."""
    cfg = tmp_path / "gemma.toml"
    cfg.write_text(GEMMA)
    for n in (1, 2):
        _train(cfg, tmp_path / f"p{n}", n)
    one, two = _log(tmp_path / "p1"), _log(tmp_path / "p2")
    steps = [(a, b) for a, b in zip(one, two, strict=True) if "lm_loss" in a]
    assert len(steps) == 3
    for a, b in steps:
        assert b["lm_loss"] == pytest.approx(a["lm_loss"], rel=1e-4), a["step"]
        assert b["penalty"] == pytest.approx(a["penalty"], rel=1e-3), a["step"]
        assert b["tokens"] == a["tokens"]
    last = one[-1]["overlap"]["9"], two[-1]["overlap"]["9"]
    for variety, o in last[0].items():
        assert last[1][variety]["reference"] == pytest.approx(o["reference"], rel=1e-3)
