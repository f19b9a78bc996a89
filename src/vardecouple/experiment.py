"""From a config to trained arms: data → model → decoupler → training loop.

:func:`prepare_data` loads and splits the corpora the config names;
:func:`train_arm` fine-tunes one arm with one seed into an output folder (resumable)
and saves the adapter there.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from vardecouple.config import ExperimentConfig
from vardecouple.data import Splits, format_example, load_corpus, make_splits, tokenize_example

__all__ = ["prepare_data", "tokenized_features", "train_arm"]


def prepare_data(config: ExperimentConfig) -> Splits:
    """Load every corpus of ``[data]`` in place and make the de-duplicated splits."""
    d = config.data
    corpora = [
        load_corpus(config.resolve(c.path), format=c.format, split=c.split, varieties=c.varieties)
        for c in d.corpora
    ]
    tests = [
        load_corpus(config.resolve(c.path), format=c.format, split=c.split, varieties=c.varieties)
        for c in d.test_corpora
    ]
    return make_splits(
        corpora,
        standard=d.standard,
        varieties=d.varieties,
        directions=d.directions,
        pivot=d.pivot,
        dev_rows=d.dev_rows,
        probe_rows=d.probe_rows,
        test_rows=d.test_rows,
        test_corpora=tests,
        seed=d.seed,
    )


def tokenized_features(config: ExperimentConfig, splits: Splits, tokenizer: Any) -> list[dict]:
    """Prompt-formatted, tokenized training examples (loss on target tokens only)."""
    examples = splits.train
    if config.data.max_train_examples is not None:
        examples = examples[: config.data.max_train_examples]
    features = []
    for ex in examples:
        prompt, target = format_example(ex, config.data.template, tokenizer)
        f = tokenize_example(tokenizer, prompt, target, max_length=config.data.max_length)
        f["low_resource"] = ex.tgt != config.data.standard
        features.append(f)
    return features


def _corpus_texts(splits: Splits) -> list[str]:
    texts = [t for ex in splits.train for t in (ex.src_text, ex.tgt_text)]
    return texts + [s.text for s in splits.probe]


def train_arm(
    config: ExperimentConfig,
    arm: str,
    out_dir: str | Path,
    *,
    seed: int = 0,
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train arm ``arm`` with ``seed``; writes the log, summary and ``adapter/`` to ``out_dir``."""
    from vardecouple.decouple import OnlineDecoupler
    from vardecouple.model import add_lora, load_model
    from vardecouple.train import train

    decoupler_config = config.decoupler_config(arm, seed=seed)  # fails early on a bad arm
    out = Path(out_dir)
    if (out / "train_summary.json").exists():  # before any loading
        raise FileExistsError(f"train: {out} holds a finished run; choose another output folder")
    if not resume and (out / "train_log.jsonl").exists():
        raise FileExistsError(f"train: {out} holds a started run; pass --resume to continue it")
    splits = prepare_data(config)
    dtype = getattr(torch, config.model.dtype)
    loaded = load_model(
        config.model.spec,
        corpus_texts=_corpus_texts(splits) if config.model.spec == "tiny-random" else None,
        dtype=dtype,
        trust_remote_code=config.model.trust_remote_code,
    )
    lora = config.lora
    add_lora(
        loaded,
        r=lora.r,
        alpha=lora.alpha,
        dropout=lora.dropout,
        target_modules=lora.target_modules,
        seed=seed,
    )
    features = tokenized_features(config, splits, loaded.tokenizer)
    decoupler = OnlineDecoupler(decoupler_config, splits.probe, loaded.num_layers)
    out.mkdir(parents=True, exist_ok=True)
    resolved = config.model_dump() | {"arm": arm, "seed": seed}
    (out / "config.json").write_text(json.dumps(resolved, indent=1, default=str))
    (out / "splits.txt").write_text(splits.describe() + "\n")
    summary = train(
        loaded.model,
        loaded.tokenizer,
        features,
        decoupler,
        config.train_config(seed),
        out,
        progress=progress,
        resume=resume,
    )
    tmp = out / ".adapter.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    loaded.model.save_pretrained(tmp)
    if (out / "adapter").exists():
        shutil.rmtree(out / "adapter")
    os.replace(tmp, out / "adapter")
    return summary
