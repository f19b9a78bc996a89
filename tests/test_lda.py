"""``lda``: discriminant directions with a spiked within-variety covariance.

Checked against a direct computation, on the planted rank it must find, and on dense
planted directions at sizes the other estimator tests do not use (d = 200 and d = 640,
gemma3-270m's width): within 10° wherever ``mean-diff`` is, and not worse with 4× the
data."""

from __future__ import annotations

import statistics

import pytest
import torch

from vardecouple.probes import make_estimator
from vardecouple.probes.synthetic import planted_varieties
from vardecouple.subspace import principal_angles


def _angle(basis: torch.Tensor, target: torch.Tensor) -> float:
    return float(principal_angles(basis, target).max())


def test_lda_equals_a_direct_computation() -> None:
    p = planted_varieties(900, 40, 3, n_varieties=3, snr=30, separation=3.0, seed=4)
    x, y = p.states.double(), p.labels
    means = torch.stack([x[y == c].mean(0) for c in range(4)])
    centred = x - means[y]
    cov = centred.T @ centred / (x.shape[0] - 4)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    r = 3  # fixed here; the estimator's own choice is tested below
    spikes, vectors = evals[-r:], evecs[:, -r:]
    bulk = evals[:-r].mean()
    model = vectors @ torch.diag(spikes) @ vectors.T + bulk * (
        torch.eye(40, dtype=torch.float64) - vectors @ vectors.T
    )
    rest = x[y != 0].mean(0) - means[0]
    expected = torch.linalg.solve(model, rest)[:, None]
    est = make_estimator("lda", 1, spikes=r)
    assert _angle(est.fit(p.states, p.labels).basis.double(), expected) < 1e-3
    every = torch.linalg.solve(model, (means[1:] - means[0]).T)
    got = make_estimator("lda", 3, classes="all", spikes=r).fit(p.states, p.labels)
    assert _angle(got.basis.double(), every) < 1e-3


def test_lda_finds_the_planted_number_of_spikes() -> None:
    for rank in (2, 6):
        p = planted_varieties(6000, 120, rank, n_varieties=2, snr=40, separation=3.0, seed=1)
        est = make_estimator("lda", 1)
        est.fit(p.states, p.labels)
        assert est.last_spikes == rank


@pytest.mark.parametrize(
    ("dim", "n", "snr"),
    [(200, 8000, 50.0), (640, 8192, 200.0)],
)
def test_lda_recovers_a_dense_direction_wherever_mean_diff_does(dim, n, snr) -> None:
    lda, mean_diff = [], []
    for seed in range(3):
        p = planted_varieties(n, dim, 4, n_varieties=4, snr=snr, separation=snr**0.5, seed=seed)
        target = p.standard_vs_rest_direction
        lda.append(_angle(make_estimator("lda", 1).fit(p.states, p.labels).basis, target))
        md = make_estimator("mean-diff", 1, classes="standard-vs-rest")
        mean_diff.append(_angle(md.fit(p.states, p.labels).basis, target))
    assert max(mean_diff) <= 10, mean_diff  # the sizes are chosen so that mean-diff does
    assert max(lda) <= 10, lda


def test_lda_does_not_get_worse_with_four_times_the_data() -> None:
    medians = {}
    for n in (1024, 4096):
        angles = []
        for seed in range(3):
            p = planted_varieties(n, 640, 4, n_varieties=4, snr=200, separation=200**0.5,
                                  seed=seed)  # fmt: skip
            sub = make_estimator("lda", 1).fit(p.states, p.labels)
            angles.append(_angle(sub.basis, p.standard_vs_rest_direction))
        medians[n] = statistics.median(angles)
    assert medians[4096] <= medians[1024], medians


def test_lda_with_fewer_states_than_dimensions_keeps_the_null_space_in_the_bulk() -> None:
    # n − C = 95 degrees of freedom in d = 200: at most 94 spikes, a finite direction
    v = torch.logspace(2, -3, 200, dtype=torch.float64)
    p = planted_varieties(100, 200, 2, n_varieties=4, snr=20.0, noise_variances=v, seed=3)
    est = make_estimator("lda", 1)
    sub = est.fit(p.states, p.labels)
    assert est.last_spikes is not None and est.last_spikes <= 94
    assert bool(torch.isfinite(sub.basis).all())
    # no worse than the mean difference against the Bayes direction (it was 89° when the
    # rounding noise of the null space was counted as spikes)
    md = make_estimator("mean-diff", 1, classes="standard-vs-rest").fit(p.states, p.labels)
    bayes = p.bayes_direction()
    assert _angle(sub.basis, bayes) < _angle(md.basis, bayes)


def test_lda_finds_the_bayes_direction_of_anisotropic_states_where_mean_diff_cannot() -> None:
    # a spectrum over five orders of magnitude in a random coordinate order, n ≫ d
    g = torch.Generator().manual_seed(0)
    v = torch.logspace(3, -2, 64, dtype=torch.float64)[torch.randperm(64, generator=g)]
    p = planted_varieties(8000, 64, 2, n_varieties=4, snr=20.0, noise_variances=v, seed=1)
    bayes = p.bayes_direction()
    lda = make_estimator("lda", 1).fit(p.states, p.labels)
    md = make_estimator("mean-diff", 1, classes="standard-vs-rest").fit(p.states, p.labels)
    assert _angle(lda.basis, bayes) < 10.0
    assert _angle(md.basis, bayes) > 30.0
