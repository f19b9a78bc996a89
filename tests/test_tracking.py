"""Where researchers look: the method's numbers in TensorBoard, from the native loop and
from a Hugging Face Trainer script; and TRL's SFTTrainer with add_decoupling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import MINI_CONFIG
from hf_parts import fresh as _fresh
from hf_parts import make_parts
from hf_parts import make_trainer as _trainer
from vardecouple.cli import main
from vardecouple.decouple import OnlineDecoupler
from vardecouple.train.hf import add_decoupling
from vardecouple.train.step import collate, supervised_loss

pytestmark = pytest.mark.usefixtures("corpora")


def _scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the TensorBoard event files under ``folder``: tag -> (step, value)."""
    out: dict[str, list[tuple[int, float]]] = {}
    for events in sorted({p.parent for p in folder.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out


def test_the_native_loop_sends_its_log_to_tensorboard(tmp_path: Path) -> None:
    """``[train] report_to = ["tensorboard"]``: every step's penalty, λ and loss and every
    refresh's overlaps arrive in TensorBoard's event files with the values and steps of
    ``train_log.jsonl`` (read back with TensorBoard's own reader)."""
    config = MINI_CONFIG.replace("[train]\n", '[train]\nreport_to = ["tensorboard"]\n', 1)
    (tmp_path / "c.toml").write_text(config)
    run = tmp_path / "run"
    assert main(["train", str(tmp_path / "c.toml"), "--arm", "decoupled", "--out", str(run)]) == 0
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    scalars = _scalars(run / "logs")
    steps = [r for r in log if "penalty" in r]
    assert len(steps) == 4
    for tag in ("penalty", "lambda", "lm_loss"):
        got = scalars[tag]
        assert [s for s, _ in got] == [r["step"] for r in steps], tag
        assert [v for _, v in got] == pytest.approx([r[tag] for r in steps], rel=1e-6), tag
    refreshes = [r for r in log if r.get("refresh")]
    assert len(refreshes) == 3  # steps 0, 2 and the final one
    for record in refreshes:
        for variety, pair in record["overlap"]["1"].items():
            got = dict(scalars[f"decoupling/overlap/1/{variety}/own"])
            assert got[record["step"]] == pytest.approx(pair["own"], rel=1e-6)


def test_an_unknown_tracker_is_one_config_error(tmp_path: Path, capsys) -> None:
    config = MINI_CONFIG.replace("[train]\n", '[train]\nreport_to = ["tensorbored"]\n', 1)
    (tmp_path / "c.toml").write_text(config)
    code = main(
        ["train", str(tmp_path / "c.toml"), "--arm", "decoupled", "--out", str(tmp_path / "o")]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "report_to" in err[0], err
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def parts():
    return make_parts()


def test_a_trainer_script_with_report_to_tensorboard_gets_the_penalty(parts, tmp_path) -> None:
    features = parts[2]
    loaded, decoupler = _fresh(parts)
    trainer = _trainer(loaded, features, tmp_path, steps=4)
    trainer.args.report_to = ["tensorboard"]
    from transformers.integrations import TensorBoardCallback

    trainer.add_callback(TensorBoardCallback())
    callback = add_decoupling(trainer, decoupler)
    trainer.train()
    scalars = _scalars(tmp_path)  # the Trainer's default: OUTPUT_DIR/runs/…
    assert "train/decoupling/penalty" in scalars, sorted(scalars)
    got = scalars["train/decoupling/penalty"]
    assert [s for s, _ in got] == [1, 2, 3, 4]
    assert [v for _, v in got] == pytest.approx(callback.penalties, rel=1e-6)
    assert any(t.startswith("train/decoupling/overlap/") for t in scalars)


def test_sft_trainer_penalty_equals_the_native_loop_on_the_same_batch(parts, tmp_path) -> None:
    """TRL's SFTTrainer takes the same two lines: on one batch its penalty is the native
    loop's, and a few training steps run with refreshes on schedule."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    _, splits, features, config = parts
    loaded, decoupler = _fresh(parts)
    decoupler.refresh(loaded.model, loaded.tokenizer, step=0)
    batch = collate(features[:4], loaded.tokenizer.pad_token_id)
    loaded.model.eval()
    _, hidden = supervised_loss(loaded.model, batch, decoupler.layers)
    mask = decoupler.token_mask(
        batch["attention_mask"], batch["target_mask"], batch["low_resource"]
    )
    native = decoupler.penalty(hidden, mask).item()

    rows = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
    args = SFTConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=3,
        learning_rate=1e-3, report_to=[], use_cpu=True, save_strategy="no",
        logging_steps=1, disable_tqdm=True, max_length=None,
        bf16=False,  # TRL defaults to bf16, and accelerate's state is one per process
    )  # fmt: skip
    trainer = SFTTrainer(
        model=loaded.model, args=args, train_dataset=Dataset.from_list(rows),
        processing_class=loaded.tokenizer,
    )  # fmt: skip
    callback = add_decoupling(trainer, decoupler)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "low_resource")}
    with torch.no_grad():
        trainer.compute_loss(loaded.model, inputs)
    assert callback.penalties == [pytest.approx(native, rel=1e-6)]
    fresh = OnlineDecoupler(config, splits.probe, loaded.num_layers)
    trainer2 = SFTTrainer(
        model=loaded.model, args=args, train_dataset=Dataset.from_list(rows),
        processing_class=loaded.tokenizer,
    )  # fmt: skip
    log = add_decoupling(trainer2, fresh)
    trainer2.train()
    assert [r["step"] for r in log.refreshes] == [0] and len(log.penalties) == 3
    assert all(p > 0 for p in log.penalties)


def test_a_resumed_native_run_logs_each_step_once_to_tensorboard(tmp_path: Path) -> None:
    """A run killed after its step-4 checkpoint (at the step-6 refresh) and resumed: the
    event files (both sittings' files, read together as TensorBoard reads them) hold each
    step once, with the values of the resumed run's train_log.jsonl."""
    import os
    import subprocess
    import sys

    config = (
        MINI_CONFIG.replace("[train]\n", '[train]\nreport_to = ["tensorboard"]\n', 1)
        .replace("steps = 4", "steps = 8")
        .replace("checkpoint_every = 2", "checkpoint_every = 4")
        .replace("refresh_every = 2", "refresh_every = 3")
    )
    (tmp_path / "c.toml").write_text(config)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "vardecouple", "train", str(tmp_path / "c.toml"),
           "--arm", "decoupled", "--out", str(run)]  # fmt: skip
    env = os.environ | {"VARDECOUPLE_FAULT": "refresh:3", "OMP_NUM_THREADS": "1"}
    crashed = subprocess.run(cmd, env=env, capture_output=True, check=False)
    assert crashed.returncode != 0 and not (run / "train_summary.json").exists()
    before = _scalars(run / "logs")["penalty"]
    assert [s for s, _ in before] == [0, 1, 2, 3, 4, 5]  # steps 4, 5 are past the checkpoint
    env.pop("VARDECOUPLE_FAULT")
    resumed = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, check=False)
    assert resumed.returncode == 0, resumed.stderr.decode()[-2000:]
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "penalty" in r]
    got = _scalars(run / "logs")["penalty"]
    assert [s for s, _ in got] == list(range(8)) == [r["step"] for r in steps]
    assert [v for _, v in got] == pytest.approx([r["penalty"] for r in steps], rel=1e-6)
