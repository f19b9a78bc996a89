"""The planted family: anisotropic noise and the Bayes-optimal directions it implies."""

from __future__ import annotations

import pytest
import torch

from vardecouple.probes.synthetic import planted_varieties
from vardecouple.subspace import principal_angles


def _variances(d: int, seed: int = 0) -> torch.Tensor:
    """A spectrum over four orders of magnitude, in a random coordinate order."""
    g = torch.Generator().manual_seed(seed)
    v = torch.logspace(2, -2, d, dtype=torch.float64)
    return v[torch.randperm(d, generator=g)]


def test_unit_noise_variances_draw_exactly_the_isotropic_family() -> None:
    iso = planted_varieties(300, 24, 2, n_varieties=3, seed=5)
    ones = planted_varieties(300, 24, 2, n_varieties=3, seed=5, noise_variances=torch.ones(24))
    assert torch.equal(iso.states, ones.states)
    assert torch.equal(iso.labels, ones.labels)
    assert torch.equal(iso.discriminating_basis, ones.discriminating_basis)


def test_within_covariance_matches_a_large_sample() -> None:
    d, v = 12, _variances(12)
    p = planted_varieties(200_000, d, 2, n_varieties=3, snr=5.0, noise_variances=v, seed=1)
    x, y = p.states.double(), p.labels
    means = torch.stack([x[y == c].mean(0) for c in range(4)])
    centred = x - means[y]
    empirical = centred.T @ centred / (x.shape[0] - 4)
    truth = p.within_covariance()
    # each entry within 3% of the matrix's scale (a sample of 200k states)
    assert (empirical - truth).abs().max() < 0.03 * truth.diagonal().max()
    assert torch.allclose(empirical.diagonal(), truth.diagonal(), rtol=0.03)


def test_bayes_direction_is_the_mean_difference_under_isotropic_noise() -> None:
    # D ⟂ U_s, so (I + snr U Uᵀ)⁻¹ D = D
    p = planted_varieties(100, 40, 3, n_varieties=4, snr=50.0, seed=2)
    for classes, target in (
        ("all", p.discriminating_basis),
        ("standard-vs-rest", p.standard_vs_rest_direction),
    ):
        angles = principal_angles(p.bayes_direction(classes), target)
        assert float(angles.max()) < 0.01


def test_bayes_direction_under_anisotropic_noise_is_the_direct_solve() -> None:
    d, v = 30, _variances(30, seed=3)
    p = planted_varieties(100, d, 2, n_varieties=2, snr=10.0, noise_variances=v, seed=4)
    u = p.standard_basis.double()
    cov = torch.diag(v) + 10.0 * u @ u.T
    # Δμ of the pooled rest (labels balanced, so both non-standard varieties weigh alike)
    delta = p.discriminating_basis.double().sum(1, keepdim=True)
    direct = torch.linalg.inv(cov) @ delta
    assert float(principal_angles(p.bayes_direction(), direct).max()) < 0.05
    # and far from the mean difference itself: that is what makes the family anisotropic
    assert float(principal_angles(p.bayes_direction(), delta).max()) > 20.0


def test_bad_noise_variances_are_refused() -> None:
    with pytest.raises(ValueError, match="noise_variances must be 8 positive"):
        planted_varieties(20, 8, 1, noise_variances=torch.ones(7))
    with pytest.raises(ValueError, match="noise_variances must be 8 positive"):
        planted_varieties(20, 8, 1, noise_variances=torch.zeros(8))
