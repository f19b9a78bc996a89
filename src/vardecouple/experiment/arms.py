"""One arm of an experiment: the config's data → model → LoRA → decoupler → trained adapter.

:func:`prepare_data` loads and splits the corpora the config names; :func:`load_base`
loads the config's model without adapters; :func:`train_arm` fine-tunes one arm with
one seed into an output folder (resumable) and saves the adapter there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from vardecouple.data import Splits, format_example, load_corpus, make_splits, tokenize_example
from vardecouple.decouple import OnlineDecoupler
from vardecouple.experiment.config import ExperimentConfig, matches_recorded
from vardecouple.io import sha256_file, write_dir_atomic, write_json_atomic, write_text_atomic
from vardecouple.model.load import load_model
from vardecouple.model.lora import add_lora
from vardecouple.probes.artifact import save_subspaces
from vardecouple.train.loop import train

__all__ = [
    "check_fits",
    "load_base",
    "prepare_data",
    "tokenized_features",
    "train_arm",
    "train_state",
]


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

    # a folder started under an older default keeps it (its config.json names it)
    config = config.with_recorded_defaults(out_dir)
    # every check that can fail on user input runs before the first byte is written
    decoupler_config = config.decoupler_config(arm, seed=seed, match_penalty=match_penalty)
    splits = splits or prepare_data(config)  # the corpora's checks before the folder's
    out = Path(out_dir)
    train_state(config, arm, seed, out)  # a run of another config, arm or seed: refused
    if (out / "train_summary.json").exists():  # before any loading
        raise FileExistsError(f"train: {out} holds a finished run; choose another output folder")
    if not resume and (out / "train_log.jsonl").exists():
        raise FileExistsError(f"train: {out} holds a started run; pass --resume to continue it")
    resolved = _recorded(config, arm, seed)
    saved = out / "config.json"
    # under torchrun / accelerate launch: join the process group before the decoupler
    # is built (it shards its probe rows); only the main process writes files

    processes = PartialState(cpu=not torch.cuda.is_available())
    loaded = load_base(config, splits)
    check_fits(config, loaded, [arm])
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
        write_json_atomic(saved, resolved)
        write_text_atomic(out / "splits.txt", splits.describe() + "\n")
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
        write_dir_atomic(out / "adapter", loaded.model.save_pretrained)
        save_subspaces(
            out / "subspace",
            decoupler.subspaces,
            subspace_info(config, arm, seed, decoupler, loaded, splits, summary["steps"]),
            reference=decoupler.reference,
        )
    processes.wait_for_everyone()
    return summary, loaded


def subspace_info(
    config: ExperimentConfig,
    arm: str,
    seed: int,
    decoupler: OnlineDecoupler,
    loaded: Any,
    splits: Splits,
    step: int,
) -> dict[str, Any]:
    """What ``subspace/subspace.json`` records beside a trained arm's final subspaces:
    the estimator, the model they were fitted on (its base weights' SHA-256; the adapter
    beside), and the probe rows they were fitted from."""
    d = decoupler.config
    source = Path(loaded.source)
    weights = sorted(source.glob("*.safetensors")) if source.is_dir() else [source]
    probe = "\n".join(f"{s.variety}\t{s.text}" for s in splits.probe)
    return {
        "estimator": d.estimator,
        "estimator_options": d.estimator_options,
        "reference_estimator": d.reference_estimator,
        "rank": d.rank,
        "step": step,
        "arm": arm,
        "seed": seed,
        "model": config.model.spec,
        "model_sha256": ",".join(sha256_file(w) for w in weights if w.is_file()) or None,
        "adapter": "../adapter",
        "corpora": [c.model_dump() for c in config.data.corpora],
        "probe_rows": len(splits.probe),
        "probe_sha256": hashlib.sha256(probe.encode("utf-8")).hexdigest(),
    }


def train_state(config: ExperimentConfig, arm: str, seed: int, out_dir: str | Path) -> str:
    """``new``, ``partial`` or ``finished`` for this config, arm and seed in ``out_dir``;
    a training folder of another config, arm or seed raises :class:`FileExistsError`."""
    out = Path(out_dir)
    saved = out / "config.json"
    if not saved.is_file():
        return "new"
    try:
        before = json.loads(saved.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        before = {}
    ignore = ("source", "data_root")  # where the config lies does not change the run
    now = _recorded(config, arm, seed)
    if not matches_recorded(
        {k: v for k, v in before.items() if k not in ignore},
        {k: v for k, v in now.items() if k not in ignore},
    ):
        raise FileExistsError(
            f"train: {out} holds a run of a different config, arm or seed ({saved} differs); "
            "choose another --out"
        )
    return "finished" if (out / "train_summary.json").is_file() else "partial"


def _recorded(config: ExperimentConfig, arm: str, seed: int) -> dict[str, Any]:
    """The config as a training folder records it (``config.json``): absolute paths."""
    record = config.model_dump() | {"source": str(Path(config.source).resolve())}
    return json.loads(json.dumps(record | {"arm": arm, "seed": seed}, default=str))


def check_fits(config: ExperimentConfig, loaded: Any, arms: list[str] | None = None) -> None:
    """Every arm's layers lie in the model and its ranks fit the hidden size (one line)."""
    n, d = loaded.num_layers, loaded.hidden_size
    for arm in config.arms if arms is None else arms:
        s = config.arm(arm)
        if s.kind not in ("train", "erase"):
            continue

        def key(name: str, arm: str = arm) -> str:  # as the file has it: the arm's or [decoupler]'s
            own = name in config.arms[arm]
            return f"config {config.source}: '{'arms.' + arm if own else 'decoupler'}.{name}'"

        bad = [i for i in (s.layers or []) if not 0 <= i < n]
        if bad:
            raise ValueError(f"{key('layers')}: {bad} out of range; {config.model.spec} "
                             f"has layers 0..{n - 1}")  # fmt: skip
        for name in ("rank", "reference_rank"):
            if getattr(s, name) > d:
                raise ValueError(f"{key(name)}: {getattr(s, name)} exceeds the hidden size "
                                 f"{d} of {config.model.spec}")  # fmt: skip


def load_base(config: ExperimentConfig, splits: Splits) -> Any:
    """The config's model without adapters (``tiny-random`` builds its tokenizer on the data)."""

    return load_model(
        config.model.spec,
        corpus_texts=_corpus_texts(splits) if config.model.spec == "tiny-random" else None,
        dtype=getattr(torch, config.model.dtype),
        trust_remote_code=config.model.trust_remote_code,
    )
