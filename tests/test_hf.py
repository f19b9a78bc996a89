"""The Hugging Face Trainer adapter: same penalty as the native loop, refreshes on schedule."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import CORPORA
from vardecouple.data import format_example, load_corpus, make_splits, tokenize_example
from vardecouple.decouple import DecouplerConfig, OnlineDecoupler
from vardecouple.model.load import load_model
from vardecouple.model.lora import add_lora
from vardecouple.train.hf import add_decoupling
from vardecouple.train.step import collate, supervised_loss

pytestmark = pytest.mark.usefixtures("corpora")


@pytest.fixture(scope="module")
def parts():
    corpus = load_corpus(CORPORA / "tatoeba-deu-nds")
    splits = make_splits(
        [corpus],
        standard="deu_Latn",
        varieties=["nds_Latn"],
        directions="standard<->variety",
        dev_rows=10,
        probe_rows=80,
        seed=0,
    )
    loaded = load_model(
        "tiny-random", corpus_texts=[t for r in corpus.rows[:2000] for t in r.values()]
    )
    add_lora(loaded, r=4, alpha=8)
    features = []
    for ex in splits.train[:64]:
        f = tokenize_example(loaded.tokenizer, *format_example(ex), max_length=64)
        f["low_resource"] = ex.tgt != "deu_Latn"
        features.append(f)
    config = DecouplerConfig(
        refresh_every=3,
        lam=0.7,
        tokens="target",
    )
    return loaded, splits, features, config


def _trainer(loaded, features, tmp_path: Path, steps: int):
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    rows = [{k: f[k] for k in ("input_ids", "labels", "low_resource")} for f in features]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=steps,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    collator = DataCollatorForSeq2Seq(loaded.tokenizer, label_pad_token_id=-100)
    return Trainer(
        model=loaded.model,
        args=args,
        train_dataset=rows,
        data_collator=collator,
        processing_class=loaded.tokenizer,
    )


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
