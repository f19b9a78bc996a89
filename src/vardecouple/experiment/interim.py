"""What a run has so far, as a record and a report (``vardecouple run --interim``).

:func:`write_interim` gathers the arm × seed results a run folder holds into
``interim.json`` (the record ``results.json`` will be, from fewer results) and writes the
report and plots it gives, so that a campaign spread over several sessions can be read
while it goes on; it trains and decodes nothing. The record adds ``interim``: how many
results are there and which are missing. Its paired comparisons of two arms planned on
the same seeds use only the seeds both have finished (the final record's use every
seed): a mean over different seeds would mix seed noise into the delta.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from vardecouple.analysis.probe_file import merge_probes
from vardecouple.experiment.collect import INTERIM, collect_results
from vardecouple.experiment.config import ExperimentConfig
from vardecouple.experiment.context import check_inputs
from vardecouple.experiment.results import validate_results
from vardecouple.experiment.schedule import arm_order, arm_seeds, finished_runs, run_state
from vardecouple.io import write_json_atomic
from vardecouple.report import write_report

__all__ = ["write_interim"]


def write_interim(config: ExperimentConfig, out_dir: str | Path, command: str = "") -> Path:
    """``OUT/interim.json``, ``OUT/report.md`` and ``OUT/plots/`` from the arm × seed
    results the run in ``out_dir`` has so far (and ``OUT/probe/interim/`` from its probe
    parts so far); trains and decodes nothing. Returns the report's path.

    A folder of another config is refused as ``run`` would; a finished run has its own
    report, and a run with no result yet has nothing to report (ValueError, one line)."""
    out = Path(out_dir)
    config = config.with_recorded_defaults(out)
    state = run_state(config, out)
    if state != "partial":
        raise ValueError(
            f"run --interim: {out} "
            + ("is finished: its report is report.md" if state == "finished" else "holds no run")
        )
    runs = finished_runs(config, out)
    planned = {a: [str(s) for s in arm_seeds(config, a)] for a in arm_order(config)}
    missing = [f"{a} seed {s}" for a, seeds in planned.items() for s in seeds
               if s not in runs.get(a, {})]  # fmt: skip
    if not runs:
        raise ValueError(f"run --interim: {out} has no finished arm × seed result yet")
    context = check_inputs(config, load=False)
    record = json.loads((out / "provenance.json").read_text(encoding="utf-8"))
    results = collect_results(config, context, out, runs, record, _interim_probe(config, out),
                              planned=planned)  # fmt: skip
    done = sum(len(seeds) for seeds in runs.values())
    results["interim"] = {"finished": done, "planned": done + len(missing), "missing": missing}
    if command:
        results["interim"]["command"] = command
    validate_results(results)
    write_json_atomic(out / INTERIM, results)
    return write_report(out, command=command, results_file=INTERIM)


def _interim_probe(config: ExperimentConfig, out: Path) -> Path | None:
    """``probe/interim/probe.json`` merged from the probe parts made so far (the run's own
    ``probe/probe.json`` once it exists); None when the config probes nothing or no part
    is there yet."""
    if config.probe is None:
        return None
    folder = out / "probe"
    if (folder / "probe.json").is_file():
        return folder / "probe.json"
    names = ["base", *(a for a in arm_order(config) if config.arm(a).kind == "train")]
    parts = [folder / "parts" / n / "probe.json" for n in names]
    there = [p for p in parts if p.is_file()]
    if not there:
        return None
    later = {p.parent.name: "not probed yet" for p in parts if not p.is_file()}
    shutil.rmtree(folder / "interim", ignore_errors=True)  # the last interim's: redone
    return merge_probes(there, folder / "interim", not_probed=later)
