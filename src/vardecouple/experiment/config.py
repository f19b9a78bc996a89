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
import json
import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from vardecouple.data import CorpusError, parse_directions
from vardecouple.decouple import DecouplerConfig
from vardecouple.experiment.sections import (
    ArmSection,
    CorpusRef,
    DataSection,
    DecouplerSection,
    EvalSection,
    LoraSection,
    ModelSection,
    ProbeSection,
    StrictSection,
    TrainSection,
)
from vardecouple.model.load import ALIASES
from vardecouple.train.step import TrainConfig

__all__ = ["ConfigError", "ExperimentConfig", "load_config", "matches_recorded"]


class ConfigError(ValueError):
    """A config file that cannot be used; the message is one line naming file and key."""


# the library's dataclasses declare the defaults; the sections read them from here


_ARM_FIELDS = set(ArmSection.model_fields)
_ARM_ONLY = {"kind", "match_penalty_of", "erase_on", "erase_alpha", "max_examples"}


class ExperimentConfig(StrictSection):
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

    def eval_directions(self) -> list[str] | None:
        """``[eval] directions`` expanded to ``src->tgt`` strings (None: every direction);
        :class:`ConfigError` unless each is one of ``[data] directions``."""
        if self.eval.directions is None:
            return None
        data = self.data
        codes = {"standard": data.standard, "varieties": data.varieties, "pivot": data.pivot}
        try:
            chosen = [str(d) for d in parse_directions(self.eval.directions, **codes)]
            trained = {str(d) for d in parse_directions(data.directions, **codes)}
        except CorpusError as exc:
            raise ConfigError(f"config {self.source}: 'eval.directions': {exc}") from None
        extra = [d for d in chosen if d not in trained]
        if extra:
            raise ConfigError(
                f"config {self.source}: 'eval.directions': {', '.join(extra)} not among "
                f"[data] directions ({', '.join(sorted(trained))})"
            )
        return chosen

    def train_config(self, seed: int) -> TrainConfig:
        fields = self.train.model_dump(exclude={"seeds"})
        return TrainConfig(**fields | {"report_to": tuple(fields["report_to"])}, seed=seed)

    def with_recorded_defaults(self, out_dir: str | Path) -> ExperimentConfig:
        """This config, with the values a run folder recorded (``out_dir/config.json``)
        for every section field this config leaves at its default.

        A folder started before a default changed (``[decoupler] estimator`` was
        ``"variational"`` before ``"lda"``) thus resumes with the settings it was started
        with; a field the TOML sets is kept, so a real difference is still refused.
        Without a readable ``config.json`` the config is returned unchanged."""

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


def matches_recorded(before: Any, now: dict[str, Any]) -> bool:
    """Whether a folder's recorded config (``before``, its ``config.json``) is ``now``.

    A section field the recording lacks (it was written before the field existed)
    matches when ``now`` has it at its default, so a folder started by an earlier version
    resumes; any other difference does not match."""
    if not isinstance(before, dict):
        return False

    def known(old: Any, new: Any, model: type[BaseModel]) -> Any:
        if not isinstance(old, dict) or not isinstance(new, dict):
            return new
        fields = model.model_fields
        return {
            k: v
            for k, v in new.items()
            if k in old
            or k not in fields
            or v != _json(fields[k].get_default(call_default_factory=True))
        }

    now = dict(now)
    for name, model in [*_SECTIONS.items(), ("probe", ProbeSection)]:
        if name and name in now:
            now[name] = known(before.get(name), now[name], model)
    return before == now


def _json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


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
    config.eval_directions()  # a bad [eval] directions is reported at load
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
