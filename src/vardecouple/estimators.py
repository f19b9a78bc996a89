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
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from vardecouple.subspace import AllReduce, Subspace, SubspaceEstimator

__all__ = [
    "LDAEstimator",
    "LeaceEstimator",
    "MeanDiffEstimator",
    "Moments",
    "PCAEstimator",
    "RandomEstimator",
    "StatisticsEstimator",
]

ClassMode = Literal["standard-vs-rest", "all"]
_CLASS_MODES = ("standard-vs-rest", "all")


@dataclass
class Moments:
    """Per-class counts and sums, and optionally a second moment over some rows (fp64)."""

    counts: Tensor  # (C,)
    sums: Tensor  # (C, d)
    outer: Tensor | None  # (d, d)

    @property
    def num_classes(self) -> int:
        return int(self.counts.shape[0])

    def tensors(self) -> list[Tensor]:
        return [t for t in (self.counts, self.sums, self.outer) if t is not None]

    def padded(self, num_classes: int) -> Moments:
        extra = num_classes - self.num_classes
        if extra <= 0:
            return self
        d = self.sums.shape[1]
        z = self.counts.new_zeros
        return Moments(
            torch.cat([self.counts, z(extra)]), torch.cat([self.sums, z(extra, d)]), self.outer
        )

    def discounted_sum(self, weight: float, new: Moments) -> Moments:
        """``weight · self + new`` (classes padded to the larger count)."""
        c = max(self.num_classes, new.num_classes)
        a, b = self.padded(c), new.padded(c)
        outer = None if a.outer is None or b.outer is None else weight * a.outer + b.outer
        return Moments(weight * a.counts + b.counts, weight * a.sums + b.sums, outer)

    def class_balanced_mean(self) -> Tensor:
        """Mean of the class means over the classes present: the centre ``c`` of the
        overlap and of the discriminative estimators (``docs/method.md``)."""
        present = self.counts > 0
        return (self.sums[present] / self.counts[present, None]).mean(0)

    def state_dict(self) -> dict[str, Tensor]:
        state = {"counts": self.counts.clone(), "sums": self.sums.clone()}
        if self.outer is not None:
            state["outer"] = self.outer.clone()
        return state

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> Moments:
        return cls(state["counts"], state["sums"], state.get("outer"))


def collapse_classes(m: Moments, classes: ClassMode) -> Moments:
    """``standard-vs-rest`` merges labels 1..m into one class; ``all`` keeps them."""
    if classes == "all" or m.num_classes <= 2:
        return m
    counts = torch.stack([m.counts[0], m.counts[1:].sum()])
    sums = torch.stack([m.sums[0], m.sums[1:].sum(0)])
    return Moments(counts, sums, m.outer)


def _check_classes(name: str, classes: str) -> None:
    if classes not in _CLASS_MODES:
        raise ValueError(
            f"{name}: classes must be one of {', '.join(_CLASS_MODES)}, got {classes!r}"
        )


class StatisticsEstimator(SubspaceEstimator):
    """Accumulate → reduce → solve over discounted :class:`Moments`.

    Args:
        rank: subspace dimension ``k``.
        forgetting: weight of the old statistics at each ``update`` (0 = only the
            newest batch, 1 = never forget), in ``[0, 1]``.
        num_classes: number of label values (``m + 1``); inferred from the labels when
            ``None``. Give it when several processes hold shards, so shapes agree.
        all_reduce: sums a tensor in place across processes (the reduce step).
    """

    outer_rows: Literal["standard", "all"] | None = None

    def __init__(
        self,
        rank: int,
        *,
        forgetting: float = 0.5,
        num_classes: int | None = None,
        all_reduce: AllReduce | None = None,
    ) -> None:
        super().__init__(rank, all_reduce=all_reduce)
        if not 0.0 <= float(forgetting) <= 1.0:
            raise ValueError(f"{self.name}: forgetting must lie in [0, 1], got {forgetting!r}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"{self.name}: num_classes must be >= 1, got {num_classes!r}")
        self.forgetting = float(forgetting)
        self.num_classes = num_classes
        self.stats: Moments | None = None
        self._warned_rank = False

    # -- the three steps -------------------------------------------------------
    def accumulate(self, states: Tensor, labels: Tensor | None = None) -> Moments:
        """Sufficient statistics of one batch (validated), in fp64."""
        x, y = self._validate(states, labels)
        c = int(y.max().item()) + 1
        if self.num_classes is not None:
            if c > self.num_classes:
                raise ValueError(
                    f"{self.name}: label {c - 1} out of range for num_classes={self.num_classes}"
                )
            c = self.num_classes
        x = x.to(torch.float64)
        onehot = torch.nn.functional.one_hot(y, c).to(torch.float64)
        outer = None
        if self.outer_rows == "all":
            outer = x.T @ x
        elif self.outer_rows == "standard":
            xs = x[y == 0]
            outer = xs.T @ xs
        return Moments(onehot.sum(0), onehot.T @ x, outer)

    def reduce(self, moments: Moments) -> Moments:
        """Sum the statistics across processes (no-op in a single process)."""
        self._reduce(moments.tensors())
        return moments

    def solve(self, moments: Moments) -> Subspace:
        """Turn statistics into a subspace."""
        raise NotImplementedError

    # -- public API ------------------------------------------------------------
    def fit(self, states: Tensor, labels: Tensor | None = None) -> Subspace:
        self.stats = self.reduce(self.accumulate(states, labels))
        self.last_iterations = 1  # a solver with sweeps overwrites this
        self.subspace = self.solve(self.stats)
        return self.subspace

    def update(self, states: Tensor, labels: Tensor | None = None) -> Subspace:
        if self.stats is None:
            return self.fit(states, labels)
        new = self.reduce(self.accumulate(states, labels))
        self.stats = self.stats.discounted_sum(self.forgetting, new)
        self.last_iterations = 1
        self.subspace = self.solve(self.stats)
        return self.subspace

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"name": self.name, "rank": self.rank}
        if self.stats is not None:
            state["stats"] = self.stats.state_dict()
        if self.subspace is not None:
            state["subspace"] = self.subspace.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("name") != self.name or state.get("rank") != self.rank:
            raise ValueError(
                f"{self.name}: state is for estimator {state.get('name')!r} with rank "
                f"{state.get('rank')!r}, expected {self.name!r} with rank {self.rank}"
            )
        self.stats = Moments.from_state_dict(state["stats"]) if "stats" in state else None
        self.subspace = Subspace.from_state_dict(state["subspace"]) if "subspace" in state else None

    # -- helpers ---------------------------------------------------------------
    def _cap_rank(self, available: int, why: str) -> int:
        if available < 1:
            raise ValueError(f"{self.name}: no direction can be estimated ({why})")
        if self.rank > available:
            if not self._warned_rank:
                warnings.warn(
                    f"{self.name}: rank {self.rank} capped at {available} ({why})",
                    stacklevel=4,
                )
                self._warned_rank = True
            return available
        return self.rank

    def _require_standard(self, m: Moments) -> None:
        if m.counts[0].item() < 2:
            raise ValueError(
                f"{self.name}: needs at least 2 states of the standard variety (label 0), "
                f"got {m.counts[0].item():g}"
            )


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
        _check_classes(self.name, classes)
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
        _check_classes(self.name, classes)
        if side not in ("column", "row"):
            raise ValueError(f"{self.name}: side must be 'column' or 'row', got {side!r}")
        self.classes = classes
        self.side = side
        self.shrinkage = shrinkage
        self.svd_tol = svd_tol

    def solve(self, moments: Moments) -> Subspace:
        with warnings.catch_warnings():  # concept-erasure decorates with torch.jit.script
            warnings.filterwarnings("ignore", message=".*torch.jit.script.*")
            from concept_erasure import LeaceFitter

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
        _check_classes(self.name, classes)
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
