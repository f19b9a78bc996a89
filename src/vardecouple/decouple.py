r"""The method: shrink the model's use of the standard variety's subspace.

While a causal LM is fine-tuned, hidden states ``h`` of chosen layers are penalised
for their component inside the subspace ``U`` (``d × k``, orthonormal, centre ``c``)
that the online probe estimates for the standard variety:

.. math::

    \mathcal{L} = \mathcal{L}_{\mathrm{LM}} + \lambda\, \mathcal{L}_{\mathrm{dec}}, \qquad
    \mathcal{L}_{\mathrm{dec}} = \operatorname{mean}_{t \in \mathrm{mask}} \; \phi(h_t),

with the per-token term ``φ`` one of

- ``"norm"`` (the paper's :math:`\mathbb{E}\lVert HP \rVert`, uncentred):
  :math:`\lVert U^\top h \rVert` — computed as ``h @ U``, never with a ``d × d`` projector;
- ``"squared"``: :math:`\lVert U^\top (h - c) \rVert^2`;
- ``"fraction"`` (scale-free, in ``[0, 1]``):
  :math:`\lVert U^\top (h - c) \rVert^2 / (\lVert h - c \rVert^2 + \varepsilon)`.

``U`` and ``c`` are constants between refreshes: no gradient reaches them.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from vardecouple.subspace import Subspace

__all__ = ["PENALTY_FORMS", "PenaltyForm", "projection_penalty"]

PenaltyForm = Literal["norm", "squared", "fraction"]
PENALTY_FORMS: tuple[str, ...] = ("norm", "squared", "fraction")


def projection_penalty(
    hidden: Tensor,
    mask: Tensor | None,
    subspace: Subspace,
    form: PenaltyForm = "norm",
    eps: float = 1e-6,
) -> Tensor:
    """Mean over the masked tokens of the subspace penalty ``φ(h)`` (module docstring).

    Args:
        hidden: ``(..., d)`` states, e.g. ``(B, T, d)``; any float dtype (computed in
            fp32, or fp64 when given fp64).
        mask: ``hidden.shape[:-1]`` boolean/0-1 tensor of the tokens that count; ``None``
            counts every token.
        subspace: the current :class:`~vardecouple.subspace.Subspace`; treated as constant.
        form: ``"norm"``, ``"squared"`` or ``"fraction"``.
        eps: added to ``‖h − c‖²`` in the ``fraction`` form.

    Returns:
        A scalar tensor (fp32/fp64) with a gradient to ``hidden`` only. With an empty
        mask it is 0 and still part of the graph.
    """
    if form not in PENALTY_FORMS:
        raise ValueError(f"penalty form: expected one of {', '.join(PENALTY_FORMS)}, got {form!r}")
    if not isinstance(hidden, Tensor) or hidden.ndim < 1 or hidden.shape[-1] != subspace.dim:
        shape = tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__
        raise ValueError(
            f"penalty hidden states: expected shape (..., {subspace.dim}), got {shape}"
        )
    if not hidden.is_floating_point():
        raise ValueError(f"penalty hidden states: expected a float tensor, got {hidden.dtype}")
    if mask is not None and tuple(mask.shape) != tuple(hidden.shape[:-1]):
        raise ValueError(
            f"penalty mask: expected shape {tuple(hidden.shape[:-1])}, got {tuple(mask.shape)}"
        )
    dtype = torch.float64 if hidden.dtype == torch.float64 else torch.float32
    u = subspace.basis.detach().to(device=hidden.device, dtype=dtype)
    assert subspace.center is not None
    c = subspace.center.detach().to(device=hidden.device, dtype=dtype)
    h = hidden.to(dtype)
    coords = h @ u  # (..., k)
    if form == "norm":
        per_token = torch.linalg.vector_norm(coords, dim=-1)
    else:
        coords = coords - c @ u
        inside = coords.square().sum(-1)
        if form == "squared":
            per_token = inside
        else:
            per_token = inside / ((h - c).square().sum(-1) + eps)
    if mask is None:
        return per_token.mean() if per_token.numel() else per_token.sum()
    weights = mask.to(device=hidden.device, dtype=dtype)
    # A masked sum (no boolean indexing): no host sync on accelerators; 0 when empty.
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)
