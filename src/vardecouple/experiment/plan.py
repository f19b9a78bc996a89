"""What a run has left to do, and how long that should take (``vardecouple run --plan``).

The cost of a run is, to a good approximation, training steps × seconds per step plus
decoded sentences × seconds per sentence. :func:`measured_rates` reads both rates from
the arm × seed results a run folder already holds (``train_summary.json``: training
seconds over the steps since the last resume, refreshes, dev loss and checkpoints
included; ``eval.json``:
decoding seconds over the sentences decoded), so an estimate is only as good as the runs
it was measured on: on the same machine, model and decoding settings.
:func:`plan_run` lists every arm × seed of a config with its state and the work left.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vardecouple.evaluate.scoring import test_sets
from vardecouple.experiment.arms import prepare_data
from vardecouple.experiment.config import ExperimentConfig
from vardecouple.experiment.context import has_adapter
from vardecouple.experiment.evaluation import arm_tests
from vardecouple.experiment.schedule import run_schedule
from vardecouple.train.checkpoint import has_checkpoint

__all__ = ["PlanItem", "Rates", "format_plan", "measured_rates", "plan_run"]


@dataclass(frozen=True)
class Rates:
    """Median seconds per training step and per decoded sentence, and how many finished
    arm × seed results each median is over (0: not measured)."""

    step_seconds: float | None
    sentence_seconds: float | None
    trainings: int
    evaluations: int
    source: str


@dataclass(frozen=True)
class PlanItem:
    arm: str
    seed: int
    kind: str
    state: str  # done, trained, trained (adapter gone), training (k/N), to do
    steps_left: int
    sentences_left: int


def measured_rates(folder: str | Path) -> Rates:
    """The rates measured by the finished arm × seed results under ``folder/runs``."""
    steps, sentences = [], []
    for record_file in sorted(Path(folder).glob("runs/*/seed-*/eval.json")):
        record = json.loads(record_file.read_text(encoding="utf-8"))
        summary = record_file.parent / "train_summary.json"
        if record.get("steps") and summary.is_file():
            # a resumed arm's train_seconds are its last process's: the steps since resuming
            since = json.loads(summary.read_text(encoding="utf-8")).get("resumed_from") or 0
            if record["steps"] > since:
                steps.append(record["train_seconds"] / (record["steps"] - since))
        decoded = record.get("decoded_sentences")  # absent: recorded before it existed
        if decoded is None:
            decoded = sum(_scored(record_file.parent, d, m) for d, m in record["metrics"].items())
        if record.get("kind") != "copy" and decoded and record.get("eval_seconds"):
            sentences.append(record["eval_seconds"] / decoded)
    return Rates(
        statistics.median(steps) if steps else None,
        statistics.median(sentences) if sentences else None,
        len(steps),
        len(sentences),
        str(folder),
    )


def _scored(run_dir: Path, direction: str, metrics: dict[str, Any]) -> int:
    """Sentences scored in one direction (``n``, or the hypotheses' lines before it was
    recorded)."""
    if "n" in metrics:
        return int(metrics["n"])
    path = run_dir / "hypotheses" / f"{direction}.txt"
    return path.read_text(encoding="utf-8").count("\n") if path.exists() else 0


def plan_run(config: ExperimentConfig, out: str | Path, order_by: str = "arm") -> list[PlanItem]:
    """Every arm × seed of ``config`` in the order ``run --order ORDER_BY`` makes them,
    with its state in the run folder ``out`` and the training steps and sentences it
    still needs."""
    folder = Path(out)
    tests = test_sets(prepare_data(config), config.eval.max_examples, config.eval_directions())
    items = []
    for arm, seed in run_schedule(config, order_by):
        settings = config.arm(arm)
        rows = sum(len(r) for r in arm_tests(config, arm, tests).values())
        sentences = 0 if settings.kind == "copy" else rows
        run_dir = folder / "runs" / arm / f"seed-{seed}"
        steps = config.train.steps if settings.kind == "train" else 0
        done = _steps_done(run_dir) if steps else 0
        if (run_dir / "eval.json").exists():
            state, steps, sentences_left = "done", 0, 0
        elif steps and (run_dir / "train_summary.json").exists():
            if has_adapter(config, run_dir):
                state, steps, sentences_left = "trained", 0, sentences
            else:  # the run trains it again (its adapter was not kept)
                state, sentences_left = "adapter gone: retrain", sentences
        elif done:
            state, steps, sentences_left = f"training ({done}/{steps})", steps - done, sentences
        else:
            state, sentences_left = "to do", sentences
        items.append(PlanItem(arm, seed, settings.kind, state, steps, sentences_left))
    return items


def _steps_done(run_dir: Path) -> int:
    """Steps a started arm has logged (a resume redoes those after its last checkpoint;
    without one, as in a folder copied without its ``checkpoint/``, it starts again)."""
    log = run_dir / "train_log.jsonl"
    if not log.exists() or not has_checkpoint(run_dir / "checkpoint"):
        return 0
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    return max((r["step"] + 1 for r in records if "loss" in r), default=0)


def format_plan(items: list[PlanItem], rates: Rates) -> str:
    """The plan as a table, with the totals and the time they should take."""
    lines = [f"{'arm':<24} {'seed':>4}  {'state':<22} {'steps left':>10} {'sentences':>9}"]
    for it in items:
        lines.append(
            f"{it.arm:<24} {it.seed:>4}  {it.state:<22} {it.steps_left:>10} {it.sentences_left:>9}"
        )
    steps = sum(it.steps_left for it in items)
    sentences = sum(it.sentences_left for it in items)
    left = sum(it.state != "done" for it in items)
    lines.append(f"left: {left} of {len(items)} arm × seed results, {steps} training steps, "
                 f"{sentences} sentences to decode")  # fmt: skip
    parts, missing, hours = [], [], 0.0
    for amount, rate, what, count in (
        (steps, rates.step_seconds, "training step", rates.trainings),
        (sentences, rates.sentence_seconds, "decoded sentence", rates.evaluations),
    ):
        if amount and rate is None:
            missing.append(f"s per {what}")
        elif amount and rate is not None:
            parts.append(f"{rate:.2f} s per {what} (median of {count})")
            hours += amount * rate / 3600
    if missing:
        lines.append(f"estimate: unknown: no {' and no '.join(missing)} measured yet in "
                     f"{rates.source} (a finished arm × seed measures them; --rates-from DIR "
                     "reads another run's)")  # fmt: skip
    elif parts:
        lines.append(f"estimate: ≈ {hours:.1f} h at {', '.join(parts)}, measured in {rates.source}")
    return "\n".join(lines)
