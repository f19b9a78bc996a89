r"""Statistics-based subspace estimators: ``pca``, ``mean-diff``, ``leace``, ``lda``, ``random``.

Each keeps discounted sufficient statistics of the labelled states (label 0 = the
standard variety):

.. math::

    n_c = \sum_i [y_i = c], \qquad s_c = \sum_i [y_i = c]\, h_i, \qquad
    S = \sum_{i \in R} h_i h_i^\top

(``R`` = the standard rows for ``pca``, all rows for ``leace`` and ``lda``; no ``S``
otherwise).
*Accumulate* computes them for a batch, *reduce* sums them across processes, *solve*
turns them into a :class:`~vardecouple.subspace.Subspace`. ``update`` is online:
``stats ← forgetting · stats + new`` then solve, so the estimate follows the current
model with an effective memory of ``1 / (1 − forgetting)`` refreshes. Statistics are
kept in fp64: hidden states of real LMs have large means, and ``S/n − μμᵀ`` cancels.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

import torch
from concept_erasure import LeaceFitter
from torch import Tensor

from vardecouple.probes.base import (
    ClassMode,
    Moments,
    StatisticsEstimator,
    check_classes,
    collapse_classes,
)
from vardecouple.probes.registry import register
from vardecouple.subspace import Subspace

__all__ = ["LDAEstimator", "LeaceEstimator", "MeanDiffEstimator", "PCAEstimator", "RandomEstimator"]


@register
class PCAEstimator(StatisticsEstimator):
    r"""Top-``k`` principal directions of the standard variety's centred states.

    ``U`` = top-``k`` eigenvectors of :math:`\Sigma_0 = S_0/n_0 - \mu_0\mu_0^\top`;
    ``c = μ₀``. Without labels every state counts as standard.
    """

    name = "pca"
    outer_rows = "standard"

    def solve(self, moments: Moments) -> Subspace:
        self._require_standard(moments)
        assert moments.outer is not None
        n0 = moments.counts[0]
        mean = moments.sums[0] / n0
        cov = moments.outer / n0 - torch.outer(mean, mean)
        cov = (cov + cov.T) / 2
        _, vecs = torch.linalg.eigh(cov)
        basis = vecs[:, -self.rank :].flip(1)
        return Subspace(basis.to(torch.float32), mean.to(torch.float32))


@register
class MeanDiffEstimator(StatisticsEstimator):
    r"""Orthonormalised differences of class means to the standard mean.

    ``classes="all"``: the directions :math:`\mu_v - \mu_0`, ``v = 1..m`` (rank ≤ m);
    ``"standard-vs-rest"``: the pooled non-standard mean minus :math:`\mu_0` (rank 1).
    Orthonormalised by an SVD (largest first); ``c`` = the class-balanced mean.
    """

    name = "mean-diff"
    needs_labels = True

    def __init__(self, rank: int, *, classes: ClassMode = "all", **kwargs: Any) -> None:
        super().__init__(rank, **kwargs)
        check_classes(self.name, classes)
        self.classes = classes

    def solve(self, moments: Moments) -> Subspace:
        self._require_standard(moments)
        m = collapse_classes(moments, self.classes)
        present = (m.counts > 0).nonzero().flatten()
        present = present[present > 0]
        means = m.sums / m.counts.clamp(min=1)[:, None]
        diffs = (means[present] - means[0]).T  # (d, m')
        k = self._cap_rank(int(diffs.shape[1]), f"{diffs.shape[1]} non-standard class(es) present")
        sub = Subspace.from_vectors(diffs)
        basis = sub.basis[:, :k]
        return Subspace(basis.to(torch.float32), m.class_balanced_mean().to(torch.float32))


@register
class LeaceEstimator(StatisticsEstimator):
    r"""The column space of the LEACE eraser (Belrose et al. 2023), via ``concept-erasure``.

    LEACE erases the concept ``z`` (one-hot variety) with
    :math:`x \mapsto x - W^{+} P_{W\Sigma_{xz}} W (x - \mu)`, ``W`` the whitening
    :math:`\Sigma_{xx}^{-1/2}`; the directions it changes, ``span(W⁺ u)`` with ``u`` the left
    singular vectors of :math:`W\Sigma_{xz}`, form ``U`` (rank ≤ C − 1; top ``k`` by
    singular value). That column space equals the span of :math:`\Sigma_{xz}`, i.e. of
    the class-mean differences, so it coincides with ``mean-diff`` up to the order of the
    directions. ``side="row"`` takes instead the directions the eraser *reads*,
    ``span(W u)`` = :math:`\mathrm{span}(\Sigma_{xx}^{-1}\Sigma_{xz})` (LDA-like: the
    mean differences whitened by the covariance). Our discounted statistics are handed to
    :class:`concept_erasure.LeaceFitter`, which does the solve (with its covariance
    shrinkage; ``constrain_cov_trace`` off, since the eraser is not applied here).
    ``c`` = the class-balanced mean.
    """

    name = "leace"
    needs_labels = True
    outer_rows = "all"

    def __init__(
        self,
        rank: int,
        *,
        classes: ClassMode = "all",
        side: Literal["column", "row"] = "column",
        shrinkage: bool = True,
        svd_tol: float = 0.01,
        **kwargs: Any,
    ) -> None:
        super().__init__(rank, **kwargs)
        check_classes(self.name, classes)
        if side not in ("column", "row"):
            raise ValueError(f"{self.name}: side must be 'column' or 'row', got {side!r}")
        self.classes = classes
        self.side = side
        self.shrinkage = shrinkage
        self.svd_tol = svd_tol

    def solve(self, moments: Moments) -> Subspace:
        with warnings.catch_warnings():  # concept-erasure decorates with torch.jit.script
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*")

        self._require_standard(moments)
        m = collapse_classes(moments, self.classes)
        assert m.outer is not None
        present = m.counts > 0
        counts, sums = m.counts[present], m.sums[present]
        if counts.numel() < 2:
            raise ValueError(f"{self.name}: needs states of at least one non-standard variety")
        d = sums.shape[1]
        fitter = LeaceFitter(
            d,
            int(counts.numel()),
            method="leace",
            constrain_cov_trace=False,
            shrinkage=self.shrinkage,
            svd_tol=self.svd_tol,
            dtype=torch.float64,
            device=sums.device,
        )
        n = counts.sum()
        mean_x = sums.sum(0) / n
        mean_z = counts / n
        fitter.n = n
        fitter.mean_x = mean_x
        fitter.mean_z = mean_z
        fitter.sigma_xx_ = m.outer - n * torch.outer(mean_x, mean_x)
        fitter.sigma_xz_ = sums.T - n * torch.outer(mean_x, mean_z)
        eraser = fitter.eraser
        # (d, C), zero columns where concept-erasure truncated a singular value
        left = eraser.proj_left if self.side == "column" else eraser.proj_right.T
        norms = left.norm(dim=0)
        left = left[:, norms > 0]
        k = self._cap_rank(int(left.shape[1]), f"the LEACE eraser has rank {left.shape[1]}")
        basis = Subspace.from_vectors(left).basis[:, :k]
        return Subspace(basis.to(torch.float32), m.class_balanced_mean().to(torch.float32))


@register
class LDAEstimator(StatisticsEstimator):
    r"""Linear discriminant directions with a spiked within-variety covariance.

    The pooled within-variety scatter :math:`W = S - \sum_c s_c s_c^\top / n_c` keeps
    every variety its own class, so the spread *between* the non-standard varieties is
    not taken for noise; :math:`\Sigma_W = W / \nu`, :math:`\nu = n - C`. It is modelled
    as a *spiked* covariance — ``r`` directions of their own variance above an isotropic
    bulk:

    .. math::

        \hat\Sigma = V_r \Lambda_r V_r^\top + \sigma^2 (I - V_r V_r^\top),

    with :math:`V_r, \Lambda_r` the top ``r`` eigenpairs of :math:`\Sigma_W`, :math:`\sigma^2` the
    mean of the other eigenvalues, and ``r`` the number of eigenvalues above the
    Marchenko–Pastur edge :math:`\sigma^2 (1 + \sqrt{(d - r)/\nu})^2` of a pure-noise
    bulk (iterated to a fixed point; ``spikes`` fixes it instead). Eigenvalues inside
    the bulk are noise at this sample size; pooling them into one :math:`\sigma^2`
    keeps the inverse from amplifying them, while the spikes — the few directions that
    carry most of the variance, such as the outlier dimensions of real LM states — are
    whitened exactly. (No per-dimension scaling first: it would smear an isotropic bulk
    into a spread of eigenvalues.)

    ``U`` = the orthonormalised :math:`\hat\Sigma^{-1}\Delta` (the Bayes direction for
    Gaussian classes with a shared covariance), :math:`\Delta = \mu_{\mathrm{rest}} -
    \mu_0` (``classes="standard-vs-rest"``: the pooled non-standard mean; rank 1) or the
    columns :math:`\mu_v - \mu_0` (``"all"``; top ``k`` by singular value). ``c`` = the
    class-balanced mean. Closed form from the discounted statistics: online, and
    all-reduced like every statistics estimator.
    """

    name = "lda"
    needs_labels = True
    outer_rows = "all"

    def __init__(
        self,
        rank: int,
        *,
        classes: ClassMode = "standard-vs-rest",
        spikes: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(rank, **kwargs)
        check_classes(self.name, classes)
        if spikes is not None and (isinstance(spikes, bool) or int(spikes) < 0):
            raise ValueError(f"{self.name}: spikes must be an integer >= 0, got {spikes!r}")
        self.classes = classes
        self.spikes = None if spikes is None else int(spikes)
        self.last_spikes: int | None = None

    def solve(self, moments: Moments) -> Subspace:
        self._require_standard(moments)
        assert moments.outer is not None
        present = moments.counts > 0
        counts, sums = moments.counts[present], moments.sums[present]
        if counts.numel() < 2:
            raise ValueError(f"{self.name}: needs states of at least one non-standard variety")
        dof = float(counts.sum() - counts.numel())
        if dof < 1:
            raise ValueError(f"{self.name}: needs more states than varieties")
        cov = (moments.outer - (sums.T / counts) @ sums) / dof
        evals, evecs = torch.linalg.eigh(cov)
        evals, evecs = evals.flip(0).clamp(min=0.0), evecs.flip(1)
        r = self.spikes if self.spikes is not None else _spikes(evals, dof)
        r = min(r, evals.numel() - 1)
        self.last_spikes = r
        bulk = evals[r:].mean().clamp(min=1e-12 * float(evals[0].clamp(min=1e-300)))
        means = sums / counts[:, None]
        if self.classes == "standard-vs-rest":
            delta = (sums[1:].sum(0) / counts[1:].sum() - means[0])[:, None]
        else:
            delta = (means[1:] - means[0]).T
        # Σ̂⁻¹Δ = V Λ⁻¹ VᵀΔ + (I − V Vᵀ)Δ / σ²
        v = evecs[:, :r]
        inside = v.T @ delta
        directions = v @ (inside / evals[:r, None].clamp(min=1e-300)) + (delta - v @ inside) / bulk
        k = self._cap_rank(int(directions.shape[1]), f"{directions.shape[1]} class contrast(s)")
        basis = Subspace.from_vectors(directions).basis[:, :k]
        return Subspace(basis.to(torch.float32), moments.class_balanced_mean().to(torch.float32))


def _spikes(evals: Tensor, dof: float) -> int:
    """How many of the descending eigenvalues ``evals`` of a ``d × d`` covariance matrix
    (``dof`` degrees of freedom) lie above the Marchenko–Pastur edge of the rest.

    At most ``min(d, dof) − 1``: with fewer degrees of freedom than dimensions the other
    eigenvalues are zero (up to rounding) and must stay in the bulk, whose mean then
    estimates the bulk variance (the trace is unbiased); counting rounding noise as
    spikes would invert it.
    """
    d, r = evals.numel(), 0
    limit = max(min(d, int(dof)) - 1, 0)
    for _ in range(d):
        bulk = float(evals[r:].mean())
        edge = bulk * (1.0 + ((d - r) / dof) ** 0.5) ** 2
        above = min(int((evals > edge).sum()), limit)
        if above == r or above >= limit:
            return above
        r = above
    return r


@register
class RandomEstimator(StatisticsEstimator):
    """A random orthonormal basis of the same rank: the control.

    Seeded by ``seed``; ``redraw=True`` draws a fresh basis at every ``update``,
    ``False`` keeps the first one. ``c`` = the class-balanced mean of the (discounted)
    states, like the discriminative estimators, so overlaps compare.
    """

    name = "random"

    def __init__(self, rank: int, *, seed: int = 0, redraw: bool = False, **kwargs: Any) -> None:
        super().__init__(rank, **kwargs)
        self.seed = int(seed)
        self.redraw = bool(redraw)
        self.generator = torch.Generator().manual_seed(self.seed)

    def solve(self, moments: Moments) -> Subspace:
        d = int(moments.sums.shape[1])
        center = moments.class_balanced_mean().to(torch.float32)
        if self.subspace is None or self.redraw or self.subspace.dim != d:
            return Subspace.random(d, self.rank, generator=self.generator, center=center)
        return Subspace(self.subspace.basis, center)

    def fit(self, states: Tensor, labels: Tensor | None = None) -> Subspace:
        self.generator = torch.Generator().manual_seed(self.seed)
        self.subspace = None
        return super().fit(states, labels)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["generator"] = self.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.generator.set_state(state["generator"])
