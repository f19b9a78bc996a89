r"""Linear subspaces of a model's hidden-state space.

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

The estimators that find subspaces from labelled hidden states live in
:mod:`vardecouple.probes`; this module imports nothing of the package.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["Subspace", "compute_dtype", "overlap_ratio", "principal_angles"]

_ORTHONORMAL_TOL = 1e-4


def compute_dtype(*tensors: Tensor) -> torch.dtype:
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
        basis = basis.detach().to(compute_dtype(basis))
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
        dtype = compute_dtype(h, self.basis)
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
        return cls(u[:, keep].to(compute_dtype(vectors)), center)


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
