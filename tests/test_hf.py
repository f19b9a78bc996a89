"""The Hugging Face Trainer adapter: same penalty as the native loop, refreshes on schedule."""

from __future__ import annotations

import pytest
import torch

from conftest import CORPORA
from hf_parts import fresh as _fresh
from hf_parts import make_parts
from hf_parts import make_trainer as _trainer
from vardecouple.data import load_corpus
from vardecouple.decouple import OnlineDecoupler
from vardecouple.model.load import load_model
from vardecouple.model.lora import add_lora
from vardecouple.train.hf import add_decoupling
from vardecouple.train.step import collate, supervised_loss

pytestmark = pytest.mark.usefixtures("corpora")


@pytest.fixture(scope="module")
def parts():
    return make_parts()


def test_trainer_penalty_equals_the_native_loop_on_the_same_batch(parts, tmp_path) -> None:
    loaded, splits, features, config = parts
    decoupler = OnlineDecoupler(config, splits.probe, loaded.num_layers)
    decoupler.refresh(loaded.model, loaded.tokenizer, step=0)
    batch = collate(features[:4], loaded.tokenizer.pad_token_id)
    loaded.model.eval()  # no dropout either way
    _, hidden = supervised_loss(loaded.model, batch, decoupler.layers)
    mask = decoupler.token_mask(
        batch["attention_mask"], batch["target_mask"], batch["low_resource"]
    )
    native = decoupler.penalty(hidden, mask).item()

    trainer = _trainer(loaded, features, tmp_path, steps=1)
    callback = add_decoupling(trainer, decoupler)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels", "low_resource")}
    with torch.no_grad():
        loss = trainer.compute_loss(loaded.model, inputs)
    assert callback.penalties == [pytest.approx(native, rel=1e-6)]
    full = loaded.model(**{k: inputs[k] for k in ("input_ids", "attention_mask", "labels")}).loss
    assert loss.item() == pytest.approx(full.item() + 0.7 * native, rel=1e-5)


def test_trainer_runs_refreshes_on_schedule(parts, tmp_path) -> None:
    loaded, splits, features, config = parts
    decoupler = OnlineDecoupler(config, splits.probe, loaded.num_layers)
    trainer = _trainer(loaded, features, tmp_path, steps=7)
    callback = add_decoupling(trainer, decoupler)
    trainer.train()
    assert [r["step"] for r in callback.refreshes] == [0, 3, 6]
    assert len(callback.penalties) == 7 and all(p > 0 for p in callback.penalties)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses and all(torch.isfinite(torch.tensor(losses)))


def test_a_resumed_trainer_run_continues_the_decoupler_exactly(parts, tmp_path) -> None:
    """A Trainer run that crashes after its step-4 checkpoint and is resumed from it logs
    the same penalties and refreshes as an uninterrupted run and ends with the same LoRA
    weights, bit for bit (the decoupler's state travels in the checkpoint)."""
    from transformers import TrainerCallback

    features = parts[2]
    loaded, decoupler = _fresh(parts)
    whole = _trainer(loaded, features, tmp_path / "whole", steps=10, save_steps=4)
    want = add_decoupling(whole, decoupler)
    whole.train()

    class Crash(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 6:
                raise RuntimeError("crash after the step-4 checkpoint")

    loaded, decoupler = _fresh(parts)
    cut = _trainer(loaded, features, tmp_path / "cut", steps=10, save_steps=4)
    add_decoupling(cut, decoupler)
    cut.add_callback(Crash())
    with pytest.raises(RuntimeError, match="crash"):
        cut.train()
    checkpoint = tmp_path / "cut" / "checkpoint-4"
    assert (checkpoint / "decoupler.safetensors").is_file()
    assert (checkpoint / "decoupler.json").is_file()

    loaded, decoupler = _fresh(parts)  # a new process: nothing of the first attempt
    again = _trainer(loaded, features, tmp_path / "cut", steps=10, save_steps=4)
    got = add_decoupling(again, decoupler)
    again.train(resume_from_checkpoint=str(checkpoint))
    assert got.penalties == want.penalties[4:]
    assert [r["step"] for r in got.refreshes] == [6, 9]
    assert got.refreshes == [r for r in want.refreshes if r["step"] > 4]
    final = {k: v for k, v in whole.model.state_dict().items() if "lora" in k}
    for key, value in again.model.state_dict().items():
        if "lora" in key:
            assert torch.equal(value, final[key]), key


def test_a_resume_without_decoupler_state_is_refused(parts, tmp_path) -> None:
    features = parts[2]
    loaded, _ = _fresh(parts)
    plain = _trainer(loaded, features, tmp_path, steps=4, save_steps=4)
    plain.train()  # no decoupling: the checkpoint has no decoupler files
    loaded, decoupler = _fresh(parts)
    trainer = _trainer(loaded, features, tmp_path, steps=6, save_steps=4)
    add_decoupling(trainer, decoupler)
    with pytest.raises(ValueError, match="holds no decoupler state"):
        trainer.train(resume_from_checkpoint=True)


def test_penalties_and_refreshes_reach_the_trainer_logs(parts, tmp_path) -> None:
    """What every ``report_to`` backend receives: the Trainer's log history holds the
    penalty and λ in each training record, and every refresh's overlaps and angles."""
    features = parts[2]
    loaded, decoupler = _fresh(parts)
    trainer = _trainer(loaded, features, tmp_path, steps=4)
    callback = add_decoupling(trainer, decoupler)
    trainer.train()
    history = trainer.state.log_history
    records = [h for h in history if "loss" in h]
    assert [h["decoupling/penalty"] for h in records] == pytest.approx(callback.penalties)
    assert all(h["decoupling/lambda"] == pytest.approx(0.7) for h in records)
    refreshes = [h for h in history if any(k.startswith("decoupling/overlap/") for k in h)]
    assert len(refreshes) == len(callback.refreshes) == 2  # steps 0 and 3
    for logged, record in zip(refreshes, callback.refreshes, strict=True):
        for layer, per in record["overlap"].items():
            for variety, pair in per.items():
                for which, value in pair.items():
                    assert logged[f"decoupling/overlap/{layer}/{variety}/{which}"] == value
    assert "decoupling/angle_to_previous/" + str(decoupler.layers[0]) in refreshes[1]


def test_a_bf16_base_model_trains_with_decoupling_and_fp32_subspaces(parts, tmp_path) -> None:
    """The CPU reading of QLoRA: a bf16 base model (the LoRA weights stay fp32) through the
    Trainer integration. Refreshes and the penalty run; the subspaces, their statistics
    and the penalty are fp32 whatever the states' dtype."""
    _, splits, features, config = parts
    corpus = load_corpus(CORPORA / "tatoeba-deu-nds")
    loaded = load_model(
        "tiny-random",
        corpus_texts=[t for r in corpus.rows[:2000] for t in r.values()],
        dtype=torch.bfloat16,
    )
    add_lora(loaded, r=4, alpha=8)
    params = dict(loaded.model.named_parameters())
    assert {p.dtype for n, p in params.items() if "lora_" not in n} == {torch.bfloat16}
    assert {p.dtype for n, p in params.items() if "lora_" in n} == {torch.float32}
    decoupler = OnlineDecoupler(config, splits.probe, loaded.num_layers)
    trainer = _trainer(loaded, features, tmp_path, steps=4)
    callback = add_decoupling(trainer, decoupler)
    trainer.train()
    assert [r["step"] for r in callback.refreshes] == [0, 3]
    assert len(callback.penalties) == 4 and all(p > 0 for p in callback.penalties)
    for subspace in decoupler.subspaces.values():
        assert subspace.basis.dtype == torch.float32 and subspace.center.dtype == torch.float32
    batch = collate(features[:4], loaded.tokenizer.pad_token_id)
    _, hidden = supervised_loss(loaded.model, batch, decoupler.layers)
    assert hidden[decoupler.layers[0]].dtype == torch.bfloat16
    mask = decoupler.token_mask(
        batch["attention_mask"], batch["target_mask"], batch["low_resource"]
    )
    assert decoupler.penalty(hidden, mask).dtype == torch.float32
