"""The sections of an experiment's TOML config, validated with pydantic: ``[data]``,
``[model]``, ``[lora]``, ``[train]``, ``[decoupler]``, ``[arms.NAME]``, ``[eval]``, ``[probe]``.

``[train]`` and ``[decoupler]`` take their defaults from the library's own
:class:`~vardecouple.train.step.TrainConfig` and
:class:`~vardecouple.decouple.DecouplerConfig`: each default is declared once, there.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from vardecouple.decouple import DecouplerConfig, PenaltyForm, TokenRule
from vardecouple.probes import check_estimator
from vardecouple.train.step import Tracker, TrainConfig

__all__ = [
    "ArmKind",
    "ArmSection",
    "CorpusRef",
    "DataSection",
    "DecouplerSection",
    "EvalSection",
    "LoraSection",
    "ModelSection",
    "ProbeSection",
    "StrictSection",
    "TrainSection",
]


class StrictSection(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CorpusRef(StrictSection):
    path: str
    split: str | None = None
    format: Literal["auto", "lines", "flores", "madar", "tsv", "jsonl"] = "auto"
    varieties: list[str] | None = None


class DataSection(StrictSection):
    root: str = "."
    corpora: list[CorpusRef]
    test_corpora: list[CorpusRef] = Field(default_factory=list)
    standard: str
    varieties: list[str]
    pivot: str | None = None
    directions: str | list[str] = "standard<->variety"
    dev_rows: int = Field(50, ge=0)
    probe_rows: int = Field(100, ge=1)
    test_rows: int = Field(0, ge=0)
    max_train_examples: int | None = Field(None, ge=1)
    template: Literal["plain", "chat"] = "plain"
    max_length: int = Field(128, ge=8)
    seed: int = 0
    note: str = ""


class ModelSection(StrictSection):
    spec: str
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False


class LoraSection(StrictSection):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


_TRAIN, _DECOUPLER = TrainConfig(), DecouplerConfig()


class TrainSection(StrictSection):
    """``[train]``: :class:`TrainConfig`'s fields (its defaults, declared there) + ``seeds``."""

    steps: int = Field(_TRAIN.steps, ge=1)
    batch_size: int = Field(_TRAIN.batch_size, ge=1)
    grad_accum: int = Field(_TRAIN.grad_accum, ge=1)
    lr: float = Field(_TRAIN.lr, gt=0)
    schedule: Literal["constant", "cosine"] = _TRAIN.schedule
    warmup_steps: int = Field(_TRAIN.warmup_steps, ge=0)
    weight_decay: float = Field(_TRAIN.weight_decay, ge=0)
    max_grad_norm: float = Field(_TRAIN.max_grad_norm, ge=0)
    checkpoint_every: int = Field(_TRAIN.checkpoint_every, ge=0)
    trim_vocab: bool = _TRAIN.trim_vocab
    dtype: Literal["fp32", "bf16"] | None = _TRAIN.dtype
    report_to: list[Tracker] = Field(default_factory=lambda: list(_TRAIN.report_to))
    seeds: list[int] = Field(default_factory=lambda: [0])


class DecouplerSection(StrictSection):
    """``[decoupler]``: :class:`DecouplerConfig`'s fields and defaults (declared there)."""

    estimator: str = _DECOUPLER.estimator
    rank: int = Field(_DECOUPLER.rank, ge=1)
    estimator_options: dict[str, Any] = Field(default_factory=dict)
    reference_estimator: str = _DECOUPLER.reference_estimator
    reference_rank: int = Field(_DECOUPLER.reference_rank, ge=1)
    layers: list[int] | None = None
    refresh_every: int = Field(_DECOUPLER.refresh_every, ge=1)
    form: PenaltyForm = _DECOUPLER.form
    lam: float = Field(_DECOUPLER.lam, ge=0)
    warmup_steps: int = Field(_DECOUPLER.warmup_steps, ge=0)
    tokens: TokenRule = _DECOUPLER.tokens
    penalize: bool = _DECOUPLER.penalize
    measure_fraction: float = Field(_DECOUPLER.measure_fraction, gt=0, lt=1)
    context: Literal["sentence", "prompt"] = _DECOUPLER.context
    probe_batch_size: int = Field(_DECOUPLER.probe_batch_size, ge=1)
    probe_dtype: Literal["fp32", "bf16"] = _DECOUPLER.probe_dtype
    fit_fraction: float = Field(_DECOUPLER.fit_fraction, gt=0, le=1)

    @field_validator("estimator", "reference_estimator")
    @classmethod
    def _known(cls, value: str) -> str:
        return check_estimator(value, "estimator")


ArmKind = Literal["train", "base", "copy", "erase"]
"""What an arm is (:data:`vardecouple.experiment.evaluation.ARM_KINDS` runs each)."""


class ArmSection(DecouplerSection):
    """One arm: the decoupler fields it overrides, what it is, and magnitude matching.

    ``kind``: ``train`` (LoRA fine-tuning with this arm's decoupler), ``base`` (the model
    without fine-tuning), ``copy`` (the source sentence as the hypothesis) or ``erase``
    (inference-time erasure, :mod:`vardecouple.erase`: this arm's ``estimator``,
    ``rank`` and ``layers`` fit the subspace on the model itself, removed with strength
    ``erase_alpha`` while decoding; on the adapter of each seed of the train arm
    ``erase_on``, or on the base model when ``erase_on`` is unset).
    ``match_penalty_of = "decoupled"``: λ is set at step 0 so that λ·L(step 0) equals
    that arm's (same seed, same first batch). ``max_examples``: score this arm on the
    first that many test rows of each direction only (fewer than ``[eval] max_examples``:
    a cheaper arm; its deltas are taken on the rows both arms share).
    """

    kind: ArmKind = "train"
    match_penalty_of: str | None = None
    erase_on: str | None = None
    erase_alpha: float = Field(1.0, ge=0)
    max_examples: int | None = Field(None, ge=1)


class EvalSection(StrictSection):
    """Decoding and scoring of every arm (``vardecouple run`` / ``eval``)."""

    # sentences decoded at once (slots with `continuous`); unset: 32 on a CPU (the fastest
    # measured on a 2-core CPU, BENCHMARKS.md), 64 on a GPU (not measured)
    batch_size: int | None = Field(None, ge=1)
    length_ratio: float = Field(2.0, gt=0)
    max_new_tokens: int = Field(256, ge=1)
    num_beams: int = Field(1, ge=1)
    # exact speed-ups of greedy decoding (vardecouple.evaluate.decode): refill rows as they finish
    # (batch_size = slots), and prompt-lookup drafts of this many tokens (0 = off)
    continuous: bool = True
    lookup_tokens: int = Field(8, ge=0)
    # approximations, recorded in results.json: weights in bfloat16 while decoding; the
    # argmax over the tokens of the training targets in the target variety (plus the
    # sentence's own prompt tokens and the stop tokens) instead of the whole vocabulary
    dtype: Literal["fp32", "bf16"] = "fp32"
    shortlist: Literal["off", "train-targets"] = "off"

    @field_validator("shortlist")
    @classmethod
    def _greedy_only(cls, value: str, info: Any) -> str:
        if value != "off" and info.data.get("num_beams", 1) > 1:
            raise ValueError("a shortlist works with greedy decoding only (num_beams = 1)")
        return value

    max_examples: int | None = Field(None, ge=1)  # per direction, first rows of the test split
    # the directions to decode and score (a subset of [data].directions, same syntax, e.g.
    # "standard->variety"); unset: every trained direction
    directions: str | list[str] | None = None
    bootstrap_samples: int = Field(1000, ge=1000)
    bootstrap_seed: int = 0
    # the adapter evaluated: the last one, or the one of the lowest dev loss (measured at
    # every train.checkpoint_every steps and at the end)
    checkpoint: Literal["final", "best-dev"] = "final"
    comet: str | None = None  # a local COMET checkpoint (*.ckpt) to score with too


class ProbeSection(StrictSection):
    """``vardecouple probe`` of the base model and every trained arm at the end of ``run``.

    The probe reads the held-out rows of the run (dev and test groups that have the
    standard and every variety), at most ``max_rows``; the adapter of each trained arm's
    first seed (the evaluated one: final or best on dev). Output: ``OUT/probe/``.
    """

    layers: str | list[int] = "all"
    max_rows: int = Field(500, ge=2)
    rank: int = Field(4, ge=1)
    batch_size: int = Field(16, ge=1)
    seed: int = 0
