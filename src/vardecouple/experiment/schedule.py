"""Which arm × seed results a run makes, in what order, and which it has already.

A run folder holds one ``runs/ARM/seed-S/eval.json`` per finished arm × seed (never
recomputed). :func:`run_schedule` orders the units a run makes, :func:`run_state` says
whether a folder is new, part-way or finished, and :func:`finished_runs` reads the results
it holds: what ``run`` (:mod:`vardecouple.experiment.run`), ``run --plan`` and
``run --interim`` share.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vardecouple import __version__
from vardecouple.experiment.collect import resolved_config
from vardecouple.experiment.config import ExperimentConfig, matches_recorded

__all__ = [
    "ORDERS",
    "arm_order",
    "arm_seeds",
    "finished_runs",
    "is_finished",
    "run_schedule",
    "run_state",
    "schedule_of",
]


def arm_order(config: ExperimentConfig) -> list[str]:
    """copy/base first, then trained arms, a matched arm after the arm it matches, then
    the erase arms (they read a trained arm's adapters)."""
    names = list(config.arms)
    fixed = [a for a in names if config.arm(a).kind in ("copy", "base")]
    plain = [
        a for a in names if config.arm(a).kind == "train" and not config.arm(a).match_penalty_of
    ]
    matched = [a for a in names if config.arm(a).kind == "train" and a not in plain]
    return fixed + plain + matched + [a for a in names if config.arm(a).kind == "erase"]


def schedule_of(config: ExperimentConfig, arm: str) -> list[tuple[str, int]]:
    """The arm × seed units of ``arm`` in the order a run makes them: each seed, followed
    by that seed of every erase arm that reads this arm's adapters (``erase_on``)."""
    erasing = [a for a in arm_order(config) if config.arm(a).erase_on == arm]
    return [
        unit
        for seed in arm_seeds(config, arm)
        for unit in [(arm, seed), *((e, seed) for e in erasing if seed in arm_seeds(config, e))]
    ]


#: How a run orders its arm × seed results: every seed of one arm, then the next arm
#: (``arm``), or every arm with one seed, then the next seed (``seed``: a run stopped
#: part-way has every comparison on its first seeds). Either gives the same numbers.
ORDERS = ("arm", "seed")


def run_schedule(config: ExperimentConfig, order: str = "arm") -> list[tuple[str, int]]:
    """Every arm × seed of ``config`` in the order :func:`run_experiment` makes them."""
    if order not in ORDERS:
        raise ValueError(f"run: order {order!r} is not one of {', '.join(ORDERS)}")
    arms = [a for a in arm_order(config) if not config.arm(a).erase_on]
    if order == "arm":
        return [unit for arm in arms for unit in schedule_of(config, arm)]
    return [
        unit for seed in config.train.seeds for arm in arms
        for unit in schedule_of(config, arm) if unit[1] == seed
    ]  # fmt: skip


def arm_seeds(config: ExperimentConfig, arm: str) -> list[int]:
    """Every seed for trained arms and erasure on them; the first for the others."""
    settings = config.arm(arm)
    if settings.kind == "train" or (settings.kind == "erase" and settings.erase_on):
        return list(config.train.seeds)
    return list(config.train.seeds[:1])


def run_state(config: ExperimentConfig, out_dir: str | Path) -> str:
    """``new``, ``partial`` (a started run of this config: it resumes) or ``finished``.

    A folder holding a run of another config or another vardecouple version, or files
    that are no run, raises :class:`FileExistsError` (one line naming what to do)."""

    out = Path(out_dir)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return "new"
    if not out.is_dir():
        raise FileExistsError(f"run: --out {out} is a file; choose a folder")
    saved, prov = out / "config.json", out / "provenance.json"
    if not saved.is_file():
        raise FileExistsError(
            f"run: {out} is not empty and holds no run (no config.json); choose another --out"
        )
    try:
        before = json.loads(saved.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        before = None
    if not matches_recorded(before, resolved_config(config)):
        raise FileExistsError(
            f"run: {out} holds a run of a different config ({saved} differs); pass "
            "--overwrite to replace it, or choose another --out"
        )
    if prov.is_file():
        version = json.loads(prov.read_text(encoding="utf-8")).get("vardecouple")
        if version != __version__:
            raise FileExistsError(
                f"run: {out} holds a run of vardecouple {version} (this is {__version__}); "
                "pass --overwrite to replace it, or choose another --out"
            )
    return "finished" if (out / "results.json").is_file() else "partial"


def is_finished(out: Path, arm: str, seed: int) -> bool:
    """Whether this arm × seed has its result (``eval.json``): never recomputed."""
    return (out / "runs" / arm / f"seed-{seed}" / "eval.json").exists()


def finished_runs(config: ExperimentConfig, out: Path) -> dict[str, dict[str, Any]]:
    """``runs[ARM][SEED]``: the ``eval.json`` of every finished arm × seed, in run order."""
    runs: dict[str, dict[str, Any]] = {}
    for arm in arm_order(config):
        for seed in arm_seeds(config, arm):
            path = out / "runs" / arm / f"seed-{seed}" / "eval.json"
            if path.is_file():
                runs.setdefault(arm, {})[str(seed)] = json.loads(path.read_text("utf-8"))
    return runs
