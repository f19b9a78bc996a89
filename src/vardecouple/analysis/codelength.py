r"""How many bits the labels cost given the states (MDL probing).

Every function takes state matrices (``torch.Tensor`` or ``numpy.ndarray``; rows =
sentences, columns = hidden dimensions).

Codelengths of labels ``y ∈ {1..K}`` given features (bits), each with
``compression = N·H(p̂) / codelength`` where ``p̂`` is the empirical label distribution:
a probe that learns only the class frequencies scores 1.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from torch import Tensor

from vardecouple.analysis.geometry import Matrix, as_matrix
from vardecouple.probes import make_estimator

__all__ = [
    "VOITA_TITOV_FRACTIONS",
    "OnlineBlock",
    "OnlineCode",
    "VariationalCode",
    "online_codelength",
    "variational_codelength",
]

VOITA_TITOV_FRACTIONS: tuple[float, ...] = (
    0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.0625, 0.125, 0.25, 0.5, 1.0,
)  # fmt: skip
"""Block ends of Voita & Titov (2020): 0.1 % … 100 % of the data."""


# ----------------------------------------------------------------------- codelengths
def _labels(labels: Matrix, n: int) -> tuple[np.ndarray, int]:
    """Labels as codes ``0..K−1`` (sorted label values) and ``K``."""
    raw = np.asarray(labels.cpu() if isinstance(labels, Tensor) else labels)
    if raw.ndim != 1 or raw.shape[0] != n:
        raise ValueError(f"labels: expected a 1-D array of length {n}, got {raw.shape}")
    if not np.issubdtype(raw.dtype, np.integer):
        raise ValueError(f"labels: expected integers, got {raw.dtype}")
    values, codes = np.unique(raw, return_inverse=True)
    if len(values) < 2:
        raise ValueError("labels: need at least 2 distinct classes")
    return codes.astype(np.int64), len(values)


def _prior_bits(codes: np.ndarray, k: int) -> float:
    """``N · H(p̂)`` in bits, ``p̂`` the empirical label distribution."""
    p = np.bincount(codes, minlength=k) / len(codes)
    p = p[p > 0]
    return float(-len(codes) * (p * np.log2(p)).sum())


@dataclass(frozen=True)
class OnlineBlock:
    """Rows ``[start, end)``, sent after training on ``[0, start)``: mixture and per-``C`` bits."""

    start: int
    end: int
    bits: float
    bits_by_c: tuple[float, ...]


@dataclass(frozen=True)
class OnlineCode:
    """The prequential code of a label sequence (bits) and its yardsticks."""

    codelength_bits: float  # the mixture over ``cs``
    uniform_bits: float  # N · log2 K
    prior_bits: float  # N · H(empirical label distribution)
    compression: float  # prior_bits / codelength_bits
    num_examples: int
    num_classes: int
    cs: tuple[float, ...]
    bits_by_c: tuple[float, ...]  # each strategy's own online code
    blocks: tuple[OnlineBlock, ...]


def _block_ends(n: int, fractions: tuple[float, ...]) -> list[int]:
    fr = [float(f) for f in fractions]
    if not fr or fr[0] <= 0 or any(b <= a for a, b in itertools.pairwise(fr)):
        raise ValueError(f"fractions: expected strictly increasing values in (0, 1], got {fr}")
    if fr[-1] != 1.0:
        raise ValueError(f"fractions: the last block must end at 1.0, got {fr[-1]}")
    return sorted({min(n, max(1, round(f * n))) for f in fr})


def _mixture_bits(cumulative: np.ndarray) -> float:
    """``−log2((1/S) Σ_s 2^{−L_s})``, computed stably."""
    low = cumulative.min()
    return float(low - np.log2(np.mean(np.exp2(low - cumulative))))


def _block_bits(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    k: int,
    strategies: tuple[float, ...],
    *,
    max_iter: int,
    seed: int,
) -> tuple[float, ...]:
    """Bits of ``y_test`` under each strategy trained on the rows before (see below)."""

    t, rows = len(y_train), np.arange(len(y_test))
    seen = np.unique(y_train)
    if len(seen) > 1:
        scaler = StandardScaler().fit(x_train)
        train, test = scaler.transform(x_train), scaler.transform(x_test)
    out = []
    for c in strategies:
        q = np.zeros((len(y_test), k))
        if len(seen) < 2:
            q[:, seen[0]] = 1.0
        elif c == 0.0:
            q[:] = np.bincount(y_train, minlength=k) / t
        else:
            probe = LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter
                probe.fit(train, y_train)
            q[:, probe.classes_] = probe.predict_proba(test)
        p = (t * q + 1.0) / (t + k)  # Laplace-style smoothing towards uniform
        out.append(float(-np.log2(p[rows, y_test]).sum()))
    return tuple(out)


def online_codelength(
    features: Matrix,
    labels: Matrix,
    *,
    fractions: tuple[float, ...] = VOITA_TITOV_FRACTIONS,
    seed: int = 0,
    cs: tuple[float, ...] = (0.0, 0.001, 0.01, 0.1, 1.0),
    max_iter: int = 300,
    threads: int | None = 1,
) -> OnlineCode:
    r"""Online (prequential) codelength of ``labels`` given ``features`` (Voita & Titov 2020).

    The rows are shuffled with ``seed`` and cut at ``t_j = round(f_j N)`` (duplicates
    merged). The first block is sent with the uniform code, :math:`t_1 \log_2 K` bits;
    block :math:`[t_j, t_{j+1})` with a probe trained on rows :math:`[0, t_j)`:

    .. math:: L_C = t_1 \log_2 K - \sum_j \sum_{i=t_j}^{t_{j+1}-1} \log_2 p_{C,j}(y_i \mid x_i).

    The probe is multinomial logistic regression (scikit-learn L-BFGS, ``max_iter``,
    deterministic; minimises ``Σ_i CE_i + ‖W‖²/(2C)``, intercept unpenalised) on features
    standardised with the training rows' statistics; ``C = 0`` means no features, the
    class frequencies alone. Its ``K``-class distribution ``q`` is zero for classes
    absent from the training rows (a single-class training set gives the point mass on
    it) and is smoothed towards uniform,

    .. math:: p_{C,j} = \frac{t_j}{t_j + K}\, q + \frac{K}{t_j + K} \cdot \frac1K,

    the weight that turns the maximum-likelihood class-frequency model into Laplace's
    rule ``(n_y + 1)/(t_j + K)``: every class keeps at least :math:`1/(t_j + K)`, at a
    cost of at most :math:`\log_2(1 + K/t_j)` bits per row.

    The regularisation strength is not tuned on the data being coded: the code is the
    Bayesian mixture of the online codes of the ``S`` strategies ``cs`` (uniform weights,
    updated sequentially), :math:`L = -\log_2 \frac1S \sum_C 2^{-L_C}
    \in [\min_C L_C, \min_C L_C + \log_2 S]`. With ``0`` among ``cs`` a probe that
    finds nothing beyond the class frequencies scores ≈ 1 whatever the dimension (one
    fixed ``C`` overfits random labels in high dimension: compression well below 1);
    ``cs=(1.0,)`` is the single-probe code of Voita & Titov.

    The fits run with ``threads`` BLAS/OpenMP threads (``threadpoolctl``; ``None``
    leaves the pools alone): on these small problems more threads are slower.
    """
    x = as_matrix(features, "features").numpy()
    n = x.shape[0]
    codes, k = _labels(labels, n)
    strategies = tuple(float(c) for c in cs)
    if not strategies or any(not c >= 0 for c in strategies):
        raise ValueError(f"cs: expected a non-empty tuple of values >= 0, got {cs!r}")
    order = np.random.default_rng(seed).permutation(n)
    x, codes = x[order], codes[order]
    ends = _block_ends(n, fractions)
    first = ends[0] * math.log2(k)
    cumulative = np.full(len(strategies), first)
    blocks = [OnlineBlock(0, ends[0], first, (first,) * len(strategies))]
    with threadpool_limits(limits=threads):
        for start, end in itertools.pairwise(ends):
            bits = _block_bits(x[:start], codes[:start], x[start:end], codes[start:end], k,
                               strategies, max_iter=max_iter, seed=seed)  # fmt: skip
            before = _mixture_bits(cumulative)
            cumulative += bits
            blocks.append(OnlineBlock(start, end, _mixture_bits(cumulative) - before, bits))
    total = _mixture_bits(cumulative)
    prior = _prior_bits(codes, k)
    return OnlineCode(
        codelength_bits=total,
        uniform_bits=n * math.log2(k),
        prior_bits=prior,
        compression=prior / total,
        num_examples=n,
        num_classes=k,
        cs=strategies,
        bits_by_c=tuple(float(v) for v in cumulative),
        blocks=tuple(blocks),
    )


@dataclass(frozen=True)
class VariationalCode:
    """The variational code (the paper's MDL) of a label set, in bits."""

    codelength_bits: float  # data_bits + model_bits
    data_bits: float  # E_q[Σ_i −log2 p(y_i | x_i)]
    model_bits: float  # KL(q ‖ prior) / ln 2
    uniform_bits: float  # N · log2 K
    prior_bits: float  # N · H(empirical label distribution)
    compression: float  # prior_bits / codelength_bits
    num_classes: int


def variational_codelength(
    features: Matrix, labels: Matrix, *, seed: int = 0, **options: Any
) -> VariationalCode:
    r"""Variational codelength of ``labels`` given ``features``: the repo's ``variational`` probe.

    A ``K``-logit :class:`~vardecouple.probes.variational.VariationalProbeEstimator`
    (``classes="all"``, labels mapped to ``0..K−1`` in sorted order) is fitted to all rows
    and the code is its negative ELBO,
    :math:`(\mathbb E_q[\sum_i \mathrm{CE}_i] + \mathrm{KL}(q\,\|\,p)) / \ln 2`
    (:meth:`~vardecouple.probes.variational.VariationalProbeEstimator.codelength`).
    ``options`` go to the estimator (``fit_epochs``, ``lr``, …). If the sparse probe
    prunes every gate (labels carry no information) the code is still defined, only its
    subspace is not.
    """
    x = as_matrix(features, "features")
    codes, k = _labels(labels, x.shape[0])
    y = torch.from_numpy(codes)
    estimator = make_estimator("variational", 1, classes="all", num_classes=k, seed=seed, **options)
    try:
        estimator.fit(x, y)
    except ValueError:
        if getattr(estimator, "layer", None) is None:
            raise  # invalid input, not the "every gate was pruned" of the subspace solve
    code = estimator.codelength(x, y)  # type: ignore[attr-defined]
    prior = _prior_bits(codes, k)
    return VariationalCode(
        codelength_bits=code["total_bits"],
        data_bits=code["data_bits"],
        model_bits=code["model_bits"],
        uniform_bits=x.shape[0] * math.log2(k),
        prior_bits=prior,
        compression=prior / code["total_bits"],
        num_classes=k,
    )
