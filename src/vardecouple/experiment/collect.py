"""A run folder's arm × seed results gathered into one record (:func:`collect_results`):
``results.json`` when the run has every one of them, ``interim.json``
(:mod:`vardecouple.experiment.interim`) before."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vardecouple.evaluate.metrics import signatures
from vardecouple.evaluate.scoring import decoding_record, direction_kinds, read_lines
from vardecouple.experiment.config import ExperimentConfig
from vardecouple.experiment.context import RunContext
from vardecouple.experiment.evaluation import arm_tests
from vardecouple.experiment.results import (
    deltas_vs_matched,
    deltas_vs_standard,
    summarize,
    validate_results,
)

__all__ = ["INTERIM", "collect_results", "resolved_config"]

#: the interim record's file in a run folder (removed when the run writes results.json)
INTERIM = "interim.json"


def resolved_config(config: ExperimentConfig) -> dict[str, Any]:
    """The config as a run folder records it (``config.json``): JSON values only."""
    return json.loads(json.dumps(config.model_dump(exclude={"source", "data_root"})))


def collect_results(
    config: ExperimentConfig,
    context: RunContext,
    out: Path,
    runs: Mapping[str, Mapping[str, Any]],
    record: dict[str, Any],
    probe: Path | None,
    *,
    planned: Mapping[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The record of ``runs`` (validated against the schema): scores, their summary over
    seeds, paired deltas against ``standard`` and of each arm against its magnitude-matched
    control. ``planned`` (each arm's seeds; interim records): arms planned on the same seeds
    are compared on the seeds both have finished."""
    tests, ev = context.tests, config.eval
    kinds = direction_kinds(list(tests), config.data.standard, config.data.varieties)
    refs = {d: [ex.tgt_text for ex in rows] for d, rows in tests.items()}

    def hypotheses(arm: str, seed: str, d: str) -> list[str]:
        n = len(arm_tests(config, arm, tests)[d])
        return read_lines(out / runs[arm][seed]["metrics"][d]["hypotheses"], n)

    boot = {"n_samples": ev.bootstrap_samples, "seed": ev.bootstrap_seed, "planned": planned}
    matched = {a: str(config.arm(a).match_penalty_of) for a in runs
               if config.arm(a).match_penalty_of}  # fmt: skip
    results = {
        "schema_version": 1,
        "config": resolved_config(config),
        "provenance": record,
        "signatures": signatures(),
        "directions": {d: {"kind": kinds[d], "n": len(tests[d])} for d in tests},
        "variety_identifier": context.identifier_info,
        "bootstrap": {"n_samples": ev.bootstrap_samples, "seed": ev.bootstrap_seed},
        "decoding": decoding_record(context.decoding, ev.shortlist, None),
        "runs": runs,
        "summary": summarize(runs, list(tests)),
        "deltas": deltas_vs_standard(runs, refs, kinds, hypotheses, **boot),
        "matched_deltas": deltas_vs_matched(matched, runs, refs, kinds, hypotheses, **boot),
    }
    if probe is not None:
        results["probe"] = str(probe.relative_to(out))
    validate_results(results)
    return results
