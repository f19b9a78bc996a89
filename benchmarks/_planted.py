"""Planted families and estimators fitted to them: what ``subspace_recovery.py``,
``subspace_targets.py`` and ``probe_diagnosis.py`` share (and ``probe_gemma.py`` the
held-out accuracy).

The family: d = 640 (the hidden width of gemma3-270m), a rank-4 standard subspace of
variance SNR, 4 non-standard varieties, each offset by sqrt(SNR) noise standard
deviations along its own discriminating direction, classes balanced.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

from torch import Tensor

from vardecouple.probes.base import SubspaceEstimator
from vardecouple.probes.synthetic import PlantedVarieties, planted_varieties
from vardecouple.subspace import principal_angles

DIM = 640  # hidden width of Gemma-3-270m
RANK = 4
N_VARIETIES = 4
#: the warning of a probe asked for more directions than its classes give (silenced)
CAPPED = r".*capped at.*"


def separation(snr: float) -> float:
    """Offset of each non-standard variety, in noise standard deviations: sqrt(SNR)."""
    return snr**0.5


def draw(
    n: int,
    snr: float,
    seed: int,
    *,
    support: int | None = None,
    noise_variances: Tensor | None = None,
    sample_seed: int | None = None,
) -> PlantedVarieties:
    """``n`` states of the family (``seed``: the planted bases; ``sample_seed``, default
    ``seed``: the states). ``support`` restricts each discriminating direction to that
    many random coordinates (``None``: dense); ``noise_variances`` makes the noise
    anisotropic."""
    return planted_varieties(
        n,
        DIM,
        RANK,
        n_varieties=N_VARIETIES,
        snr=snr,
        separation=separation(snr),
        support=support,
        noise_variances=noise_variances,
        seed=seed,
        sample_seed=sample_seed,
    )


def quietly(call: Callable[[], Any], ignore: str = CAPPED) -> Any:
    """``call()`` with the warnings whose message matches ``ignore`` silenced (``""``: all)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=ignore)
        return call()


def timed_fit(
    est: SubspaceEstimator, states: Tensor, labels: Tensor, ignore: str = CAPPED
) -> tuple[Any, float]:
    """``est.fit(states, labels)`` (warnings as :func:`quietly`) and its wall seconds."""
    start = time.perf_counter()
    sub = quietly(lambda: est.fit(states, labels), ignore)
    return sub, time.perf_counter() - start


def largest_angle(basis: Tensor, target: Tensor) -> float:
    """Largest principal angle (degrees); 90 when the estimate lacks a target dimension."""
    if basis.shape[1] < target.shape[1]:
        return 90.0
    return float(principal_angles(basis, target).max())


def midpoint_scores(w: Tensor, fit_x: Tensor, fit_y: Tensor, x: Tensor) -> Tensor:
    """The projections of ``x`` on ``w`` minus the midpoint of the standard's (label 0)
    and the pooled rest's projected means on the fit states, signed so that the rest
    lies above: a score > 0 reads "not standard"."""
    w = w.double()
    zf = fit_x.double() @ w
    standard, rest = float(zf[fit_y == 0].mean()), float(zf[fit_y > 0].mean())
    sign = 1.0 if rest > standard else -1.0
    return sign * (x.double() @ w - (standard + rest) / 2)


def balanced(score: Tensor, is_rest: Tensor) -> float:
    """Balanced accuracy of ``score > 0`` as the prediction of ``is_rest``."""
    return 0.5 * (
        float((score[~is_rest] <= 0).double().mean()) + float((score[is_rest] > 0).double().mean())
    )


def balanced_accuracy(direction: Tensor, train: PlantedVarieties, test: PlantedVarieties) -> float:
    """Held-out balanced accuracy (standard vs the rest) of the 1-D projection on
    ``direction`` (``d × 1``), thresholded at the midpoint of ``train``'s class means."""
    z = midpoint_scores(direction[:, 0], train.states, train.labels, test.states)
    return balanced(z, test.labels > 0)
