"""The results contract (``docs/results-contract.md``): ``results.json``, its schema,
provenance and the numbers derived from the per-run metrics.

- :func:`validate_results` checks a results dict against the JSON Schema shipped in
  ``schemas/results.schema.json`` (``schema_version`` 1).
- :func:`provenance`: package versions, git SHA, the model weights' SHA-256, command,
  machine and start time.
- :func:`summarize`: mean and sample sd over seeds per arm, direction and metric.
- :func:`paired_deltas`: the paired bootstrap of one arm's score minus another's, per
  direction, for the mean over the low-resource directions (``mean_low_resource``) and
  over the directions into the standard variety (``mean_standard``, the trade-off);
  sentences resampled paired across systems, seeds averaged inside each resample.
  :func:`deltas_vs_standard`: every arm against ``standard``; :func:`deltas_vs_matched`:
  every arm magnitude-matched to another (``decoupled`` − ``random-matched``).
"""

from __future__ import annotations

import platform
import statistics
import subprocess
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from vardecouple.evaluate.metrics import METRICS as CORPUS_METRICS
from vardecouple.evaluate.metrics import corpus_scores, paired_bootstrap
from vardecouple.io import sha256_file
from vardecouple.report.data import schema_problem

__all__ = [
    "compared_runs",
    "deltas_vs_matched",
    "deltas_vs_standard",
    "paired_deltas",
    "provenance",
    "summarize",
    "validate_results",
]

METRICS = (*CORPUS_METRICS, "target_variety_rate")  # what the summary and report compare


def provenance(source: str, command: str) -> dict[str, Any]:

    try:
        sha = (
            subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=Path(__file__).parent,
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        sha = None
    src = Path(source)
    weights = sorted(src.glob("*.safetensors")) if src.is_dir() else [src] if src.is_file() else []
    digest = None
    if weights:
        digest = ",".join(sha256_file(w) for w in weights)
    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.exists():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in info.read_text().splitlines()
            if ln.startswith("model name")
        ]
        cpu = f"{names[0]} x{len(names)}" if names else cpu
    return {
        **{
            name: version(name)
            for name in ("vardecouple", "torch", "transformers", "peft", "sacrebleu")
        },
        "git_sha": sha,
        "model_sha256": digest,
        "command": command,
        "machine": f"{platform.system()} {platform.release()}, {cpu}, torch threads "
        f"{torch.get_num_threads()}",
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def mean_sd(values: list[float]) -> dict[str, Any]:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "n_seeds": len(values)}


def validate_results(results: dict[str, Any]) -> None:
    """Check ``results`` against the shipped JSON Schema (``schemas/results.schema.json``)."""
    problem = schema_problem(results)
    if problem is not None:
        raise ValueError(f"results.json: {problem[0] or '(top)'}: {problem[1]}")


def summarize(runs: Mapping[str, Mapping[str, Any]], directions: Sequence[str]) -> dict[str, Any]:
    """``summary[ARM][DIRECTION][METRIC] = {mean, sd, n_seeds}`` over the arm's seeds."""
    return {
        arm: {
            d: {m: mean_sd([seeds[s]["metrics"][d][m] for s in seeds]) for m in METRICS}
            for d in directions
        }
        for arm, seeds in runs.items()
    }


def paired_deltas(
    minuend: str,
    subtrahend: str,
    runs: Mapping[str, Mapping[str, Any]],
    refs: Mapping[str, list[str]],
    kinds: Mapping[str, str],
    hypotheses: Callable[[str, str, str], list[str]],
    *,
    n_samples: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The paired bootstrap of ``minuend``'s score minus ``subtrahend``'s, per direction,
    over the low-resource directions (``mean_low_resource``) and over those into the
    standard (``mean_standard``); chrF++ and BLEU.

    ``hypotheses(arm, seed, direction)`` reads one run's outputs; ``refs`` and ``kinds``
    are per direction. Where the two arms were scored on different numbers of sentences
    (``[arms.NAME] max_examples``), both are compared on the first rows they share. Each
    entry also has ``per_seed``: for every seed both arms ran, the same difference of
    corpus scores on that seed alone (no resampling).
    """

    def block(d: str) -> tuple[list[str], list[list[str]], list[list[str]]]:
        a = [hypotheses(minuend, s, d) for s in runs[minuend]]
        b = [hypotheses(subtrahend, s, d) for s in runs[subtrahend]]
        n = min(len(refs[d]), *(len(h) for h in a + b))
        return refs[d][:n], [h[:n] for h in a], [h[:n] for h in b]

    low = [d for d in refs if kinds[d] == "low-resource"]
    into = [d for d in refs if kinds[d] == "standard"]
    groups = [(d, [d]) for d in refs]
    groups += [
        (name, ds) for name, ds in (("mean_low_resource", low), ("mean_standard", into)) if ds
    ]
    # each seed both arms ran, compared with itself: the spread the bootstrap (which
    # resamples sentences, seeds averaged inside) does not show
    shared = [s for s in runs[minuend] if s in runs[subtrahend]]
    blocks = {d: block(d) for d in refs}
    order = {"a": list(runs[minuend]), "b": list(runs[subtrahend])}
    scores: dict[tuple[str, str, str], dict[str, float]] = {}
    for d, (ref, a, b) in blocks.items():
        for s in shared:
            scores["a", s, d] = corpus_scores(a[order["a"].index(s)], ref)
            scores["b", s, d] = corpus_scores(b[order["b"].index(s)], ref)

    def per_seed(dirs: list[str], m: str) -> dict[str, float]:
        return {s: sum(scores["a", s, d][m] - scores["b", s, d][m] for d in dirs) / len(dirs)
                for s in shared}  # fmt: skip

    return {
        name: {
            m: paired_bootstrap([blocks[d] for d in dirs], metric=m, n_samples=n_samples,
                                seed=seed).to_dict() | {"per_seed": per_seed(dirs, m)}
            for m in ("chrf++", "bleu")
        }
        for name, dirs in groups
    }  # fmt: skip


def deltas_vs_standard(
    runs: Mapping[str, Mapping[str, Any]],
    refs: Mapping[str, list[str]],
    kinds: Mapping[str, str],
    hypotheses: Callable[[str, str, str], list[str]],
    *,
    n_samples: int = 1000,
    seed: int = 0,
    planned: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """:func:`paired_deltas` of every arm against ``standard`` (empty without it);
    ``planned``: see :func:`compared_runs`."""
    if "standard" not in runs:
        return {}
    pairs = {arm: compared_runs(runs, arm, "standard", planned) for arm in runs}
    return {
        arm: paired_deltas(arm, "standard", view, refs, kinds, hypotheses,
                           n_samples=n_samples, seed=seed)
        for arm, view in pairs.items()
        if arm != "standard" and view
    }  # fmt: skip


def deltas_vs_matched(
    matched: Mapping[str, str],
    runs: Mapping[str, Mapping[str, Any]],
    refs: Mapping[str, list[str]],
    kinds: Mapping[str, str],
    hypotheses: Callable[[str, str, str], list[str]],
    *,
    n_samples: int = 1000,
    seed: int = 0,
    planned: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Any]:
    """For each magnitude-matched arm (``matched[arm]`` = the arm it is matched to, its
    ``match_penalty_of``): :func:`paired_deltas` of that arm minus the matched one, e.g.
    ``decoupled`` − ``random-matched``: the probe's subspace against a random one penalised
    as strongly at step 0. ``planned``: see :func:`compared_runs`."""
    pairs = {arm: compared_runs(runs, target, arm, planned) for arm, target in matched.items()}
    return {
        arm: {
            "of": matched[arm],
            "deltas": paired_deltas(matched[arm], arm, view, refs, kinds, hypotheses,
                                    n_samples=n_samples, seed=seed),
        }
        for arm, view in pairs.items()
        if view
    }  # fmt: skip


def compared_runs(
    runs: Mapping[str, Mapping[str, Any]],
    a: str,
    b: str,
    planned: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Mapping[str, Any]]:
    """The runs of arms ``a`` and ``b`` that their comparison uses ({} when one has none).

    Without ``planned``, every seed of each. With ``planned`` (each arm's seeds in the
    config; an interim record, made before every seed is there), two arms planned on the
    same seeds keep the seeds both have finished, so that their delta compares like with
    like; arms planned on other seeds (``base`` on the first one) keep every seed."""
    view = {arm: runs.get(arm, {}) for arm in (a, b)}
    if planned is not None and list(planned.get(a, ())) == list(planned.get(b, ())):
        shared = [s for s in view[a] if s in view[b]]
        view = {arm: {s: view[arm][s] for s in shared} for arm in (a, b)}
    return view if all(view.values()) else {}
