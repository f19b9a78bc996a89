"""What the Trainer tests share (``test_hf``, ``test_tracking``): a tiny-random model with
LoRA and German–Low German features, a Trainer around it, and the same model afresh."""

from __future__ import annotations

from pathlib import Path

from conftest import CORPORA
from vardecouple.data import format_example, load_corpus, make_splits, tokenize_example
from vardecouple.decouple import DecouplerConfig, OnlineDecoupler
from vardecouple.model.load import load_model
from vardecouple.model.lora import add_lora


def make_parts():
    """(loaded model with LoRA, splits, 64 tokenized training features, decoupler config)."""
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


def make_trainer(loaded, features, tmp_path: Path, steps: int, save_steps: int = 0):
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    rows = [{k: f[k] for k in ("input_ids", "labels", "low_resource")} for f in features]
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=steps,
        learning_rate=1e-3,
        report_to=[],
        use_cpu=True,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
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


def fresh(parts):
    """The fixture's model as it was before any training: same seed, same LoRA init."""
    _, splits, _, config = parts
    corpus = load_corpus(CORPORA / "tatoeba-deu-nds")
    loaded = load_model(
        "tiny-random", corpus_texts=[t for r in corpus.rows[:2000] for t in r.values()]
    )
    add_lora(loaded, r=4, alpha=8)
    return loaded, OnlineDecoupler(config, splits.probe, loaded.num_layers)
