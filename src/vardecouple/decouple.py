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

``U`` and ``c`` are constants between refreshes: no gradient reaches them. With several
layers the penalty is their mean, so λ means the same for any number.

:class:`OnlineDecoupler` is an :class:`~vardecouple.probes.online.OnlineProbe` (the
held-out probe set, its split, the estimators, the overlaps) with the schedule of the
method on top: a refresh of ``U`` at step 0 (on the base model, which also fixes the
reference ``U₀``) and every ``refresh_every`` optimizer steps after; λ, with an optional
linear warm-up or matched at step 0 to a target penalty; the tokens the penalty sees.
Every arm runs the refreshes; arms without a penalty (``penalize=False``) only log.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import torch
from torch import Tensor

from vardecouple.probes.online import OnlineProbe, ProbeConfig, ProbeSentence
from vardecouple.subspace import Subspace

__all__ = [
    "PENALTY_FORMS",
    "TOKEN_RULES",
    "DecouplerConfig",
    "OnlineDecoupler",
    "PenaltyForm",
    "projection_penalty",
]

PenaltyForm = Literal["norm", "squared", "fraction"]
PENALTY_FORMS: tuple[str, ...] = get_args(PenaltyForm)
TokenRule = Literal["all", "target", "low-resource"]
TOKEN_RULES: tuple[str, ...] = get_args(TokenRule)


def projection_penalty(
    hidden: Tensor,
    mask: Tensor | None,
    subspace: Subspace,
    form: PenaltyForm = "norm",
    eps: float = 1e-6,
) -> Tensor:
    """Mean over the masked tokens of the subspace penalty ``φ(h)`` (module docstring).

    ``hidden``: ``(..., d)`` states of any float dtype (computed in fp32, fp64 if given
    fp64); ``mask``: ``hidden.shape[:-1]``, the tokens that count (``None``: all);
    ``subspace``: constant; ``eps`` is added to ``‖h − c‖²`` in the ``fraction`` form.
    Returns a scalar with a gradient to ``hidden`` only (0, still in the graph, when the
    mask is empty).
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


@dataclass
class DecouplerConfig(ProbeConfig):
    """Every choice the paper left open, explicit (the probe's settings: inherited from
    :class:`~vardecouple.probes.online.ProbeConfig`). ``tokens``: ``"all"`` non-pad
    tokens but the first (the paper), ``"target"`` tokens only, or ``"low-resource"``:
    those of examples whose target variety is not the standard. ``match_penalty``: set
    λ at step 0 so that λ·L(step 0) equals it.
    """

    section = "decoupler"

    refresh_every: int = 500
    form: PenaltyForm = "norm"
    lam: float = 0.01
    warmup_steps: int = 0
    tokens: TokenRule = "all"
    penalize: bool = True
    match_penalty: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require(
            (self.refresh_every >= 1, f"refresh_every must be >= 1, got {self.refresh_every}"),
            (self.lam >= 0, f"lam (λ) must be >= 0, got {self.lam}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.form in PENALTY_FORMS, f"form must be one of {PENALTY_FORMS}, got {self.form!r}"),
            (self.tokens in TOKEN_RULES, f"unknown tokens rule {self.tokens!r}"),
            (self.match_penalty is None or self.match_penalty > 0, "match_penalty must be > 0"),
        )


class OnlineDecoupler(OnlineProbe):
    """The online probe + penalty of the method (module docstring)."""

    config: DecouplerConfig

    def __init__(
        self, config: DecouplerConfig, probe: Sequence[ProbeSentence], num_layers: int
    ) -> None:
        super().__init__(config, probe, num_layers)
        self.lam = config.lam
        self.held_out_penalty = lambda h, u: projection_penalty(h, None, u, config.form)

    def due(self, step: int) -> bool:
        """Whether ``U`` is refreshed before ``step``: at step 0, then every ``refresh_every``."""
        return self.last_refresh is None or step - self.last_refresh >= self.config.refresh_every

    def match(self, start_penalty: float) -> float:
        """Magnitude matching: λ ← match_penalty / L(step 0) when asked; returns λ."""
        if self.config.match_penalty is not None:
            self.lam = self.config.match_penalty / max(start_penalty, 1e-12)
        return self.lam

    def lam_at(self, step: int) -> float:
        """λ at ``step`` (0 when the arm has no penalty; linear warm-up if asked)."""
        if not self.config.penalize:
            return 0.0
        warm = self.config.warmup_steps
        return self.lam * (min(1.0, (step + 1) / warm) if warm else 1.0)

    def token_mask(
        self, attention_mask: Tensor, target_mask: Tensor, low_resource: Tensor
    ) -> Tensor:
        """The tokens the penalty sees: ``(B, T)`` from the batch masks, first position out.
        ``low_resource`` is ``(B,)``: whether each example's target is not the standard."""
        mask = attention_mask.bool().clone()
        mask[:, 0] = False
        if self.config.tokens == "target":
            mask &= target_mask.bool()
        elif self.config.tokens == "low-resource":
            mask &= low_resource.bool()[:, None]
        return mask

    def penalty(self, hidden: dict[int, Tensor], mask: Tensor) -> Tensor:
        """``L_dec``: the mean over the layers of :func:`projection_penalty` (without λ)."""
        if not self.subspaces:
            raise ValueError("decoupler: refresh() must run (at step 0) before penalty()")
        terms = [
            projection_penalty(hidden[i], mask, self.subspaces[i], self.config.form)
            for i in self.layers
        ]
        return torch.stack(terms).mean()

    def add_penalty(
        self, loss: Tensor, hidden: dict[int, Tensor], mask: Tensor, lam: float, scale: float = 1.0
    ) -> tuple[Tensor, Tensor]:
        """``(loss + λ·scale·L_dec, L_dec)``. With λ = 0 the penalty is only measured
        (detached: no gradient), so an arm without a penalty trains exactly as plain LoRA."""
        if lam > 0:
            penalty = self.penalty(hidden, mask)
            return loss + lam * scale * penalty, penalty
        with torch.no_grad():
            penalty = self.penalty({k: v.detach() for k, v in hidden.items()}, mask)
        return loss, penalty

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"lam": self.lam}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.lam = state.get("lam", self.config.lam)
