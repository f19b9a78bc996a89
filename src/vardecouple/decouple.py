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

:class:`OnlineDecoupler` keeps ``U`` current. Every ``refresh_every`` optimizer steps
(and at step 0, on the base model) it runs the held-out *probe set* — labelled sentences
(0 = standard, 1..m = the other varieties), never training targets — through the
current model without gradients, and updates one estimator per layer (warm start or
discounted statistics, never a refit). Step 0 also fits the frozen *reference*
subspace ``U₀`` (the same reference estimator for every arm), the common yardstick
across arms (``docs/method.md``). A quarter of the probe sentences
(``measure_fraction``) is never fitted on:
it measures, per layer and variety, the overlap
``Σ‖Uᵀ(h−c)‖² / Σ‖h−c‖²`` with the current ``U`` ("own") and with ``U₀`` ("reference").
Every arm runs the refreshes; arms without a penalty (``penalize=False``) only log.
With several layers the penalty is their mean, so λ means the same for any number.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from vardecouple.states import folded_weights
from vardecouple.subspace import Subspace, make_estimator, overlap_ratio

__all__ = [
    "PENALTY_FORMS",
    "DecouplerConfig",
    "OnlineDecoupler",
    "PenaltyForm",
    "projection_penalty",
]
TokenRule = Literal["all", "target", "low-resource"]

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


class ProbeSentence(Protocol):
    text: str
    variety: str
    label: int


@dataclass
class DecouplerConfig:
    """Every choice the paper left open, explicit (defaults = the paper's reading).

    ``tokens``: ``"all"`` non-pad tokens but the first (the paper), ``"target"`` tokens
    only, or ``"low-resource"``: the tokens of examples whose target variety is not the
    standard. ``layers=None`` means the middle layer ``L // 2``. ``context``: the probe
    reads raw sentences (``"sentence"``, the paper) or the target tokens of translation
    prompts built from the probe rows (``"prompt"``: the states the penalty sees).

    Two opt-in approximations make a refresh cheaper (each is recorded in the config the
    run saves): ``probe_dtype = "bf16"`` reads the probe states with bf16 weights, and
    ``fit_fraction < 1`` lets every refresh after step 0 fit on a fresh seeded draw of
    that fraction of the fit rows (by aligned row). Step 0 (the first fit and the
    reference ``U₀``) and the held-out overlaps always read every row.
    """

    estimator: str = "lda"
    rank: int = 1
    estimator_options: dict[str, Any] = field(default_factory=dict)
    reference_estimator: str = "lda"
    reference_rank: int = 1
    layers: tuple[int, ...] | None = None
    refresh_every: int = 500
    form: PenaltyForm = "norm"
    lam: float = 0.01
    warmup_steps: int = 0
    tokens: TokenRule = "all"
    penalize: bool = True
    measure_fraction: float = 0.25
    context: Literal["sentence", "prompt"] = "sentence"
    probe_batch_size: int = 16
    max_length: int = 128
    probe_dtype: Literal["fp32", "bf16"] = "fp32"
    fit_fraction: float = 1.0
    seed: int = 0
    match_penalty: float | None = None  # set λ at step 0 so that λ·L(step 0) equals this

    def __post_init__(self) -> None:
        checks = [
            (self.refresh_every >= 1, f"refresh_every must be >= 1, got {self.refresh_every}"),
            (self.lam >= 0, f"lam (λ) must be >= 0, got {self.lam}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (self.form in PENALTY_FORMS, f"form must be one of {PENALTY_FORMS}, got {self.form!r}"),
            (
                self.tokens in ("all", "target", "low-resource"),
                f"unknown tokens rule {self.tokens!r}",
            ),
            (0 < self.measure_fraction < 1, "measure_fraction must lie in (0, 1)"),
            (self.context in ("sentence", "prompt"), f"unknown context {self.context!r}"),
            (self.match_penalty is None or self.match_penalty > 0, "match_penalty must be > 0"),
            (
                self.probe_dtype in ("fp32", "bf16"),
                f"probe_dtype must be 'fp32' or 'bf16', got {self.probe_dtype!r}",
            ),
            (
                0 < self.fit_fraction <= 1,
                f"fit_fraction must lie in (0, 1], got {self.fit_fraction}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"decoupler: {message}")


class OnlineDecoupler:
    """The online probe + penalty of the method (module docstring)."""

    def __init__(
        self, config: DecouplerConfig, probe: Sequence[ProbeSentence], num_layers: int
    ) -> None:
        self.config = config
        layers = config.layers if config.layers is not None else (num_layers // 2,)
        bad = [i for i in layers if not 0 <= i < num_layers]
        if bad:
            raise ValueError(f"decoupler: layers {bad} out of range 0..{num_layers - 1}")
        self.layers = tuple(layers)
        labels = {s.label for s in probe}
        if 0 not in labels or len(labels) < 2:
            raise ValueError("decoupler: the probe set needs the standard (0) and another variety")
        # split by aligned row (``group``) where known: no translation of a measured
        # sentence is fitted on
        key = [g if (g := getattr(s, "group", -1)) >= 0 else -1 - i for i, s in enumerate(probe)]
        keys = sorted(set(key))
        random.Random(config.seed).shuffle(keys)
        held = set(keys[: max(1, round(config.measure_fraction * len(keys)))])
        is_held = [k in held for k in key]
        self._held_rows = [(s, k) for s, k, h in zip(probe, key, is_held, strict=True) if h]
        self._fit_rows = [(s, k) for s, k, h in zip(probe, key, is_held, strict=True) if not h]
        self.varieties = sorted({s.variety for s, _ in self._held_rows})
        self._num_classes = max(labels) + 1
        self.distribute()
        self.subspaces: dict[int, Subspace] = {}
        self.reference: dict[int, Subspace] = {}
        self.last_refresh: int | None = None
        self.lam = config.lam

    def distribute(self) -> None:
        """Take this process's shard of the probe rows and (re)build the estimators.

        In one process: every row. Under ``torch.distributed`` with several processes each
        reads a shard of the aligned rows (so each shard has every variety), of the fit
        rows and of the held-out rows alike: the estimators all-reduce their statistics or
        gradients (a fixed label count keeps the reduced shapes equal) and the overlaps
        all-reduce their numerators and denominators, so every process holds one subspace
        and logs the same overlaps. Runs at construction;
        :func:`~vardecouple.train.train` calls it again when the process group came later.
        """
        rows, held, self.shared = self._fit_rows, self._held_rows, {}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            rank, world = dist.get_rank(), dist.get_world_size()
            mine = set(sorted({k for _, k in rows})[rank::world])
            rows = [(s, k) for s, k in rows if k in mine]
            groups = sorted({k for _, k in held})
            if len(groups) >= world:  # else every process measures every row: summed
                mine = set(groups[rank::world])  # numerators and denominators are then
                held = [(s, k) for s, k in held if k in mine]  # world × both: same ratio
            self.shared = {"all_reduce": dist.all_reduce, "num_classes": self._num_classes}
        self.fit_on = [s for s, _ in rows]
        self._fit_keys = [k for _, k in rows]
        self.measure = [s for s, _ in held]
        options = self.config.estimator_options | self.shared
        self.estimators = {
            i: make_estimator(self.config.estimator, self.config.rank, **options)
            for i in self.layers
        }

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

    def due(self, step: int) -> bool:
        return self.last_refresh is None or step - self.last_refresh >= self.config.refresh_every

    def _states(self, model: nn.Module, tokenizer: Any, sentences: Sequence[ProbeSentence]):
        from vardecouple.data import probe_prompts
        from vardecouple.model import target_states, token_states

        size = {"batch_size": self.config.probe_batch_size, "max_length": self.config.max_length}
        dtype = torch.bfloat16 if self.config.probe_dtype == "bf16" else None
        with folded_weights(model, dtype):  # adapters folded in: one matmul per layer
            if self.config.context == "prompt":
                sentences, prompts, targets = probe_prompts(sentences)
                states, owner = target_states(
                    model, tokenizer, prompts, targets, self.layers, **size
                )
            else:
                texts = [s.text for s in sentences]
                states, owner = token_states(model, tokenizer, texts, self.layers, **size)
        labels = torch.tensor([s.label for s in sentences], dtype=torch.long)[owner]
        varieties = [sentences[int(j)].variety for j in owner]
        return states, labels, varieties

    def fit_rows(self, step: int) -> list[ProbeSentence]:
        """The rows this process fits on at ``step``: all of its shard, or with
        ``fit_fraction < 1`` after step 0 a draw of that fraction of the aligned rows
        (seeded by ``seed`` and ``step``, drawn over all processes' rows, so the union of
        the shards is what one process would read; a resumed run draws the same)."""
        if self.last_refresh is None or self.config.fit_fraction >= 1:
            return self.fit_on
        keys = sorted({k for _, k in self._fit_rows})
        take = max(1, round(self.config.fit_fraction * len(keys)))
        drawn = set(random.Random(f"{self.config.seed}:{step}").sample(keys, take))
        return [s for s, k in zip(self.fit_on, self._fit_keys, strict=True) if k in drawn]

    def refresh(self, model: nn.Module, tokenizer: Any, step: int) -> dict[str, Any]:
        """Re-estimate ``U`` per layer from the current model; returns what to log.

        The model runs without gradients; gradient-based probes train on the states.
        """
        was_training = model.training
        model.eval()
        try:
            states, labels, _ = self._states(model, tokenizer, self.fit_rows(step))
            held, _, held_varieties = self._states(model, tokenizer, self.measure)
        finally:
            model.train(was_training)
        first = self.last_refresh is None
        log: dict[str, Any] = {
            "step": step,
            "refresh": True,
            "overlap": {},
            "angle_to_previous": {},
        }
        for i in self.layers:
            est = self.estimators[i]
            new = est.fit(states[i], labels) if first else est.update(states[i], labels)
            if first:
                ref = make_estimator(self.config.reference_estimator, self.config.reference_rank,
                                     **self.shared)  # fmt: skip
                self.reference[i] = ref.fit(states[i], labels)
            elif i in self.subspaces:
                angle = new.principal_angles(self.subspaces[i]).max()
                log["angle_to_previous"][str(i)] = float(angle)
            self.subspaces[i] = new
            log["overlap"][str(i)] = self._overlaps(i, held[i], held_varieties, model)
        self.last_refresh = step
        return log

    def _overlaps(
        self, layer: int, held: Tensor, varieties: list[str], model: nn.Module
    ) -> dict[str, dict[str, float]]:
        """Per variety, the overlap of the held-out states with ``U`` ("own") and ``U₀``
        ("reference"); numerators and denominators summed over processes first."""
        terms = []
        for variety in self.varieties:
            rows = torch.tensor([v == variety for v in varieties], dtype=torch.bool)
            for subspace in (self.subspaces[layer], self.reference[layer]):
                terms.append(subspace.overlap_terms(held[rows]))
        summed = torch.stack(terms)  # (2 × varieties, 2)
        if self.shared:
            device = next(model.parameters()).device  # NCCL reduces device tensors only
            on_device = summed.to(device)
            self.shared["all_reduce"](on_device)
            summed = on_device.cpu()
        pairs = iter(summed.tolist())
        return {
            variety: {
                "own": overlap_ratio(*next(pairs)),
                "reference": overlap_ratio(*next(pairs)),
            }
            for variety in self.varieties
        }

    def penalty(self, hidden: dict[int, Tensor], mask: Tensor) -> Tensor:
        """Mean over the layers of :func:`projection_penalty` (unweighted by λ)."""
        if not self.subspaces:
            raise ValueError("decoupler: refresh() must run (at step 0) before penalty()")
        terms = [
            projection_penalty(hidden[i], mask, self.subspaces[i], self.config.form)
            for i in self.layers
        ]
        return torch.stack(terms).mean()

    def token_mask(
        self, attention_mask: Tensor, target_mask: Tensor, low_resource: Tensor
    ) -> Tensor:
        """The tokens the penalty sees: ``(B, T)`` from the batch masks, first position out.

        ``low_resource`` is ``(B,)``: whether each example's target variety is not the
        standard.
        """
        mask = attention_mask.bool().clone()
        mask[:, 0] = False
        if self.config.tokens == "target":
            mask &= target_mask.bool()
        elif self.config.tokens == "low-resource":
            mask &= low_resource.bool()[:, None]
        return mask

    def state_dict(self) -> dict[str, Any]:
        return {
            "estimators": {str(i): e.state_dict() for i, e in self.estimators.items()},
            "subspaces": {str(i): s.state_dict() for i, s in self.subspaces.items()},
            "reference": {str(i): s.state_dict() for i, s in self.reference.items()},
            "last_refresh": self.last_refresh,
            "lam": self.lam,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, est in self.estimators.items():
            est.load_state_dict(state["estimators"][str(i)])
        self.subspaces = {
            int(i): Subspace.from_state_dict(s) for i, s in state["subspaces"].items()
        }
        self.reference = {
            int(i): Subspace.from_state_dict(s) for i, s in state["reference"].items()
        }
        self.last_refresh = state["last_refresh"]
        self.lam = state.get("lam", self.config.lam)
