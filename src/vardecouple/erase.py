r"""Inference-time erasure: remove the standard variety's subspace while the model generates.

No retraining. At each chosen decoder layer ``l`` the output state of every position is
replaced, during the forward pass, by

.. math::

    h \leftarrow h - \alpha\, U_l U_l^\top (h - c_l),

where :math:`(U_l, c_l)` is the :class:`~vardecouple.subspace.Subspace` that an
estimator fits on **the model's own** states of the probe set (the standard variety vs
the others): exactly the estimate the online decoupler starts training from (its
step-0 refresh, :meth:`~vardecouple.probes.online.OnlineProbe.refresh`, fitted on the
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

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vardecouple.model.states import decoder_layers
from vardecouple.probes.online import OnlineProbe, ProbeConfig, ProbeSentence
from vardecouple.subspace import Subspace

__all__ = ["EraseConfig", "Erasure", "erasing", "fit_erasure", "later_overlaps"]


def _alpha_ok(alpha: float) -> bool:
    """The erasing strength α: a finite number ≥ 0 (1 removes the subspace, 0 nothing)."""
    return math.isfinite(alpha) and alpha >= 0


@dataclass
class EraseConfig(ProbeConfig):
    """What is erased, where and how strongly: ``alpha`` and the probe settings of
    :class:`~vardecouple.probes.online.ProbeConfig` (``layers=None``: the middle layer
    ``L // 2``; ``estimator``/``rank``/``estimator_options`` fit the subspace; ``seed``
    drives the probe split and gradient-based estimators). No reference ``U₀`` is fitted.
    """

    section = "erase"

    alpha: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self.require(
            (_alpha_ok(self.alpha), f"alpha must be a finite number >= 0, got {self.alpha}")
        )

    def at(self, layers: Sequence[int]) -> EraseConfig:
        """The same settings at ``layers``."""
        return dataclasses.replace(self, layers=tuple(layers))


@dataclass(frozen=True)
class Erasure:
    """Fitted erasers: one subspace per erased layer, the strength, and the fit's log."""

    subspaces: Mapping[int, Subspace]
    alpha: float
    log: Mapping[str, Any]

    def __post_init__(self) -> None:
        if not _alpha_ok(self.alpha):
            raise ValueError(f"erase: alpha must be a finite number >= 0, got {self.alpha}")

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
    online = OnlineProbe(config, probe, len(decoder_layers(model)), reference=False)
    log = online.refresh(model, tokenizer, step=0)
    return Erasure(dict(online.subspaces), config.alpha, log)


@contextmanager
def erasing(
    model: nn.Module,
    erasure: Erasure | Mapping[int, Subspace] | None,
    alpha: float | None = None,
) -> Iterator[None]:
    """Within the block every forward pass of ``model`` erases (``None``: nothing).

    ``erasure``: fitted by :func:`fit_erasure`, or any mapping from layer to
    :class:`~vardecouple.subspace.Subspace` (e.g.
    :func:`~vardecouple.probes.artifact.load_subspace` of a trained run's ``subspace/``
    folder); ``alpha`` overrides the erasure's strength (default 1 for a mapping).

    Forward hooks on the erased decoder layers replace their output hidden states with
    ``subspace.remove(h, α)``: every position, prompt and generated tokens alike (with a
    KV cache, each new position is erased as it is computed).
    """
    if erasure is None:
        yield
        return
    if not isinstance(erasure, Erasure):
        erasure = Erasure(dict(erasure), 1.0 if alpha is None else alpha, {})
    elif alpha is not None:
        erasure = dataclasses.replace(erasure, alpha=alpha)
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
    online = OnlineProbe(config.at(layers), probe, num_layers, reference=False)
    plain = online.refresh(model, tokenizer, step=0)["overlap"]
    with erasing(model, erasure):
        held, _, varieties = online.states(model, tokenizer, online.measure)

    out: dict[str, dict[str, dict[str, float]]] = {}
    for i in layers:
        per: dict[str, dict[str, float]] = {}
        for variety in sorted(set(varieties)):
            rows = torch.tensor([v == variety for v in varieties])
            per[variety] = {
                "plain": plain[str(i)][variety]["own"],
                "erased": online.subspaces[i].overlap(held[i][rows]),
            }
        out[str(i)] = per
    return out
