"""What every arm × seed of a run shares: splits, test sets, the variety identifier,
decoding settings, the loaded base model; and the checks of a run's inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel

from vardecouple.data import Splits
from vardecouple.evaluate.decode import DecodeConfig
from vardecouple.evaluate.scoring import (
    require_comet,
    target_shortlists,
    test_sets,
    train_identifier,
)
from vardecouple.experiment.arms import (
    check_fits,
    load_base,
    prepare_data,
)
from vardecouple.experiment.config import ExperimentConfig

__all__ = ["adapter_dir", "check_inputs", "decode_config", "has_adapter"]


def check_inputs(config: ExperimentConfig, *, load: bool = True) -> RunContext:
    """Every check of a run that can fail on user input, before anything is written:
    the corpora and splits, the COMET checkpoint and package, and (``load``) the model,
    its layers and ranks. Returns the run's shared context (splits, test sets, variety
    identifier; the loaded base model when ``load``)."""
    comet_checkpoint(config, check_package=True)
    context = make_context(config, Path())
    if load:
        context.base = load_base(config, context.splits)
        check_fits(config, context.base)
    return context


def comet_checkpoint(config: ExperimentConfig, check_package: bool = False) -> Path | None:
    """The COMET checkpoint of ``eval.comet``, relative to the config's folder; checked
    (and, with ``check_package``, that the COMET package is installed)."""
    if config.eval.comet is None:
        return None
    path = (Path(config.data_root) / config.eval.comet).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"config {config.source}: eval.comet: no checkpoint file {path}")
    if check_package:
        require_comet()
    return path


def adapter_dir(config: ExperimentConfig, run_dir: Path) -> Path:
    """The adapter a trained arm × seed is evaluated with (``best-adapter/`` under
    ``eval.checkpoint = "best-dev"``)."""
    return run_dir / ("best-adapter" if config.eval.checkpoint == "best-dev" else "adapter")


def has_adapter(config: ExperimentConfig, run_dir: Path) -> bool:
    """Whether that adapter is on disk (a committed run folder keeps none)."""
    return (adapter_dir(config, run_dir) / "adapter_config.json").is_file()


def load_trained(config: ExperimentConfig, splits: Splits, run_dir: Path) -> tuple[Any, Any]:
    """The base model with the arm's evaluated adapter (final or best on dev) loaded."""

    adapter = adapter_dir(config, run_dir)
    if not has_adapter(config, run_dir):
        raise FileNotFoundError(f"run: {adapter} is missing; train the arm again")
    loaded = load_base(config, splits)
    return PeftModel.from_pretrained(loaded.model, adapter), loaded.tokenizer


@dataclass
class RunContext:
    """What every (arm, seed) of a run shares."""

    config: ExperimentConfig
    out: Path
    splits: Splits
    tests: dict[str, list]
    identifier: Any
    identifier_info: dict[str, Any]
    decoding: Any
    progress: bool
    base: Any = None


def make_context(config: ExperimentConfig, out: Path) -> RunContext:
    """A worker's context, rebuilt from the config (deterministic: same splits)."""

    splits = prepare_data(config)
    tests = test_sets(splits, config.eval.max_examples, config.eval_directions())
    identifier, info = train_identifier(splits, tests, seed=config.data.seed)
    decoding = decode_config(config)
    return RunContext(config, out, splits, tests, identifier, info, decoding, progress=False)


def decode_config(config: ExperimentConfig) -> Any:
    """The decoding settings of ``[eval]``."""

    ev = config.eval
    slots = 64 if torch.cuda.is_available() else 32  # see EvalSection.batch_size
    return DecodeConfig(
        batch_size=ev.batch_size or slots,
        length_ratio=ev.length_ratio,
        max_new_tokens=ev.max_new_tokens,
        num_beams=ev.num_beams,
        continuous=ev.continuous,
        lookup_tokens=ev.lookup_tokens,
        dtype=ev.dtype,
    )


def shortlists_for(config: ExperimentConfig, splits: Splits, tokenizer: Any, tests: Any) -> Any:
    """``[eval] shortlist``'s token sets per test direction (None when off)."""

    if config.eval.shortlist == "off":
        return None
    return target_shortlists(tokenizer, splits.train, tests, config.data.template)
