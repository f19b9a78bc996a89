"""Experiments: every arm × seed of a config trained, evaluated and summarised.

:func:`run_experiment` (``vardecouple run``) trains and evaluates each arm with each seed
into ``OUT/runs/ARM/seed-S/`` (resumable at arm, seed and checkpoint granularity; a
finished one is never recomputed), then writes ``OUT/results.json``
(:mod:`vardecouple.experiment.results`) and ``OUT/report.md`` (:mod:`vardecouple.report`).
:func:`evaluate_one` (``vardecouple eval``) evaluates one model and adapter.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vardecouple.analysis.probe_file import merge_probes
from vardecouple.analysis.probing import run_probe
from vardecouple.data import Splits
from vardecouple.experiment.arms import (
    load_base,
)
from vardecouple.experiment.collect import INTERIM, collect_results, resolved_config
from vardecouple.experiment.config import ExperimentConfig
from vardecouple.experiment.context import RunContext, adapter_dir, check_inputs, has_adapter
from vardecouple.experiment.evaluation import evaluate_arm_seed
from vardecouple.experiment.jobs import run_parallel
from vardecouple.experiment.results import provenance
from vardecouple.experiment.schedule import (
    arm_order,
    arm_seeds,
    finished_runs,
    is_finished,
    run_schedule,
    run_state,
    schedule_of,
)
from vardecouple.io import write_json_atomic, write_lines_atomic, write_text_atomic
from vardecouple.report import write_report

__all__ = ["held_out_rows", "run_experiment"]


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    command: str = "",
    overwrite: bool = False,
    progress: bool = True,
    jobs: int = 1,
    order_by: str = "arm",
) -> Path:
    """Train and evaluate every arm × seed; write ``results.json`` and ``report.md``.

    Resumable: a finished arm/seed (its ``eval.json``) is never recomputed; a started
    one resumes from its checkpoint; hypotheses already decoded are read back.
    ``jobs > 1`` trains the seeds of an arm in that many processes at once (each with
    ``torch threads / jobs`` threads). Fewer threads sum in another order: the tiny test
    model gives a sequential run's metrics, gemma3-270m in bf16 losses that differ by up
    to 4e-3 (``benchmarks/parallel_units.py``, which also measures the speed-up).
    ``order_by``: one of :data:`ORDERS` (:func:`run_schedule`).
    """
    if jobs < 1:
        raise ValueError(f"run: jobs={jobs} must be ≥ 1")
    run_schedule(config, order_by)  # an unknown order: one line, before anything is written
    if jobs > 1 and order_by != "arm":
        raise ValueError(
            "run: --jobs trains the seeds of one arm at once; it goes with --order arm"
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "run: runs in one process (decoding is not sharded); train arms on several "
            "processes with `torchrun … vardecouple train`, then evaluate them with `eval`"
        )

    out = Path(out_dir)
    config = config.with_recorded_defaults(out)  # a folder keeps the defaults it began with
    resolved = resolved_config(config)
    done_file = out / "results.json"
    started = time.perf_counter()
    # every check that can fail on the user's input runs before the first byte is written,
    # and before the folder's state is looked at (a typo is reported as a typo)
    context = check_inputs(config)
    if overwrite:
        _check_overwrite(out)
    elif run_state(config, out) == "finished":
        raise FileExistsError(
            f"run: {out} holds a finished run (arms {', '.join(config.arms)} done); "
            "choose another folder or pass --overwrite"
        )
    saved, prov_file = out / "config.json", out / "provenance.json"
    fresh = overwrite or not prov_file.exists()
    context.out, context.progress = out, progress
    if overwrite and out.exists():
        shutil.rmtree(out)
    splits = context.splits
    write_json_atomic(saved, resolved)
    write_text_atomic(out / "splits.txt", splits.describe() + "\n")
    if fresh:
        record = provenance(context.base.source, command)
        write_json_atomic(prov_file, record)
    else:
        record = json.loads(prov_file.read_text())
    order = arm_order(config)
    total = sum(len(arm_seeds(config, a)) for a in order)
    done = [(a, s) for a in order for s in arm_seeds(config, a) if is_finished(out, a, s)]
    say = _reporter(out, progress, total, len(done))
    say(None, None, f"{total} arm × seed results to make in {out}, {len(done)} already there")

    def made_in_a_job(arm: str, seed: int) -> None:
        """A job finished ``arm``'s ``seed``: what reads its adapter runs now, here, while
        the other jobs go on (not once all of them are done: a session may end first)."""
        say(arm, seed)
        for unit in schedule_of(config, arm):
            if unit[0] != arm and unit[1] == seed and not is_finished(out, *unit):
                evaluate_arm_seed(context, *unit)
                say(*unit)

    for arm, seed in run_schedule(config, order_by):
        if jobs > 1 and config.arm(arm).kind == "train":  # its seeds at once, at the first
            todo = [s for s in arm_seeds(config, arm) if not is_finished(out, arm, s)]
            if len(todo) > 1 and seed == todo[0]:
                say(None, None, f"{arm}: seeds {', '.join(map(str, todo))} in {jobs} processes")
                run_parallel(config, out, arm, todo, jobs, on_done=lambda s, a=arm:
                             made_in_a_job(a, s), progress=progress)  # fmt: skip
        # what reads an adapter comes right after it is made (the erase arms follow their
        # arm's seed in the schedule): adapters are not kept with a run's results, so a
        # later session may not find them
        if not is_finished(out, arm, seed):
            evaluate_arm_seed(context, arm, seed)
            say(arm, seed)
        first = config.train.seeds[0]
        if config.probe is not None and config.arm(arm).kind == "train" and seed == first:
            _probe_part(config, context, out, arm)
    runs = finished_runs(config, out)  # every one of them, now
    context.base = None
    probe = _probe(config, context, out) if config.probe is not None else None
    record = record | {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_seconds": time.perf_counter() - started,
    }
    write_json_atomic(done_file, collect_results(config, context, out, runs, record, probe))
    (out / INTERIM).unlink(missing_ok=True)  # what it said so far is superseded
    write_report(out, command=command)
    return done_file


def _check_overwrite(out: Path) -> None:
    """``--overwrite`` deletes a run folder, and nothing else."""
    if out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise FileExistsError(
            f"run: {out} holds no run (no config.json); --overwrite only replaces a run folder"
        )


def held_out_rows(splits: Splits, codes: list[str]) -> dict[str, list[str]]:
    """Aligned rows of the dev and test groups that have every code (row order kept)."""
    groups: dict[int, dict[str, str]] = {}
    for ex in [*splits.dev, *splits.test]:
        row = groups.setdefault(ex.group, {})
        row.setdefault(ex.src, ex.src_text)
        row.setdefault(ex.tgt, ex.tgt_text)
    rows = [r for _, r in sorted(groups.items()) if all(c in r for c in codes)]
    return {c: [r[c] for r in rows] for c in codes}


def _probe_rows(config: ExperimentConfig, ctx: RunContext, out: Path) -> int:
    """Write the held-out rows the probe reads (``probe/rows/CODE.txt``); their count."""
    p = config.probe
    assert p is not None
    codes = [config.data.standard, *config.data.varieties]
    rows = held_out_rows(ctx.splits, codes)
    n = min(len(rows[codes[0]]), p.max_rows)
    if n <= p.rank:
        raise ValueError(
            f"config {config.source}: [probe] needs more than rank={p.rank} held-out rows with "
            f"every variety; the dev and test splits have {n}; raise data.test_rows"
        )
    for code, lines in rows.items():
        write_lines_atomic(out / "probe" / "rows" / f"{code}.txt", lines[:n])
    return n


def _probe_part(
    config: ExperimentConfig, ctx: RunContext, out: Path, arm: str | None
) -> Path | None:
    """``vardecouple probe`` of one trained arm's first-seed adapter (``arm=None``: of the
    base model) into ``probe/parts/NAME/probe.json``; None when its adapter is gone."""
    p = config.probe
    assert p is not None
    target = out / "probe" / "parts" / (arm or "base") / "probe.json"
    if target.exists():
        return target
    adapter = adapter_dir(config, out / "runs" / str(arm) / f"seed-{config.train.seeds[0]}")
    if arm is not None and not has_adapter(config, adapter.parent):
        return None
    n = _probe_rows(config, ctx, out)
    return run_probe(
        config.model.spec,
        out / "probe" / "rows",
        config.data.standard,
        target.parent,
        varieties=config.data.varieties,
        adapters=[adapter] if arm else [],
        layers=p.layers,
        max_rows=n,
        rank=p.rank,
        batch_size=p.batch_size,
        max_length=config.data.max_length,
        seed=p.seed,
        progress=ctx.progress,
        loader=lambda: load_base(config, ctx.splits),
        labels=[arm] if arm else None,
        include_base=arm is None,
        plots=False,
    )


def _probe(config: ExperimentConfig, ctx: RunContext, out: Path) -> Path:
    """``probe/probe.json``: the base model and each trained arm's first seed on held-out
    rows, merged from the parts probed as each adapter was made (an arm whose adapter is
    gone and was not probed is listed under ``not_probed``)."""
    folder = out / "probe"
    if (folder / "probe.json").exists():
        return folder / "probe.json"  # resumed: already probed
    arms = [a for a in arm_order(config) if config.arm(a).kind == "train"]
    parts = {a: _probe_part(config, ctx, out, a) for a in [None, *arms]}
    missing = {
        str(a): "its adapter was not on disk when the run finished (trained in an earlier "
        "session whose adapters were not kept)"
        for a, part in parts.items() if part is None
    }  # fmt: skip
    for arm in missing:
        print(f"run: probe: {arm} not probed: {missing[arm]}", file=sys.stderr, flush=True)
    return merge_probes([p for p in parts.values() if p is not None], folder, not_probed=missing)


def _reporter(out: Path, progress: bool, total: int, done: int) -> Any:
    """``say(arm, seed)``: one line as each arm × seed result is made (with its train and
    eval seconds); ``say(None, None, text)``: a line of its own. Silent without progress."""

    count = [done]
    started = time.perf_counter()

    def say(arm: str | None, seed: int | None, text: str | None = None) -> None:
        if not progress:
            return
        if arm is not None:
            count[0] += 1
            record = json.loads((out / "runs" / arm / f"seed-{seed}" / "eval.json")
                                .read_text(encoding="utf-8"))  # fmt: skip
            trained = (f"trained {record['steps']} steps in {record['train_seconds']:.0f} s, "
                       if record["steps"] else "")  # fmt: skip
            text = (f"[{count[0]}/{total}] {arm} seed {seed} done: {trained}evaluated in "
                    f"{record['eval_seconds']:.0f} s; {time.perf_counter() - started:.0f} s "
                    "into this run")  # fmt: skip
        print(f"run: {text}", file=sys.stderr, flush=True)

    return say
