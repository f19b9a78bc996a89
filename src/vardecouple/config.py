"""The one TOML config that ``train`` (and later ``run``, ``eval``, ``probe``) read.

Sections: ``[data]``, ``[model]``, ``[lora]``, ``[train]``, ``[decoupler]`` (the defaults
of every arm) and ``[arms.NAME]`` (each arm overrides decoupler fields; an empty table
takes them all). Validated at load with pydantic; an unknown key is an error naming
the nearest valid one. Relative paths resolve against ``data_root`` (default: the
config file's folder); ``data.root`` may move the base of the corpus paths.

Example (``examples/arabic-flores.toml`` has the full one)::

    [data]
    root = "../../shared/corpora"
    corpora = [{ path = "flores200", split = "dev" }]
    test_corpora = [{ path = "flores200", split = "devtest" }]
    standard = "arb_Arab"
    varieties = ["arz_Arab", "ary_Arab"]

    [model]
    spec = "gemma3-270m"

    [arms.standard]
    penalize = false

    [arms.decoupled]
"""

from __future__ import annotations

import difflib
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vardecouple.decouple import DecouplerConfig
from vardecouple.train import TrainConfig

__all__ = ["ConfigError", "CorpusRef", "ExperimentConfig", "load_config"]


class ConfigError(ValueError):
    """A config file that cannot be used; the message is one line naming file and key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class CorpusRef(_Strict):
    path: str
    split: str | None = None
    format: Literal["auto", "lines", "flores", "madar", "tsv", "jsonl"] = "auto"
    varieties: list[str] | None = None


class DataSection(_Strict):
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


class ModelSection(_Strict):
    spec: str
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    trust_remote_code: bool = False


# the library's dataclasses declare the defaults; the sections read them from here
_TRAIN, _DECOUPLER = TrainConfig(), DecouplerConfig()


class LoraSection(_Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )


class TrainSection(_Strict):
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
    seeds: list[int] = Field(default_factory=lambda: [0])


class DecouplerSection(_Strict):
    """``[decoupler]``: :class:`DecouplerConfig`'s fields and defaults (declared there)."""

    estimator: str = _DECOUPLER.estimator
    rank: int = Field(_DECOUPLER.rank, ge=1)
    estimator_options: dict[str, Any] = Field(default_factory=dict)
    reference_estimator: str = _DECOUPLER.reference_estimator
    reference_rank: int = Field(_DECOUPLER.reference_rank, ge=1)
    layers: list[int] | None = None
    refresh_every: int = Field(_DECOUPLER.refresh_every, ge=1)
    form: Literal["norm", "squared", "fraction"] = _DECOUPLER.form
    lam: float = Field(_DECOUPLER.lam, ge=0)
    warmup_steps: int = Field(_DECOUPLER.warmup_steps, ge=0)
    tokens: Literal["all", "target", "low-resource"] = _DECOUPLER.tokens
    penalize: bool = _DECOUPLER.penalize
    measure_fraction: float = Field(_DECOUPLER.measure_fraction, gt=0, lt=1)
    context: Literal["sentence", "prompt"] = _DECOUPLER.context
    probe_batch_size: int = Field(_DECOUPLER.probe_batch_size, ge=1)
    probe_dtype: Literal["fp32", "bf16"] = _DECOUPLER.probe_dtype
    fit_fraction: float = Field(_DECOUPLER.fit_fraction, gt=0, le=1)

    @field_validator("estimator", "reference_estimator")
    @classmethod
    def _known(cls, value: str) -> str:
        from vardecouple.subspace import ESTIMATORS

        if value not in ESTIMATORS:
            close = difflib.get_close_matches(value, ESTIMATORS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"unknown estimator {value!r}{hint}; expected one of {', '.join(ESTIMATORS)}"
            )
        return value


class ArmSection(DecouplerSection):
    """One arm: the decoupler fields it overrides, what it is, and magnitude matching.

    ``kind``: ``train`` (LoRA fine-tuning with this arm's decoupler), ``base`` (the model
    without fine-tuning), ``copy`` (the source sentence as the hypothesis) or ``erase``
    (inference-time erasure, :mod:`vardecouple.erase`: this arm's ``estimator``,
    ``rank`` and ``layers`` fit the subspace on the model itself, removed with strength
    ``erase_alpha`` while decoding; on the adapter of each seed of the train arm
    ``erase_on``, or on the base model when ``erase_on`` is unset).
    ``match_penalty_of = "decoupled"``: λ is set at step 0 so that λ·L(step 0) equals
    that arm's (same seed, same first batch).
    """

    kind: Literal["train", "base", "copy", "erase"] = "train"
    match_penalty_of: str | None = None
    erase_on: str | None = None
    erase_alpha: float = Field(1.0, ge=0)


class EvalSection(_Strict):
    """Decoding and scoring of every arm (``vardecouple run`` / ``eval``)."""

    # sentences decoded at once (slots with `continuous`); unset: 32 on a CPU (the fastest
    # measured on a 2-core CPU, BENCHMARKS.md), 64 on a GPU (not measured)
    batch_size: int | None = Field(None, ge=1)
    length_ratio: float = Field(2.0, gt=0)
    max_new_tokens: int = Field(256, ge=1)
    num_beams: int = Field(1, ge=1)
    # exact speed-ups of greedy decoding (vardecouple.decode): refill rows as they finish
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
    bootstrap_samples: int = Field(1000, ge=1000)
    bootstrap_seed: int = 0
    # the adapter evaluated: the last one, or the one of the lowest dev loss (measured at
    # every train.checkpoint_every steps and at the end)
    checkpoint: Literal["final", "best-dev"] = "final"
    comet: str | None = None  # a local COMET checkpoint (*.ckpt) to score with too


class ProbeSection(_Strict):
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


_ARM_FIELDS = set(ArmSection.model_fields)
_ARM_ONLY = {"kind", "match_penalty_of", "erase_on", "erase_alpha"}


class ExperimentConfig(_Strict):
    name: str = "experiment"
    data: DataSection
    model: ModelSection
    lora: LoraSection = Field(default_factory=LoraSection)
    train: TrainSection = Field(default_factory=TrainSection)
    decoupler: DecouplerSection = Field(default_factory=DecouplerSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    probe: ProbeSection | None = None
    arms: dict[str, dict[str, Any]] = Field(default_factory=dict)
    source: str = ""
    data_root: str = ""

    def arm(self, name: str) -> ArmSection:
        """The settings of arm ``name`` (its overrides on ``[decoupler]``)."""
        if name not in self.arms:
            close = difflib.get_close_matches(name, list(self.arms), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(self.arms) or "none"
            raise ConfigError(f"config {self.source}: no arm {name!r}{hint}; arms: {known}")
        return ArmSection(**(self.decoupler.model_dump() | self.arms[name]))

    def decoupler_config(
        self, arm: str, seed: int = 0, match_penalty: float | None = None
    ) -> DecouplerConfig:
        settings = self.arm(arm).model_dump(exclude=_ARM_ONLY)
        settings["layers"] = tuple(settings["layers"]) if settings["layers"] is not None else None
        return DecouplerConfig(
            **settings, max_length=self.data.max_length, seed=seed, match_penalty=match_penalty
        )

    def train_config(self, seed: int) -> TrainConfig:
        fields = self.train.model_dump(exclude={"seeds"})
        return TrainConfig(**fields, seed=seed)

    def with_recorded_defaults(self, out_dir: str | Path) -> ExperimentConfig:
        """This config, with the values a run folder recorded (``out_dir/config.json``)
        for every section field this config leaves at its default.

        A folder started before a default changed (``[decoupler] estimator`` was
        ``"variational"`` before ``"lda"``) thus resumes with the settings it was started
        with; a field the TOML sets is kept, so a real difference is still refused.
        Without a readable ``config.json`` the config is returned unchanged."""
        import json

        try:
            saved = json.loads((Path(out_dir) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return self
        update: dict[str, Any] = {}
        for name in ("lora", "train", "decoupler", "eval", "probe"):
            section, recorded = getattr(self, name), saved.get(name)
            if section is None or not isinstance(recorded, dict):
                continue
            fields = type(section).model_fields
            kept = {
                k: v
                for k, v in recorded.items()
                if k in fields and k not in section.model_fields_set and v != getattr(section, k)
            }
            if not kept:
                continue
            try:
                update[name] = type(section)(**(section.model_dump() | kept))
            except ValidationError:
                continue  # not a value this version accepts: the folder is refused later
        return self.model_copy(update=update) if update else self

    def resolve(self, path: str) -> Path:
        """A corpus path, relative to ``data.root``, itself relative to the data root.

        The data root is absolute (made so at load), so the result never depends on the
        current directory."""
        base = Path(self.data_root) / self.data.root
        return (base / path).resolve() if not Path(path).is_absolute() else Path(path)


def _nearest(key: str, model: type[BaseModel]) -> str:
    close = difflib.get_close_matches(key, list(model.model_fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


_SECTIONS: dict[str, type[BaseModel]] = {
    "": ExperimentConfig,
    "data": DataSection,
    "model": ModelSection,
    "lora": LoraSection,
    "train": TrainSection,
    "decoupler": DecouplerSection,
    "eval": EvalSection,
}


def _describe(error: dict[str, Any], source: str) -> str:
    loc = [str(p) for p in error["loc"]]
    where = ".".join(loc)
    if error["type"] == "extra_forbidden":
        section = loc[0] if len(loc) > 1 else ""
        model = _SECTIONS.get(section, CorpusRef if "corpora" in section else ExperimentConfig)
        if "corpora" in where:
            model = CorpusRef
        return f"config {source}: unknown key '{where}'{_nearest(loc[-1], model)}"
    if error["type"] == "missing":
        return f"config {source}: missing key '{where}'"
    return f"config {source}: '{where}': {error['msg']}"


def load_config(path: str | Path, data_root: str | Path | None = None) -> ExperimentConfig:
    """Read, validate and resolve a TOML config; :class:`ConfigError` on any problem."""
    source = Path(path)
    if not source.is_file():
        raise ConfigError(f"config {source}: no such file")
    try:
        raw = tomllib.loads(source.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config {source}: not valid TOML: {exc}") from None
    for arm, overrides in (raw.get("arms") or {}).items():
        if not isinstance(overrides, dict):
            raise ConfigError(f"config {source}: arms.{arm} must be a table")
        for key in overrides:
            if key not in _ARM_FIELDS:
                hint = _nearest(key, ArmSection)
                raise ConfigError(f"config {source}: unknown key 'arms.{arm}.{key}'{hint}")
        try:
            ArmSection(**overrides)
        except ValidationError as exc:
            first = exc.errors()[0]
            first = first | {"loc": ("arms", arm, *first["loc"])}
            raise ConfigError(_describe(first, str(source))) from None
    # relative paths in a config mean "relative to the config" (or to --data-root), never
    # to the current directory: the base is made absolute here, once
    root = (Path(data_root) if data_root is not None else source.parent).resolve()
    model = raw.get("model")
    if isinstance(model, dict) and isinstance(model.get("spec"), str):
        raw = raw | {"model": model | {"spec": _model_path(model["spec"], root)}}
    try:
        config = ExperimentConfig(**raw, source=str(source), data_root=str(root))
    except ValidationError as exc:
        # an unknown key first: a misspelt key also shows up as a missing one
        errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
        raise ConfigError(_describe(errors[0], str(source))) from None
    if not config.arms:
        raise ConfigError(f"config {source}: no [arms.NAME] table; define at least one arm")
    for name in config.arms:
        _check_erase_on(config, name, str(source))
        target = config.arm(name).match_penalty_of
        if target is None:
            continue
        where = f"config {source}: 'arms.{name}.match_penalty_of'"
        if target not in config.arms or target == name:
            close = difflib.get_close_matches(target, [a for a in config.arms if a != name], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: {target!r} is not another arm{hint}")
        other = config.arm(target)
        if other.kind != "train" or not other.penalize or other.match_penalty_of is not None:
            raise ConfigError(
                f"{where}: {target!r} must be a penalised, trained arm with its own λ"
            )
    return config


def _model_path(spec: str, root: Path) -> str:
    """A local model path in a config is relative to the config's folder (``root``).

    Aliases (``gemma3-270m``, ``tiny-random``) and hub ids (``org/name``) stay as they
    are; a relative spec that names an existing file or folder under ``root``, or one that
    is written as a path (``./…``, ``../…``, ``….gguf``), becomes absolute."""
    from vardecouple.model import ALIASES

    path = Path(os.path.expanduser(spec))
    if spec in ALIASES or spec == "tiny-random" or path.is_absolute():
        return spec
    written_as_path = spec.startswith(("./", "../")) or path.suffix == ".gguf"
    if written_as_path or (root / path).exists():
        return str((root / path).resolve())
    return spec


def _check_erase_on(config: ExperimentConfig, name: str, source: str) -> None:
    """``erase_on`` belongs to an ``erase`` arm and names a trained arm."""
    arm = config.arm(name)
    where = f"config {source}: 'arms.{name}.erase_on'"
    if arm.erase_on is None:
        return
    if arm.kind != "erase":
        raise ConfigError(f"{where}: only an arm of kind 'erase' erases on another arm")
    if arm.erase_on not in config.arms or config.arm(arm.erase_on).kind != "train":
        trained = [a for a in config.arms if config.arm(a).kind == "train"]
        close = difflib.get_close_matches(arm.erase_on, trained, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{where}: {arm.erase_on!r} is not a trained arm{hint}; trained arms: "
            f"{', '.join(trained) or 'none'}"
        )
