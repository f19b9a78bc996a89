r"""Linear subspaces of a model's hidden-state space, and the estimators that find them.

A :class:`Subspace` is an affine subspace ``c + span(U)`` of :math:`\mathbb{R}^d`, where
``U`` is a :math:`d \times k` matrix with orthonormal columns and ``c`` a centre. For a
hidden state :math:`h`:

.. math::

    \mathrm{project}(h) = U U^\top (h - c), \qquad
    \mathrm{remove}(h, \alpha) = h - \alpha\, U U^\top (h - c),

    \mathrm{overlap}(H) = \frac{\sum_i \lVert U^\top (h_i - c) \rVert^2}
                               {\sum_i \lVert h_i - c \rVert^2} \in [0, 1].

The overlap is a ratio of sums (not a mean of ratios), so high-norm tokens weigh
more, as they do in the model.

:func:`make_estimator` builds the estimators that produce subspaces from labelled hidden
states (label 0 = the standard variety, 1..m = the other varieties). Every estimator
has ``fit`` (from scratch), ``update`` (online: tracks the current model without a
refit) and ``state_dict`` / ``load_state_dict``; internally each separates *accumulate*
(per-batch statistics or gradients), *reduce* (a sum, all-reduced across processes by
the ``all_reduce`` callable when one is given) and *solve*.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "ESTIMATORS",
    "Subspace",
    "SubspaceEstimator",
    "make_estimator",
    "overlap_ratio",
    "principal_angles",
]

AllReduce = Callable[[Tensor], None]
"""Sums a tensor in place across processes (e.g. ``torch.distributed.all_reduce``)."""

_ORTHONORMAL_TOL = 1e-4


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    """fp32, or fp64 when any input already is fp64 (never half precision)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def overlap_ratio(inside: float, total: float) -> float:
    """``inside / total`` clipped to ``[0, 1]``; 0.0 when no energy was selected."""
    return 0.0 if total <= 0.0 else min(1.0, max(0.0, inside / total))


@dataclass(frozen=True)
class Subspace:
    """The affine subspace ``center + span(basis)``; frozen, callable as an eraser.

    Args:
        basis: ``(d, k)`` tensor with orthonormal columns, ``1 <= k <= d``.
        center: ``(d,)`` tensor; zeros when ``None``.

    Calling the subspace, ``subspace(h)``, is ``subspace.remove(h)``: it erases the
    subspace from ``h``. All methods take tensors of shape ``(..., d)`` in any float
    dtype, compute in fp32 (fp64 when given fp64) and return the input's dtype.
    """

    basis: Tensor
    center: Tensor | None = None

    def __post_init__(self) -> None:
        basis = self.basis
        if not isinstance(basis, Tensor):
            raise ValueError(f"Subspace basis: expected a torch.Tensor, got {type(basis).__name__}")
        if basis.ndim != 2:
            raise ValueError(
                f"Subspace basis: expected a 2-D (dim, rank) tensor, got shape {tuple(basis.shape)}"
            )
        d, k = basis.shape
        if not 1 <= k <= d:
            raise ValueError(f"Subspace basis: expected 1 <= rank <= dim, got rank {k} in dim {d}")
        if not basis.is_floating_point():
            raise ValueError(f"Subspace basis: expected a float tensor, got {basis.dtype}")
        basis = basis.detach().to(_compute_dtype(basis))
        if not torch.isfinite(basis).all():
            raise ValueError("Subspace basis: expected finite values, found NaN or inf")
        gram = basis.T @ basis
        err = (gram - torch.eye(k, dtype=basis.dtype, device=basis.device)).abs().max().item()
        if err > _ORTHONORMAL_TOL:
            raise ValueError(
                f"Subspace basis: expected orthonormal columns (|UᵀU - I| <= {_ORTHONORMAL_TOL}), "
                f"got max deviation {err:.3g}; use Subspace.from_vectors to orthonormalise"
            )
        center = self.center
        if center is None:
            center = torch.zeros(d, dtype=basis.dtype, device=basis.device)
        else:
            if not isinstance(center, Tensor) or tuple(center.shape) != (d,):
                shape = tuple(center.shape) if isinstance(center, Tensor) else type(center).__name__
                raise ValueError(f"Subspace center: expected shape ({d},), got {shape}")
            center = center.detach().to(device=basis.device, dtype=basis.dtype)
            if not torch.isfinite(center).all():
                raise ValueError("Subspace center: expected finite values, found NaN or inf")
        object.__setattr__(self, "basis", basis)
        object.__setattr__(self, "center", center)

    # ------------------------------------------------------------------ basics
    @property
    def dim(self) -> int:
        """Ambient dimension ``d``."""
        return int(self.basis.shape[0])

    @property
    def rank(self) -> int:
        """Subspace dimension ``k``."""
        return int(self.basis.shape[1])

    def _check(self, h: Tensor) -> Tensor:
        if not isinstance(h, Tensor) or h.ndim < 1 or h.shape[-1] != self.dim:
            shape = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise ValueError(f"hidden states: expected shape (..., {self.dim}), got {shape}")
        if not h.is_floating_point():
            raise ValueError(f"hidden states: expected a float tensor, got {h.dtype}")
        return h

    def _operands(self, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        dtype = _compute_dtype(h, self.basis)
        u = self.basis.to(device=h.device, dtype=dtype)
        c = self.center.to(device=h.device, dtype=dtype)  # type: ignore[union-attr]
        return h.to(dtype) - c, u, c

    def coordinates(self, h: Tensor) -> Tensor:
        """``Uᵀ(h − c)``: the ``(..., k)`` coordinates of ``h`` inside the subspace."""
        centred, u, _ = self._operands(self._check(h))
        return centred @ u

    def project(self, h: Tensor) -> Tensor:
        """``UUᵀ(h − c)``: the centred component of ``h`` inside the subspace."""
        centred, u, _ = self._operands(self._check(h))
        return ((centred @ u) @ u.T).to(h.dtype)

    def remove(self, h: Tensor, alpha: float = 1.0) -> Tensor:
        """``h − α·UUᵀ(h − c)``: α = 1 erases the subspace, α = 0 is the identity."""
        centred, u, _c = self._operands(self._check(h))
        out = h.to(centred.dtype) - alpha * ((centred @ u) @ u.T)
        return out.to(h.dtype)

    __call__ = remove

    def overlap(self, h: Tensor, mask: Tensor | None = None) -> float:
        """Fraction of the centred energy of the (masked) rows of ``h`` inside the subspace.

        ``Σ_i ‖Uᵀ(h_i − c)‖² / Σ_i ‖h_i − c‖²`` over rows where ``mask`` is true
        (``mask`` has shape ``h.shape[:-1]``). Returns 0.0 when no energy is selected.
        """
        inside, total = self.overlap_terms(h, mask).tolist()
        return overlap_ratio(inside, total)

    def overlap_terms(self, h: Tensor, mask: Tensor | None = None) -> Tensor:
        """``[Σ‖Uᵀ(h_i − c)‖², Σ‖h_i − c‖²]`` (float64, on the CPU): :meth:`overlap`'s
        numerator and denominator, which processes holding shards of the rows add up."""
        centred, u, _ = self._operands(self._check(h))
        if mask is not None:
            if tuple(mask.shape) != tuple(h.shape[:-1]):
                raise ValueError(
                    f"overlap mask: expected shape {tuple(h.shape[:-1])}, got {tuple(mask.shape)}"
                )
            centred = centred[mask.to(device=h.device, dtype=torch.bool)]
        inside = (centred @ u).square().sum()
        total = centred.square().sum()
        return torch.stack([inside, total]).to(device="cpu", dtype=torch.float64)

    def principal_angles(self, other: Subspace | Tensor) -> Tensor:
        """Principal angles to ``other`` (a Subspace or a ``(d, j)`` basis), degrees, ascending."""
        other_basis = other.basis if isinstance(other, Subspace) else other
        return principal_angles(self.basis, other_basis)

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> Subspace:
        """A copy on another device / in another float dtype (fp32 or fp64)."""
        assert self.center is not None
        return Subspace(
            self.basis.to(device=device, dtype=dtype), self.center.to(device=device, dtype=dtype)
        )

    def state_dict(self) -> dict[str, Tensor]:
        assert self.center is not None
        return {"basis": self.basis.clone(), "center": self.center.clone()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> Subspace:
        return cls(state["basis"], state["center"])

    # ------------------------------------------------------------ constructors
    @classmethod
    def random(
        cls,
        dim: int,
        rank: int,
        generator: torch.Generator | None = None,
        center: Tensor | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> Subspace:
        """A uniformly random (Haar) ``rank``-dimensional subspace of ``R^dim``."""
        if not 1 <= rank <= dim:
            raise ValueError(
                f"Subspace.random: expected 1 <= rank <= dim, got rank {rank}, dim {dim}"
            )
        g = torch.randn(dim, rank, generator=generator, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r))  # unique QR: uniform (Haar) distribution
        return cls(q.to(dtype), center)

    @classmethod
    def from_vectors(
        cls, vectors: Tensor, center: Tensor | None = None, rtol: float = 1e-6
    ) -> Subspace:
        """The span of the columns of ``vectors`` ``(d, j)``, orthonormalised by an SVD.

        Columns are ordered by singular value; directions with a singular value below
        ``rtol`` times the largest are dropped (linearly dependent input).
        """
        if not isinstance(vectors, Tensor) or vectors.ndim != 2:
            shape = tuple(vectors.shape) if isinstance(vectors, Tensor) else type(vectors).__name__
            raise ValueError(f"Subspace.from_vectors: expected a 2-D (dim, j) tensor, got {shape}")
        v = vectors.detach().to(torch.float64)
        if not torch.isfinite(v).all():
            raise ValueError("Subspace.from_vectors: expected finite values, found NaN or inf")
        u, s, _ = torch.linalg.svd(v, full_matrices=False)
        if s.numel() == 0 or s[0].item() == 0.0:
            raise ValueError("Subspace.from_vectors: expected at least one non-zero vector")
        keep = s > rtol * s[0]
        return cls(u[:, keep].to(_compute_dtype(vectors)), center)


def principal_angles(a: Tensor, b: Tensor) -> Tensor:
    """Principal angles (degrees, ascending) between the column spaces of ``a`` and ``b``.

    Both are orthonormalised first. Following Knyazev & Argentati (2002), as
    ``scipy.linalg.subspace_angles`` does, angles are read from the cosines
    (singular values of ``QₐᵀQ_b``) where they are large and from the sines
    (singular values of ``Q_b − QₐQₐᵀQ_b``) where they are small, which keeps small
    angles accurate. There are ``min(rank a, rank b)`` angles.
    """
    for name, m in (("first", a), ("second", b)):
        if not isinstance(m, Tensor) or m.ndim != 2:
            raise ValueError(f"principal_angles: {name} basis must be a 2-D (dim, k) tensor")
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            "principal_angles: expected bases of the same dimension, "
            f"got {a.shape[0]} and {b.shape[0]}"
        )
    qa, _ = torch.linalg.qr(a.detach().to(torch.float64).cpu())
    qb, _ = torch.linalg.qr(b.detach().to(torch.float64).cpu())
    if qa.shape[1] < qb.shape[1]:
        qa, qb = qb, qa
    cross = qa.T @ qb
    cos = torch.linalg.svdvals(cross).clamp(max=1.0)  # descending: ascending angles
    residual = qb - qa @ cross
    sin = torch.linalg.svdvals(residual).clamp(max=1.0).flip(0)  # ascending
    angles = torch.where(cos.square() < 0.5, torch.arccos(cos), torch.arcsin(sin))
    return torch.rad2deg(angles).sort().values


# --------------------------------------------------------------------- estimators
class SubspaceEstimator(ABC):
    """Base of every estimator: labelled states ``(n, d)`` in, a :class:`Subspace` out.

    ``fit`` estimates from scratch; ``update`` tracks the *current* model online:
    statistics-based estimators discount their old statistics by ``forgetting`` and
    add the new ones, gradient-based probes warm-start from their previous weights and
    take a few steps. ``last_iterations`` counts the solver iterations (optimizer steps
    or fixed-point sweeps) of the last call, a machine-independent measure of its cost.
    """

    name: str = ""
    needs_labels: bool = False

    def __init__(self, rank: int, *, all_reduce: AllReduce | None = None) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"estimator {self.name!r}: rank must be an integer >= 1, got {rank!r}")
        self.rank = rank
        self.all_reduce = all_reduce
        self.subspace: Subspace | None = None
        self.last_iterations = 0

    def _reduce(self, tensors: list[Tensor]) -> None:
        """The *reduce* step: sum each tensor in place across processes."""
        if self.all_reduce is not None:
            for t in tensors:
                self.all_reduce(t)

    def _validate(self, states: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """Checks shapes and values; returns (fp32/fp64 states, int64 labels)."""
        if not isinstance(states, Tensor) or states.ndim != 2:
            shape = tuple(states.shape) if isinstance(states, Tensor) else type(states).__name__
            raise ValueError(f"{self.name}: states must be a 2-D (n, dim) tensor, got {shape}")
        if not states.is_floating_point():
            raise ValueError(f"{self.name}: states must be a float tensor, got {states.dtype}")
        n, d = states.shape
        if n < 2:
            raise ValueError(f"{self.name}: expected at least 2 states, got {n}")
        if self.rank > d:
            raise ValueError(f"{self.name}: rank {self.rank} exceeds the state dimension {d}")
        if not torch.isfinite(states).all():
            raise ValueError(f"{self.name}: states contain NaN or inf; expected finite values")
        states = states.detach().to(_compute_dtype(states))
        if labels is None:
            if self.needs_labels:
                raise ValueError(
                    f"{self.name}: labels are required (0 = standard variety, 1..m = others)"
                )
            return states, torch.zeros(n, dtype=torch.long, device=states.device)
        if not isinstance(labels, Tensor) or labels.ndim != 1 or labels.shape[0] != n:
            shape = tuple(labels.shape) if isinstance(labels, Tensor) else type(labels).__name__
            raise ValueError(f"{self.name}: labels must be a 1-D tensor of length {n}, got {shape}")
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"{self.name}: labels must be integers, got {labels.dtype}")
        labels = labels.to(device=states.device, dtype=torch.long)
        if labels.min().item() < 0:
            raise ValueError(f"{self.name}: labels must be >= 0 (0 = standard variety)")
        return states, labels

    @abstractmethod
    def fit(self, states: Tensor, labels: Tensor | None = None) -> Subspace:
        """Estimate from scratch."""

    @abstractmethod
    def update(self, states: Tensor, labels: Tensor | None = None) -> Subspace:
        """Track the current model: warm start / discounted statistics; never a refit."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Plain tensors and numbers, enough to resume exactly."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank})"


def _registry() -> dict[str, type[SubspaceEstimator]]:
    from vardecouple.estimators import (
        LDAEstimator,
        LeaceEstimator,
        MeanDiffEstimator,
        PCAEstimator,
        RandomEstimator,
    )
    from vardecouple.generative import GenerativeProbeEstimator
    from vardecouple.probe import VariationalProbeEstimator

    classes: list[type[SubspaceEstimator]] = [
        VariationalProbeEstimator,
        GenerativeProbeEstimator,
        PCAEstimator,
        MeanDiffEstimator,
        LeaceEstimator,
        LDAEstimator,
        RandomEstimator,
    ]
    return {cls.name: cls for cls in classes}


ESTIMATORS: tuple[str, ...] = (
    "variational",
    "variational-generative",
    "pca",
    "mean-diff",
    "leace",
    "lda",
    "random",
)
"""Names accepted by :func:`make_estimator`."""


def _keyword_options(cls: type) -> list[str]:
    """Keyword-only constructor options of ``cls``, following ``**kwargs`` up the MRO."""
    import inspect

    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [
            p.name
            for p in params
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in names
        ]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return names


def make_estimator(name: str, rank: int, **options: Any) -> SubspaceEstimator:
    """Build the estimator called ``name`` (one of :data:`ESTIMATORS`) with ``rank``.

    ``options`` go to the estimator's constructor; unknown options are a ValueError
    naming the ones it accepts.
    """
    registry = _registry()
    if name not in registry:
        import difflib

        close = difflib.get_close_matches(str(name), ESTIMATORS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"unknown estimator {name!r}{hint}; expected one of {', '.join(ESTIMATORS)}"
        )
    cls = registry[name]
    accepted = _keyword_options(cls)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"estimator {name!r}: unknown option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    return cls(rank, **options)
