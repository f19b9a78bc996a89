"""One arm of an experiment: the config's data → model → LoRA → decoupler → trained adapter.

:func:`prepare_data` loads and splits the corpora the config names; :func:`load_base`
loads the config's model without adapters; :func:`train_arm` fine-tunes one arm with
one seed into an output folder (resumable) and saves the adapter there.
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

__all__ = ["load_base", "prepare_data", "tokenized_features", "train_arm"]


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


def tokenized_features(
    config: ExperimentConfig, splits: Splits, tokenizer: Any, examples: list | None = None
) -> list[dict]:
    """Prompt-formatted, tokenized training examples (loss on target tokens only)."""
    if examples is None and config.data.max_train_examples is not None:
        examples = splits.train[: config.data.max_train_examples]
    examples = splits.train if examples is None else examples
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
    match_penalty: float | None = None,
    splits: Splits | None = None,
) -> tuple[dict[str, Any], Any]:
    """Train arm ``arm`` with ``seed``; writes the log, summary and ``adapter/`` to ``out_dir``.

    Returns the training summary and the :class:`~vardecouple.model.LoadedModel` (its
    model now the trained peft model). ``match_penalty``: λ·L(step 0) to match.
    """
    from vardecouple.decouple import OnlineDecoupler
    from vardecouple.model import add_lora
    from vardecouple.train import train

    # fails early on a bad arm
    decoupler_config = config.decoupler_config(arm, seed=seed, match_penalty=match_penalty)
    out = Path(out_dir)
    if (out / "train_summary.json").exists():  # before any loading
        raise FileExistsError(f"train: {out} holds a finished run; choose another output folder")
    if not resume and (out / "train_log.jsonl").exists():
        raise FileExistsError(f"train: {out} holds a started run; pass --resume to continue it")
    # under torchrun / accelerate launch: join the process group before the decoupler
    # is built (it shards its probe rows); only the main process writes files
    from accelerate import PartialState

    processes = PartialState(cpu=not torch.cuda.is_available())
    splits = splits or prepare_data(config)
    loaded = load_base(config, splits)
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
    dev = None
    if config.eval.checkpoint == "best-dev":
        if not splits.dev:
            raise ValueError("eval.checkpoint = 'best-dev' needs a dev split (data.dev_rows > 0)")
        dev = tokenized_features(config, splits, loaded.tokenizer, examples=splits.dev)
    decoupler = OnlineDecoupler(decoupler_config, splits.probe, loaded.num_layers)
    out.mkdir(parents=True, exist_ok=True)
    if processes.is_main_process:
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
        dev_features=dev,
    )
    if processes.is_main_process:
        tmp = out / ".adapter.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        loaded.model.save_pretrained(tmp)
        if (out / "adapter").exists():
            shutil.rmtree(out / "adapter")
        os.replace(tmp, out / "adapter")
    processes.wait_for_everyone()
    return summary, loaded


def load_base(config: ExperimentConfig, splits: Splits) -> Any:
    """The config's model without adapters (``tiny-random`` builds its tokenizer on the data)."""
    from vardecouple.model import load_model

    return load_model(
        config.model.spec,
        corpus_texts=_corpus_texts(splits) if config.model.spec == "tiny-random" else None,
        dtype=getattr(torch, config.model.dtype),
        trust_remote_code=config.model.trust_remote_code,
    )
