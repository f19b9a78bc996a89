r"""Geometry of varieties on state matrices: distances, CKA, principal angles, overlap.

Every function takes state matrices (``torch.Tensor`` or ``numpy.ndarray``; rows =
sentences, columns = hidden dimensions) and computes in fp64. For *parallel* matrices
``X`` (the standard variety) and ``Y`` (another variety) row ``i`` of each is the same
sentence.

Geometry:

.. math::

    \mathrm{L2}(X, Y) = \tfrac1n \sum_i \lVert x_i - y_i \rVert, \qquad
    \mathrm{cos}(X, Y) = \tfrac1n \sum_i \Big(1 - \frac{x_i^\top y_i}
                                          {\lVert x_i \rVert \lVert y_i \rVert}\Big),

    \mathrm{CKA}(X, Y) = \frac{\lVert \tilde Y^\top \tilde X \rVert_F^2}
        {\lVert \tilde X^\top \tilde X \rVert_F\, \lVert \tilde Y^\top \tilde Y \rVert_F}
    \quad (\tilde X = X - \mathbf 1 \bar x^\top),

linear CKA (Kornblith et al. 2019): :math:`\mathrm{HSIC}(K, L)` with linear kernels
normalised, invariant to orthogonal maps and isotropic scaling of either side. The
*principal angles* compare the top-``rank`` PCA subspaces of ``X`` and ``Y``; the
*overlap* is :meth:`Subspace.overlap`, :math:`\sum_i \lVert U^\top(y_i-c)\rVert^2 /
\sum_i \lVert y_i - c\rVert^2`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from vardecouple.subspace import Subspace, principal_angles

__all__ = [
    "AngleSummary",
    "Matrix",
    "cosine_distance",
    "l2_distance",
    "linear_cka",
    "mean_pool",
    "overlap",
    "pca_subspace",
    "subspace_angles",
]

Matrix = Tensor | np.ndarray


def as_matrix(x: Matrix, name: str) -> Tensor:
    """A finite fp64 ``(n, d)`` tensor on the CPU."""
    if isinstance(x, np.ndarray):
        x = np.ascontiguousarray(x)  # torch refuses negative strides
    t = torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float64)
    if t.ndim != 2 or t.shape[0] < 1:
        raise ValueError(f"{name}: expected a 2-D (rows, dim) matrix, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: expected finite values, found NaN or inf")
    return t


def _parallel(x: Matrix, y: Matrix) -> tuple[Tensor, Tensor]:
    a, b = as_matrix(x, "X"), as_matrix(y, "Y")
    if a.shape != b.shape:
        raise ValueError(f"parallel matrices differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a, b


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    r"""Mask-aware mean over tokens: ``(B, T, d), (B, T) -> (B, d)``.

    :math:`s_b = \sum_t m_{bt} h_{bt} / \sum_t m_{bt}`; a row without any unmasked token
    is a ValueError. Computed in fp64, returned in ``hidden``'s float dtype.
    """
    h, m = torch.as_tensor(hidden), torch.as_tensor(mask)
    if h.ndim != 3 or tuple(m.shape) != tuple(h.shape[:2]):
        raise ValueError(
            f"mean_pool: expected hidden (B, T, d) and mask (B, T), "
            f"got {tuple(h.shape)} and {tuple(m.shape)}"
        )
    w = (m != 0).to(device=h.device, dtype=torch.float64)
    counts = w.sum(1, keepdim=True)
    if (counts == 0).any():
        raise ValueError("mean_pool: a row has no unmasked token")
    pooled = (h.to(torch.float64) * w[..., None]).sum(1) / counts
    return pooled.to(h.dtype if h.is_floating_point() else torch.float64)


def l2_distance(x: Matrix, y: Matrix) -> float:
    """Mean Euclidean distance between parallel rows, ``mean_i ‖x_i − y_i‖``."""
    a, b = _parallel(x, y)
    return float((a - b).norm(dim=1).mean())


def cosine_distance(x: Matrix, y: Matrix) -> float:
    """Mean cosine distance between parallel rows, ``mean_i (1 − cos(x_i, y_i))``.

    A zero row has cosine 0 with anything (distance 1).
    """
    a, b = _parallel(x, y)
    norms = (a.norm(dim=1) * b.norm(dim=1)).clamp(min=1e-300)
    return float((1.0 - (a * b).sum(1) / norms).mean())


def linear_cka(x: Matrix, y: Matrix) -> float:
    """Linear CKA of two representations of the same ``n`` rows (column counts may differ).

    The feature-space formula of the module docstring, or equivalently (cheaper when
    ``n² (d_x + d_y) < n d_x d_y``) ``tr(K̃L̃) / (‖K̃‖_F ‖L̃‖_F)`` with centred Gram matrices
    ``K̃ = X̃X̃ᵀ``, ``L̃ = ỸỸᵀ``. A matrix with constant columns is a ValueError.
    """
    a, b = as_matrix(x, "X"), as_matrix(y, "Y")
    n = a.shape[0]
    if b.shape[0] != n:
        raise ValueError(f"linear_cka: row counts differ: {n} vs {b.shape[0]}")
    a, b = a - a.mean(0), b - b.mean(0)
    if n * n * (a.shape[1] + b.shape[1]) < n * a.shape[1] * b.shape[1]:
        k, lg = a @ a.T, b @ b.T
        num, den = (k * lg).sum(), k.norm() * lg.norm()
    else:
        num, den = (b.T @ a).square().sum(), (a.T @ a).norm() * (b.T @ b).norm()
    if den.item() <= 0.0:
        raise ValueError("linear_cka: a representation has zero variance")
    return float(num / den)


def pca_subspace(x: Matrix, rank: int) -> Subspace:
    """Top-``rank`` principal directions of ``x`` (right singular vectors of ``X − x̄``).

    The centre is the mean ``x̄``; ``1 <= rank <= min(rows − 1, dim)``.
    """
    a = as_matrix(x, "X")
    if not 1 <= rank <= min(a.shape[0] - 1, a.shape[1]):
        raise ValueError(
            f"pca_subspace: rank must lie in [1, min(rows - 1, dim)], got {rank} for "
            f"shape {tuple(a.shape)}"
        )
    mean = a.mean(0)
    _, _, vh = torch.linalg.svd(a - mean, full_matrices=False)
    return Subspace(vh[:rank].T.contiguous(), mean)


@dataclass(frozen=True)
class AngleSummary:
    """Principal angles (degrees, ascending) between two subspaces, with mean and largest."""

    mean: float
    largest: float
    angles: tuple[float, ...]


def subspace_angles(x: Matrix, y: Matrix, rank: int) -> AngleSummary:
    """Principal angles between the top-``rank`` PCA subspaces of ``x`` and of ``y``.

    Rows need not be parallel, only the dimension must agree. The angles come from
    :func:`vardecouple.subspace.principal_angles` (Knyazev & Argentati's cos/sin split,
    as ``scipy.linalg.subspace_angles``).
    """
    angles = principal_angles(pca_subspace(x, rank).basis, pca_subspace(y, rank).basis)
    values = tuple(float(v) for v in angles)
    return AngleSummary(mean=sum(values) / len(values), largest=max(values), angles=values)


def overlap(y: Matrix, basis: Subspace | Matrix, center: Matrix | None = None) -> float:
    """The overlap ``Σ_i ‖Uᵀ(y_i − c)‖² / Σ_i ‖y_i − c‖²`` (ratio of sums, in [0, 1]).

    ``basis`` is a :class:`Subspace` (its centre is used unless ``center`` is given) or a
    ``(d, k)`` orthonormal basis; ``center`` defaults to zero. Delegates to
    :meth:`Subspace.overlap`, which has exactly this definition, in fp64.
    """
    states = as_matrix(y, "Y")
    if isinstance(basis, Subspace):
        u, c = basis.basis, basis.center if center is None else torch.as_tensor(center)
    else:
        u, c = torch.as_tensor(basis), None if center is None else torch.as_tensor(center)
    u = u.to(torch.float64)
    sub = Subspace(u, None if c is None else c.to(torch.float64))
    return sub.overlap(states)
