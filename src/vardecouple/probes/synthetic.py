r"""A synthetic family of varieties with planted subspaces, for tests, benchmarks and demos.

States of ``m + 1`` varieties in :math:`\mathbb{R}^d` (label 0 = the standard):

.. math::

    h = \epsilon + U_s a + \delta\, D_{:,y}, \qquad
    \epsilon \sim \mathcal{N}(0, \Sigma_\epsilon), \quad a \sim \mathcal{N}(0, \mathrm{snr}\, I_k),

``U_s`` (``d × k``) is the *standard subspace*: the standard variety's states carry
``snr`` times the noise variance along each of its directions (so do the other
varieties' when ``shared=True``, as a language family shares its high-variance
directions). Variety ``v ≥ 1`` is shifted by ``δ = separation`` noise standard
deviations along ``D_{:,v}``, the *discriminating directions* (orthonormal, orthogonal
to ``U_s``, optionally supported on ``support`` coordinates only); the standard's
offset is 0. Every quantity an estimator should recover is known exactly.

The noise is isotropic (:math:`\Sigma_\epsilon = I_d`) unless ``noise_variances`` gives
one variance per coordinate (:math:`\Sigma_\epsilon = \mathrm{diag}(v)`): *anisotropic*
states, e.g. with a few outlier coordinates holding most of the variance as in real LM
states. With ``shared=True`` every variety then has the within-variety covariance
:math:`\Sigma_W = \Sigma_\epsilon + \mathrm{snr}\, U_s U_s^\top`, and the Bayes-optimal
discriminating directions (Gaussian classes, shared covariance) are
:math:`\Sigma_W^{-1}\Delta\mu` (:meth:`PlantedVarieties.bayes_direction`), no longer the
mean differences themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["PlantedVarieties", "planted_varieties", "rotated", "rotation"]


@dataclass(frozen=True)
class PlantedVarieties:
    """Planted states with their ground truth."""

    states: Tensor  # (n, d)
    labels: Tensor  # (n,), 0 = standard
    standard_basis: Tensor  # (d, k)
    discriminating_basis: Tensor  # (d, m)
    separation: float = 0.0  # offset of each non-standard variety along its D column
    snr: float = 0.0  # variance of the standard subspace's coefficients
    noise_variances: Tensor | None = None  # (d,) per-coordinate noise; None = isotropic
    shared: bool = True  # every variety carries U_s (the within covariance is shared)

    @property
    def standard_vs_rest_direction(self) -> Tensor:
        """``(d, 1)``: the pooled non-standard mean minus the standard mean, normalised."""
        counts = torch.bincount(self.labels, minlength=self.discriminating_basis.shape[1] + 1)
        w = counts[1:].to(self.discriminating_basis.dtype)
        v = self.discriminating_basis @ w
        return (v / v.norm())[:, None]

    def within_covariance(self) -> Tensor:
        """``(d, d)`` float64: the shared within-variety covariance ``Σ_ε + snr U_s U_sᵀ``."""
        if not self.shared:
            raise ValueError("within_covariance: only defined with shared=True")
        u = self.standard_basis.to(torch.float64)
        noise = (
            torch.ones(u.shape[0], dtype=torch.float64)
            if self.noise_variances is None
            else self.noise_variances.to(torch.float64)
        )
        return torch.diag(noise) + self.snr * (u @ u.T)

    def bayes_direction(self, classes: str = "standard-vs-rest") -> Tensor:
        r"""The Bayes-optimal discriminating directions :math:`\Sigma_W^{-1}\Delta\mu`,
        orthonormalised (float32). ``"standard-vs-rest"``: ``(d, 1)``, Δμ the pooled
        non-standard mean minus the standard's; ``"all"``: ``(d, m)``, the span of
        :math:`\Sigma_W^{-1} D` (each variety's mean minus the standard's)."""
        if classes not in ("standard-vs-rest", "all"):
            raise ValueError(
                f"bayes_direction: classes must be 'standard-vs-rest' or 'all', got {classes!r}"
            )
        contrasts = (
            self.standard_vs_rest_direction
            if classes == "standard-vs-rest"
            else self.discriminating_basis
        ).to(torch.float64)
        directions = torch.linalg.solve(self.within_covariance(), contrasts)
        return torch.linalg.qr(directions)[0].float()


def planted_varieties(
    n: int,
    dim: int,
    rank: int,
    *,
    n_varieties: int = 1,
    snr: float = 50.0,
    separation: float = 4.0,
    support: int | None = None,
    shared: bool = True,
    standard_basis: Tensor | None = None,
    noise_variances: Tensor | None = None,
    seed: int = 0,
    sample_seed: int | None = None,
) -> PlantedVarieties:
    """Draw ``n`` states (classes balanced) from the planted family; see the module docstring.

    ``seed`` draws the planted bases, ``sample_seed`` (default: ``seed``) the states, so
    several samples of one family share their ground truth. ``standard_basis`` fixes
    ``U_s``; the discriminating directions are then drawn orthogonal to it. With
    ``support`` and one variety, the direction has equal-magnitude entries (random signs)
    on ``support`` random coordinates. ``noise_variances`` (``dim`` positive numbers)
    makes the noise anisotropic; the draw is otherwise the same (same random numbers).
    """
    if n < n_varieties + 1 or dim < rank + n_varieties or rank < 1 or n_varieties < 1:
        raise ValueError(
            f"planted_varieties: need n >= m+1, rank >= 1, m >= 1 and dim >= rank + m; got "
            f"n={n}, dim={dim}, rank={rank}, m={n_varieties}"
        )
    if noise_variances is not None and (
        tuple(noise_variances.shape) != (dim,) or not bool((noise_variances > 0).all())
    ):
        raise ValueError(
            f"planted_varieties: noise_variances must be {dim} positive numbers, got shape "
            f"{tuple(noise_variances.shape)}"
        )
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    m = n_varieties
    if support is not None:
        if not m <= support <= dim - rank:
            raise ValueError(
                f"planted_varieties: support must lie in [{m}, {dim - rank}], got {support}"
            )
        coords = torch.randperm(dim, generator=g)[:support]
        d_basis = torch.zeros(dim, m, dtype=f64)
        if m == 1:
            signs = torch.randint(0, 2, (support, 1), generator=g).to(f64) * 2 - 1
            d_basis[coords] = signs / support**0.5
        else:
            d_basis[coords] = torch.linalg.qr(torch.randn(support, m, generator=g, dtype=f64))[0]
    else:
        d_basis = None
    if standard_basis is None:
        raw = torch.randn(dim, rank + (0 if d_basis is not None else m), generator=g, dtype=f64)
        if d_basis is not None:
            raw = raw - d_basis @ (d_basis.T @ raw)
        q = torch.linalg.qr(raw)[0]
        u_s = q[:, :rank]
        if d_basis is None:
            d_basis = q[:, rank:]
    else:
        u_s = standard_basis.to(f64)
        if d_basis is None:
            raw = torch.randn(dim, m, generator=g, dtype=f64)
            raw = raw - u_s @ (u_s.T @ raw)
            d_basis = torch.linalg.qr(raw)[0]
    g = torch.Generator().manual_seed(seed if sample_seed is None else sample_seed)
    labels = torch.arange(n) % (m + 1)
    labels = labels[torch.randperm(n, generator=g)]
    states = torch.randn(n, dim, generator=g, dtype=f64)
    if noise_variances is not None:
        states *= noise_variances.to(f64).sqrt()
    carriers = torch.ones(n, dtype=torch.bool) if shared else labels == 0
    coeffs = torch.randn(n, rank, generator=g, dtype=f64) * snr**0.5
    states += (coeffs * carriers[:, None]) @ u_s.T
    offsets = torch.cat([torch.zeros(dim, 1, dtype=f64), separation * d_basis], dim=1)
    states += offsets.T[labels]
    return PlantedVarieties(
        states.float(),
        labels,
        u_s.float(),
        d_basis.float(),
        separation=float(separation),
        snr=float(snr),
        noise_variances=None if noise_variances is None else noise_variances.double(),
        shared=shared,
    )


def rotation(
    basis: Tensor,
    degrees: float,
    generator: torch.Generator | None = None,
    towards: Tensor | None = None,
) -> Tensor:
    r"""A ``d × d`` orthogonal matrix ``Q`` that turns each column ``b_i`` of the orthonormal
    ``basis`` by ``degrees`` towards its own random direction ``p_i ⊥ basis``:

    .. math:: Q = I + (\cos\theta - 1)(BB^\top + PP^\top) + \sin\theta\,(PB^\top - BP^\top),

    so every principal angle between ``span(B)`` and ``span(QB)`` equals ``degrees``.
    Rotating states with ``h ↦ Qh`` rotates every planted structure they carry.
    ``towards`` (``d × k``) fixes the directions ``P`` (orthogonalised against ``B``).
    """
    b = basis.to(torch.float64)
    d, k = b.shape
    if 2 * k > d:
        raise ValueError(f"rotation: need dim >= 2 * rank, got dim {d}, rank {k}")
    if towards is not None and tuple(towards.shape) != (d, k):
        raise ValueError(
            f"rotation: towards must have shape ({d}, {k}), got {tuple(towards.shape)}"
        )
    raw = (
        torch.randn(d, k, generator=generator, dtype=torch.float64)
        if towards is None
        else towards.to(torch.float64)
    )
    raw = raw - b @ (b.T @ raw)
    p = torch.linalg.qr(raw)[0]
    theta = torch.deg2rad(torch.tensor(float(degrees), dtype=torch.float64))
    eye = torch.eye(d, dtype=torch.float64)
    return (
        eye + (torch.cos(theta) - 1) * (b @ b.T + p @ p.T) + torch.sin(theta) * (p @ b.T - b @ p.T)
    )


def rotated(data: PlantedVarieties, q: Tensor) -> PlantedVarieties:
    """The same draw with every state (and every ground-truth basis) mapped by ``h ↦ Qh``."""
    q32 = q.to(torch.float32)
    if data.noise_variances is not None:
        raise ValueError("rotated: anisotropic noise would no longer be diagonal")
    return PlantedVarieties(
        (data.states.to(torch.float64) @ q.T).float(),
        data.labels,
        q32 @ data.standard_basis,
        q32 @ data.discriminating_basis,
        separation=data.separation,
        snr=data.snr,
        shared=data.shared,
    )
