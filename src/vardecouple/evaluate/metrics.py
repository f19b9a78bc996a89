"""Corpus metrics (sacrebleu chrF++ and BLEU) and paired bootstrap resampling.

Scores come from sacrebleu's own metric classes; nothing is re-implemented.
The bootstrap uses their sufficient statistics: each hypothesis list is scored
once into per-sentence rows ``S ∈ N^{n×k}`` (``_extract_corpus_statistics``),
and a resample with sentence counts ``c ∈ N^n`` (``Σ c = n``) scores
``_compute_score_from_stats(cᵀS)`` — so ``N`` resamples are one matrix product
``C S`` (``C ∈ N^{N×n}``) plus ``N`` cheap score calls.

Indices are drawn as ``numpy.random.default_rng(seed).choice(n, (N, n))``, the
very draw of ``sacrebleu.significance._paired_bs_test``; resampled sums are
scored in float32 like sacrebleu's (exact for integer sums below 2²⁴), so one
block with one seed each and ``p_value_method="sacrebleu"`` reproduces
sacrebleu's paired bootstrap p-value, and :func:`resample_scores` its system
mean/CI, bit for bit at the same seed (sacrebleu's default is 12345).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from sacrebleu.metrics import BLEU, CHRF

__all__ = [
    "METRICS",
    "BootstrapResult",
    "bootstrap_ci",
    "corpus_scores",
    "metric",
    "p_value",
    "paired_bootstrap",
    "paired_deltas",
    "resample_scores",
    "signatures",
]

METRICS: tuple[str, ...] = ("chrf++", "bleu")
PValueMethod = Literal["shifted", "sacrebleu"]
#: one block: (references, system A's hypotheses per seed, system B's per seed)
Block = tuple[Sequence[str], Sequence[Sequence[str]], Sequence[Sequence[str]]]

_FLOAT32_EXACT = 2**24


def metric(name: str) -> Any:
    """A fresh sacrebleu metric: ``chrf++`` → ``CHRF(word_order=2)``, ``bleu`` → ``BLEU()``."""
    return _make(name)


def _make(name: str, references: Sequence[Sequence[str]] | None = None) -> Any:
    """:func:`metric`, with ``references`` (sacrebleu's ``[refs]``) cached in the object."""
    if name == "chrf++":
        return CHRF(word_order=2, references=references)
    if name == "bleu":
        return BLEU(references=references)
    raise ValueError(f"unknown metric {name!r}; expected one of {', '.join(METRICS)}")


def signatures() -> dict[str, str]:
    """sacrebleu signature per metric (one reference per segment, as everywhere here)."""
    out = {}
    for name in METRICS:
        m = metric(name)
        m.corpus_score(["a"], [["a"]])  # sacrebleu fixes nrefs only once it has seen references
        out[name] = m.get_signature().format()
    return out


def _check_refs(refs: Sequence[str]) -> None:
    if isinstance(refs, str) or len(refs) == 0:
        raise ValueError("no references: need a non-empty list of strings")
    if not all(isinstance(s, str) for s in refs):
        raise ValueError("references must be strings")


def _check_pair(hyps: Sequence[str], refs: Sequence[str], what: str = "hypotheses") -> None:
    _check_refs(refs)
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} {what} but {len(refs)} references; need one per reference")
    if not all(isinstance(s, str) for s in hyps):
        raise ValueError(f"{what} must be strings")


def corpus_scores(hyps: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """Corpus chrF++ and BLEU (0–100) of ``hyps`` against one reference each."""
    _check_pair(hyps, refs)
    return {
        name: float(metric(name).corpus_score(list(hyps), [list(refs)]).score) for name in METRICS
    }


def _stats(m: Any, hyps: Sequence[str]) -> np.ndarray:
    """Per-sentence sufficient statistics (n × k) against ``m``'s cached references."""
    return np.asarray(m._extract_corpus_statistics(list(hyps), None), dtype=np.float64)


def _observed(m: Any, stats: np.ndarray) -> float:
    # integer sums, scored as sacrebleu's corpus_score does (Python/float64 arithmetic)
    return float(m._compute_score_from_stats(stats.sum(0).astype(np.int64).tolist()).score)


def _resampled(m: Any, counts: np.ndarray, stats: np.ndarray) -> np.ndarray:
    """Score of every resample: row i is ``score(counts[i] @ stats)``."""
    sums = counts @ stats
    if sums.max(initial=0.0) < _FLOAT32_EXACT:
        sums = sums.astype(np.float32)  # as sacrebleu: exact, and bit-identical scores
    return np.array([m._compute_score_from_stats(row).score for row in sums], dtype=np.float64)


def _counts(rng: np.random.Generator, n: int, n_samples: int) -> np.ndarray:
    """(n_samples × n) multiplicities of a with-replacement resample of n indices.

    Drawn exactly as sacrebleu draws its index matrix, then counted per row.
    """
    idx = rng.choice(n, size=(n_samples, n), replace=True)
    flat = (idx + n * np.arange(n_samples)[:, None]).ravel()
    return np.bincount(flat, minlength=n_samples * n).reshape(n_samples, n).astype(np.float64)


def _system(
    m: Any, counts: np.ndarray, refs: Sequence[str], per_seed: Sequence[Sequence[str]], label: str
) -> tuple[float, np.ndarray]:
    """Mean over seeds of the observed score and of each resampled score."""
    if isinstance(per_seed, str) or len(per_seed) == 0:
        raise ValueError(f"{label}: give a list of hypothesis lists (one per seed), at least one")
    obs, res = [], []
    for j, hyps in enumerate(per_seed):
        if isinstance(hyps, str):
            raise ValueError(f"{label}: seed {j} is a string; expected a list of hypotheses")
        _check_pair(hyps, refs, f"{label} seed-{j} hypotheses")
        stats = _stats(m, hyps)
        obs.append(_observed(m, stats))
        res.append(_resampled(m, counts, stats))
    return float(np.mean(obs)), np.mean(res, axis=0)


def _check_args(name: str, n_samples: int) -> None:
    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; expected one of {', '.join(METRICS)}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be ≥ 1, got {n_samples}")


def resample_scores(
    refs: Sequence[str],
    hyps_per_seed: Sequence[Sequence[str]],
    metric: str = "chrf++",
    n_samples: int = 1000,
    seed: int = 0,
) -> tuple[float, np.ndarray]:
    """One system's score ``x̄ = mean_seeds score(hyps_s)`` and its ``n_samples`` resamples.

    Resample i draws sentence indices ``I_i`` (with replacement, shared by all
    seeds) and gives ``x̄*_i = mean_s score(hyps_s[I_i])``.
    """
    _check_args(metric, n_samples)
    _check_refs(refs)
    m = _make(metric, [list(refs)])
    counts = _counts(np.random.default_rng(seed), len(refs), n_samples)
    return _system(m, counts, refs, hyps_per_seed, "system")


def bootstrap_ci(
    refs: Sequence[str],
    hyps_per_seed: Sequence[Sequence[str]],
    metric: str = "chrf++",
    n_samples: int = 1000,
    seed: int = 0,
) -> tuple[float, tuple[float, float]]:
    """Observed score and 95% percentile interval (2.5th, 97.5th of the resamples)."""
    score, res = resample_scores(refs, hyps_per_seed, metric, n_samples, seed)
    lo, hi = np.percentile(res, [2.5, 97.5])
    return score, (float(lo), float(hi))


def paired_deltas(
    blocks: Sequence[Block], metric: str = "chrf++", n_samples: int = 1000, seed: int = 0
) -> tuple[float, np.ndarray]:
    """Observed statistic ``δ̂`` and its ``n_samples`` paired-bootstrap replicates ``δ*``.

    ``δ = (1/B) Σ_b [mean_{s∈A} score(A_{b,s}) − mean_{s∈B} score(B_{b,s})]``.
    Replicate i draws indices ``I_{b,i}`` independently per block (one
    ``default_rng(seed)`` stream, blocks in order) and shares them across all
    seeds and both systems of that block (paired).
    """
    _check_args(metric, n_samples)
    if len(blocks) == 0:
        raise ValueError("no blocks: give at least one (refs, hyps_a, hyps_b) block")
    rng = np.random.default_rng(seed)
    obs, res = [], []
    for b, block in enumerate(blocks):
        if len(block) != 3:
            raise ValueError(f"block {b}: expected (refs, hyps_a_per_seed, hyps_b_per_seed)")
        refs, hyps_a, hyps_b = block
        _check_refs(refs)
        m = _make(metric, [list(refs)])
        counts = _counts(rng, len(refs), n_samples)
        a_obs, a_res = _system(m, counts, refs, hyps_a, f"block {b} system A")
        b_obs, b_res = _system(m, counts, refs, hyps_b, f"block {b} system B")
        obs.append(a_obs - b_obs)
        res.append(a_res - b_res)
    return float(np.mean(obs)), np.mean(res, axis=0)


def p_value(observed: float, replicates: np.ndarray, method: PValueMethod = "shifted") -> float:
    """Two-sided bootstrap p-value of ``H0: δ = 0``, with +1 smoothing.

    ``shifted`` (Koehn 2004; Clark et al. 2011): the replicates centred on
    ``δ̂`` approximate the null, ``p = (1 + #{i: |δ*_i − δ̂| ≥ |δ̂|}) / (N + 1)``;
    identical systems give ``p = 1``.

    ``sacrebleu`` (``sacrebleu.significance._paired_bs_test``):
    ``a_i = |δ*_i|``, ``p = (1 + #{i: a_i − ā > |δ̂|}) / (N + 1)``. Its strict ``>``
    and centring of absolute values give identical systems ``p = 1/(N + 1)``.
    """
    reps = np.asarray(replicates, dtype=np.float64)
    if method == "shifted":
        c = int(np.sum(np.abs(reps - observed) >= abs(observed)))
    elif method == "sacrebleu":
        a = np.abs(reps)
        c = int(np.sum(a - a.mean() > abs(observed)))
    else:
        raise ValueError(f"unknown p-value method {method!r}; expected 'shifted' or 'sacrebleu'")
    return (c + 1) / (len(reps) + 1)


@dataclass(frozen=True)
class BootstrapResult:
    """A paired bootstrap comparison of system A against system B (``delta = A − B``).

    Attributes:
        delta: observed statistic (mean over blocks of mean-over-seeds differences).
        ci95: 2.5th and 97.5th percentiles of the resampled statistic.
        p_value: two-sided, see :func:`p_value`.
        n_samples, seed: the resampling settings.
        metric: ``chrf++`` or ``bleu``.
        p_value_method: ``shifted`` or ``sacrebleu``.
    """

    delta: float
    ci95: tuple[float, float]
    p_value: float
    n_samples: int
    seed: int
    metric: str = "chrf++"
    p_value_method: str = "shifted"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"delta", "ci95": [lo, hi], "p_value", ...settings}``."""
        return {
            "delta": self.delta,
            "ci95": [self.ci95[0], self.ci95[1]],
            "p_value": self.p_value,
            "n_samples": self.n_samples,
            "seed": self.seed,
            "metric": self.metric,
            "p_value_method": self.p_value_method,
        }


def paired_bootstrap(
    blocks: Sequence[Block],
    metric: str = "chrf++",
    n_samples: int = 1000,
    seed: int = 0,
    p_value_method: PValueMethod = "shifted",
) -> BootstrapResult:
    """Paired bootstrap of A − B over blocks (directions/varieties) and seeds.

    Each block is ``(refs, hyps_a_per_seed, hyps_b_per_seed)``; seed counts may
    differ between A and B. See :func:`paired_deltas` and :func:`p_value`.
    """
    if p_value_method not in ("shifted", "sacrebleu"):
        raise ValueError(f"unknown p-value method {p_value_method!r}")
    delta, reps = paired_deltas(blocks, metric, n_samples, seed)
    lo, hi = np.percentile(reps, [2.5, 97.5])
    return BootstrapResult(
        delta=delta,
        ci95=(float(lo), float(hi)),
        p_value=p_value(delta, reps, p_value_method),
        n_samples=n_samples,
        seed=seed,
        metric=metric,
        p_value_method=p_value_method,
    )
