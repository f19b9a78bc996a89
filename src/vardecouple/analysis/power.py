"""How many test sentences a comparison needs (``vardecouple power``).

The paired bootstrap's 95% interval of a delta between two systems shrinks as
``1/√n`` with the number ``n`` of test sentences per direction (the delta is a mean over
sentences, to first order). So from one finished comparison on ``n`` sentences, with
interval half-width ``h``, the sentences per direction that give a half-width of
``target`` are

    n* = ⌈ n · (h / target)² ⌉.

It is an estimate: ``h`` is itself measured on ``n`` sentences, and corpus-level chrF++ is
only approximately a mean over sentences. Read from one seed of each arm, it is the
interval of a one-seed comparison; averaging seeds narrows the interval where the seeds
disagree, so it errs on the safe side. With every seed (``all_seeds``) the delta, its
interval and p-value are those of the seed-averaged comparison (as ``results.json``
reports for the arms it compares).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from vardecouple.evaluate.metrics import paired_bootstrap

__all__ = ["PowerEstimate", "as_records", "estimate_power", "format_power", "sentences_needed"]


def sentences_needed(n: int, half_width: float, target: float) -> int:
    """``⌈n · (half_width / target)²⌉``: sentences per direction for a half-width of
    ``target`` when ``n`` of them gave ``half_width``."""
    if n < 1 or target <= 0 or half_width < 0:
        raise ValueError(f"power: need n ≥ 1, target > 0, half-width ≥ 0 (got {n}, {target}, "
                         f"{half_width})")  # fmt: skip
    return max(1, math.ceil(n * (half_width / target) ** 2))


@dataclass(frozen=True)
class PowerEstimate:
    """One comparison (``a − b``) over a group of directions, measured on ``n`` sentences
    per direction with ``seeds`` of each arm (seeds averaged inside each resample)."""

    a: str
    b: str
    group: str
    seeds: tuple[int, ...]
    n: int
    delta: float
    half_width: float
    p_value: float
    target: float
    needed: int


def _lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8", newline="\n") as handle:
        return handle.read().split("\n")[:-1]


def _references(
    run_dir: Path, direction: str, given: Mapping[str, Sequence[str]] | None
) -> list[str]:
    """One direction's references: given, or the arm × seed folder's copy."""
    if given is not None:
        if direction not in given:
            raise ValueError(f"power: the config has no test direction {direction}")
        return list(given[direction])
    path = run_dir / "references" / f"{direction}.txt"
    if not path.is_file():
        raise FileNotFoundError(
            f"power: {path} is missing (a committed run keeps no copy of corpus text); "
            "pass --config with the run's config to rebuild the references"
        )
    return _lines(path)


def estimate_power(
    run_dir: str | Path,
    a: str,
    b: str,
    *,
    target: float = 1.0,
    seed: int | None = None,
    all_seeds: bool = False,
    metric: str = "chrf++",
    n_samples: int = 1000,
    references: Mapping[str, Sequence[str]] | None = None,
) -> list[PowerEstimate]:
    """:func:`sentences_needed` for ``a − b`` in the run folder ``run_dir`` (written by
    ``vardecouple run``: ``config.json`` and each arm's ``runs/ARM/seed-S/hypotheses/``
    and ``references/``), over the directions into the varieties (``mean_low_resource``)
    and into the standard (``mean_standard``), on the first ``seed`` both arms finished
    (or the given one; ``all_seeds``: every seed both finished), and on the rows both
    were scored on. ``references`` (per direction, the test rows in order) replace the
    folder's ``references/``, which a committed run folder does not keep."""
    if a == b:
        raise ValueError(f"power: --compare {a} {b}: compare two different arms")
    if all_seeds and seed is not None:
        raise ValueError("power: --seed picks one seed, --all-seeds every seed: give one")
    root = Path(run_dir)
    data = json.loads((root / "config.json").read_text(encoding="utf-8"))["data"]
    folders = {arm: root / "runs" / arm for arm in (a, b)}
    seeds = [
        {int(p.name.split("-", 1)[1]) for p in f.glob("seed-*") if (p / "eval.json").is_file()}
        for f in folders.values()
    ]
    shared = sorted(seeds[0] & seeds[1])
    if seed is None and not shared:
        raise ValueError(f"power: {root}: no seed with both {a!r} and {b!r} evaluated")
    if seed is not None and seed not in shared:
        raise ValueError(f"power: {root}: seed {seed} is not evaluated for both {a!r} and {b!r}")
    chosen = shared if all_seeds else [shared[0] if seed is None else seed]
    first = {arm: f / f"seed-{chosen[0]}" for arm, f in folders.items()}
    directions = sorted(
        {p.stem for p in (first[a] / "hypotheses").glob("*.txt")}
        & {p.stem for p in (first[b] / "hypotheses").glob("*.txt")}
    )
    groups: dict[str, list[str]] = {"mean_low_resource": [], "mean_standard": []}
    for d in directions:
        tgt = d.split("->")[1]
        if tgt == data["standard"]:
            groups["mean_standard"].append(d)
        elif tgt in data["varieties"]:
            groups["mean_low_resource"].append(d)
    out = []
    for group, dirs in groups.items():
        if not dirs:
            continue
        read = {
            (arm, d): [_lines(folders[arm] / f"seed-{s}" / "hypotheses" / f"{d}.txt")
                       for s in chosen]
            for arm in (a, b)
            for d in dirs
        }  # fmt: skip
        refs = {d: _references(first[a], d, references) for d in dirs}
        n = min(len(x) for x in [*refs.values(), *(h for hs in read.values() for h in hs)])
        blocks: list[Any] = [
            (refs[d][:n], [h[:n] for h in read[a, d]], [h[:n] for h in read[b, d]]) for d in dirs
        ]
        result = paired_bootstrap(blocks, metric=metric, n_samples=n_samples)
        half = (result.ci95[1] - result.ci95[0]) / 2
        needed = sentences_needed(n, half, target)
        out.append(PowerEstimate(a, b, group, tuple(chosen), n, result.delta, half,
                                 result.p_value, target, needed))  # fmt: skip
    return out


def format_power(estimates: list[PowerEstimate]) -> str:
    """The estimates as a table."""
    head = f"{'comparison':<34} {'group':<18} {'seeds':>6} {'n':>5} {'delta':>7} {'±95%':>6}"
    head += f" {'p':>6}  sentences needed"
    lines = [head]
    for e in estimates:
        seeds = ",".join(map(str, e.seeds))
        lines.append(
            f"{e.a + ' − ' + e.b:<34} {e.group:<18} {seeds:>6} {e.n:>5} {e.delta:>+7.2f} "
            f"{e.half_width:>6.2f} {e.p_value:>6.3f}  {e.needed} (for ±{e.target:g})"
        )
    return "\n".join(lines)


def as_records(estimates: list[PowerEstimate]) -> list[dict[str, Any]]:
    return [asdict(e) for e in estimates]
