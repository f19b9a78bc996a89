r"""Inference-time erasure: remove the standard variety's subspace while the model generates.

No retraining. At each chosen decoder layer ``l`` the output state of every position is
replaced, during the forward pass, by

.. math::

    h \leftarrow h - \alpha\, U_l U_l^\top (h - c_l),

where :math:`(U_l, c_l)` is the :class:`~vardecouple.subspace.Subspace` that an
estimator fits on **the model's own** states of the probe set (the standard variety vs
the others): exactly the estimate the online decoupler starts training from (its
step-0 refresh, :meth:`~vardecouple.decouple.OnlineDecoupler.refresh`, fitted on the
probe rows outside its held-out ``measure_fraction``). ``α = 0`` is the identity
(generation is unchanged token for token), ``α = 1`` removes the subspace at that layer,
``α > 1`` reflects it.

At an erased layer the overlap of the erased states with ``U_l`` is zero by
construction (for ``α = 1``), so that says nothing. What erasure does to the network is
read off the **later** layers: :func:`later_overlaps` fits a reference subspace at every
layer from the first erased one up, on the unerased model, and reports the held-out
overlap of each variety there without and with erasure.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from vardecouple.decouple import DecouplerConfig, OnlineDecoupler, ProbeSentence
from vardecouple.states import decoder_layers
from vardecouple.subspace import ESTIMATORS, Subspace

__all__ = ["EraseConfig", "Erasure", "erasing", "fit_erasure", "later_overlaps"]


@dataclass(frozen=True)
class EraseConfig:
    """What is erased, where and how strongly.

    ``layers=None`` means the middle layer ``L // 2`` (the decoupler's default);
    ``estimator``/``rank``/``estimator_options`` fit the subspace (any of
    :data:`~vardecouple.subspace.ESTIMATORS`); ``seed`` drives the probe split and
    gradient-based estimators.
    """

    layers: tuple[int, ...] | None = None
    alpha: float = 1.0
    estimator: str = "lda"
    rank: int = 1
    estimator_options: dict[str, Any] = field(default_factory=dict)
    measure_fraction: float = 0.25
    batch_size: int = 16
    max_length: int = 128
    seed: int = 0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.alpha) and self.alpha >= 0):
            raise ValueError(f"erase: alpha must be a finite number >= 0, got {self.alpha}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(
                f"erase: unknown estimator {self.estimator!r}; expected one of "
                f"{', '.join(ESTIMATORS)}"
            )
        if self.rank < 1:
            raise ValueError(f"erase: rank must be >= 1, got {self.rank}")
        if self.layers is not None and not self.layers:
            raise ValueError("erase: layers must name at least one layer (or be None)")

    def decoupler(self, layers: Sequence[int] | None = None) -> DecouplerConfig:
        """The (never penalising) decoupler settings whose step-0 refresh fits the subspaces."""
        return DecouplerConfig(
            estimator=self.estimator,
            rank=self.rank,
            estimator_options=dict(self.estimator_options),
            reference_estimator=self.estimator,
            reference_rank=self.rank,
            layers=tuple(layers) if layers is not None else self.layers,
            penalize=False,
            measure_fraction=self.measure_fraction,
            probe_batch_size=self.batch_size,
            max_length=self.max_length,
            seed=self.seed,
        )


@dataclass(frozen=True)
class Erasure:
    """Fitted erasers: one subspace per erased layer, the strength, and the fit's log."""

    subspaces: Mapping[int, Subspace]
    alpha: float
    log: Mapping[str, Any]

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary: layers, α, ranks and the held-out overlaps of the fit."""
        return {
            "layers": sorted(self.subspaces),
            "alpha": self.alpha,
            "rank": {str(i): s.rank for i, s in sorted(self.subspaces.items())},
            "held_out_overlap": self.log.get("overlap", {}),
        }


def fit_erasure(
    model: nn.Module, tokenizer: Any, probe: Sequence[ProbeSentence], config: EraseConfig
) -> Erasure:
    """Fit the subspace of every erased layer on ``model``'s own states of ``probe``."""
    num_layers = len(decoder_layers(model))
    decoupler = OnlineDecoupler(config.decoupler(), probe, num_layers)
    log = decoupler.refresh(model, tokenizer, step=0)
    return Erasure(dict(decoupler.subspaces), config.alpha, log)


@contextmanager
def erasing(model: nn.Module, erasure: Erasure | None) -> Iterator[None]:
    """Within the block every forward pass of ``model`` erases (``None``: nothing).

    Forward hooks on the erased decoder layers replace their output hidden states with
    ``subspace.remove(h, α)``: every position, prompt and generated tokens alike (with a
    KV cache, each new position is erased as it is computed).
    """
    if erasure is None:
        yield
        return
    blocks = decoder_layers(model)
    bad = [i for i in erasure.subspaces if not 0 <= i < len(blocks)]
    if bad:
        raise ValueError(f"erase: layers {bad} out of range 0..{len(blocks) - 1}")

    def hook(subspace: Subspace):
        def fn(_module: nn.Module, _inputs: Any, output: Any) -> Any:
            if isinstance(output, tuple):
                return (subspace.remove(output[0], erasure.alpha), *output[1:])
            return subspace.remove(output, erasure.alpha)

        return fn

    handles = [blocks[i].register_forward_hook(hook(s)) for i, s in erasure.subspaces.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def later_overlaps(
    model: nn.Module,
    tokenizer: Any,
    probe: Sequence[ProbeSentence],
    erasure: Erasure,
    config: EraseConfig,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{layer: {variety: {"plain": o, "erased": o'}}}`` for every layer ≥ the first erased.

    At each such layer a reference subspace is fitted (``config``'s estimator and rank)
    on the unerased model's states of the probe rows outside the held-out part (the
    same split as :func:`fit_erasure`); ``o`` and ``o'`` are the overlaps of the
    held-out rows of each variety with it, read without and with erasure.
    """
    num_layers = len(decoder_layers(model))
    layers = list(range(min(erasure.subspaces), num_layers))
    decoupler = OnlineDecoupler(config.decoupler(layers), probe, num_layers)
    plain = decoupler.refresh(model, tokenizer, step=0)["overlap"]
    with erasing(model, erasure):
        held, _, varieties = decoupler._states(model, tokenizer, decoupler.measure)

    out: dict[str, dict[str, dict[str, float]]] = {}
    for i in layers:
        per: dict[str, dict[str, float]] = {}
        for variety in sorted(set(varieties)):
            rows = torch.tensor([v == variety for v in varieties])
            per[variety] = {
                "plain": plain[str(i)][variety]["own"],
                "erased": decoupler.subspaces[i].overlap(held[i][rows]),
            }
        out[str(i)] = per
    return out
