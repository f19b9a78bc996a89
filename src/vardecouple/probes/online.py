r"""The online probe: a held-out labelled probe set, read through the current model, and
one estimator per layer kept current on it.

The probe set holds labelled sentences (0 = the standard variety, 1..m = the others),
never training targets. It is split once, by aligned row where rows are aligned (no
translation of a measured sentence is fitted on): a ``measure_fraction`` of the rows is
never fitted on and measures, per layer and variety, the overlap
``Σ‖Uᵀ(h−c)‖² / Σ‖h−c‖²`` with the current ``U`` ("own") and with the frozen reference
``U₀`` fitted at the first refresh ("reference"). :meth:`OnlineProbe.refresh` reads
both parts through the model without gradients and updates each layer's estimator
(a fit the first time; warm start or discounted statistics after, never a refit).

Under ``torch.distributed`` each process reads a shard of the aligned rows; the
estimators all-reduce their statistics or gradients and the overlaps their numerators
and denominators, so every process holds the same subspaces and logs the same overlaps.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn

from vardecouple.data import probe_prompts
from vardecouple.model.states import folded_weights, target_states, token_states
from vardecouple.probes.registry import check_estimator, make_estimator
from vardecouple.subspace import Subspace, overlap_ratio

__all__ = ["OnlineProbe", "ProbeConfig", "ProbeSentence"]


class ProbeSentence(Protocol):
    text: str
    variety: str
    label: int


@dataclass
class ProbeConfig:
    """How the probe set is split, read and fitted.

    ``layers=None`` means the middle layer ``L // 2``. ``context``: the probe reads raw
    sentences (``"sentence"``, the paper) or the target tokens of translation prompts
    built from the probe rows (``"prompt"``: the states the penalty sees).

    Two opt-in approximations make a refresh cheaper (each is recorded in the config a
    run saves): ``probe_dtype = "bf16"`` reads the probe states with bf16 weights, and
    ``fit_fraction < 1`` lets every refresh after the first fit on a fresh seeded draw of
    that fraction of the fit rows (by aligned row). The first refresh (the first fit and
    the reference ``U₀``) and the held-out overlaps always read every row.
    """

    section: ClassVar[str] = "probe"  # names the settings in error messages

    estimator: str = "lda"
    rank: int = 1
    estimator_options: dict[str, Any] = field(default_factory=dict)
    reference_estimator: str = "lda"
    reference_rank: int = 1
    layers: tuple[int, ...] | None = None
    measure_fraction: float = 0.25
    context: Literal["sentence", "prompt"] = "sentence"
    probe_batch_size: int = 16
    max_length: int = 128
    probe_dtype: Literal["fp32", "bf16"] = "fp32"
    fit_fraction: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in (self.estimator, self.reference_estimator):
            check_estimator(name, self.section)
        self.require(
            (self.rank >= 1, f"rank must be >= 1, got {self.rank}"),
            (
                self.layers is None or len(self.layers) > 0,
                "layers must name at least one layer (or be None)",
            ),
            (0 < self.measure_fraction < 1, "measure_fraction must lie in (0, 1)"),
            (self.context in ("sentence", "prompt"), f"unknown context {self.context!r}"),
            (
                self.probe_dtype in ("fp32", "bf16"),
                f"probe_dtype must be 'fp32' or 'bf16', got {self.probe_dtype!r}",
            ),
            (
                0 < self.fit_fraction <= 1,
                f"fit_fraction must lie in (0, 1], got {self.fit_fraction}",
            ),
        )

    def require(self, *checks: tuple[bool, str]) -> None:
        """A ValueError ``"<section>: <message>"`` for the first failed check."""
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{self.section}: {message}")


class OnlineProbe:
    """The probe set of ``config``, split and sharded, with one estimator per layer.

    ``reference=False`` skips the frozen reference ``U₀`` (its "reference" overlaps are
    then absent).
    """

    def __init__(
        self,
        config: ProbeConfig,
        probe: Sequence[ProbeSentence],
        num_layers: int,
        *,
        reference: bool = True,
    ) -> None:
        self.config = config
        layers = config.layers if config.layers is not None else (num_layers // 2,)
        bad = [i for i in layers if not 0 <= i < num_layers]
        config.require((not bad, f"layers {bad} out of range 0..{num_layers - 1}"))
        self.layers = tuple(layers)
        labels = {s.label for s in probe}
        config.require(
            (
                0 in labels and len(labels) >= 2,
                "the probe set needs the standard (0) and another variety",
            )
        )
        # split by aligned row (``group``) where known: no translation of a measured
        # sentence is fitted on
        key = [g if (g := getattr(s, "group", -1)) >= 0 else -1 - i for i, s in enumerate(probe)]
        keys = sorted(set(key))
        random.Random(config.seed).shuffle(keys)
        held = set(keys[: max(1, round(config.measure_fraction * len(keys)))])
        rows = list(zip(probe, key, strict=True))
        self.held_rows = [(s, k) for s, k in rows if k in held]
        self.fit_rows_all = [(s, k) for s, k in rows if k not in held]
        self.varieties = sorted({s.variety for s, _ in self.held_rows})
        self.num_classes = max(labels) + 1
        self.with_reference = reference
        self.subspaces: dict[int, Subspace] = {}
        self.reference: dict[int, Subspace] = {}
        self.last_refresh: int | None = None
        # φ(states, U) → mean penalty: set by a decoupler, so that each refresh also logs
        # the penalty on the held-out rows under the previous U, the new U and U₀
        self.held_out_penalty: Callable[[Tensor, Subspace], Tensor] | None = None
        self.distribute()

    def distribute(self) -> None:
        """Take this process's shard of the probe rows and (re)build the estimators.

        In one process: every row. With several processes each reads a shard of the
        aligned rows (so each shard has every variety), of the fit rows and of the held-out
        rows alike; a fixed label count keeps the all-reduced shapes equal. Runs at
        construction; :func:`~vardecouple.train.loop.train` calls it again when the process
        group came later.
        """
        rows, held, self.shared = self.fit_rows_all, self.held_rows, {}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            rank, world = dist.get_rank(), dist.get_world_size()
            mine = set(sorted({k for _, k in rows})[rank::world])
            rows = [(s, k) for s, k in rows if k in mine]
            groups = sorted({k for _, k in held})
            if len(groups) >= world:  # else every process measures every row: summed
                mine = set(groups[rank::world])  # numerators and denominators are then
                held = [(s, k) for s, k in held if k in mine]  # world × both: same ratio
            self.shared = {"all_reduce": dist.all_reduce, "num_classes": self.num_classes}
        self.fit_on = [s for s, _ in rows]
        self.fit_keys = [k for _, k in rows]
        self.measure = [s for s, _ in held]
        options = self.config.estimator_options | self.shared
        self.estimators = {
            i: make_estimator(self.config.estimator, self.config.rank, **options)
            for i in self.layers
        }

    def states(
        self, model: nn.Module, tokenizer: Any, sentences: Sequence[ProbeSentence]
    ) -> tuple[dict[int, Tensor], Tensor, list[str]]:
        """Token states of ``sentences`` at the probe's layers, with each token's label and
        variety (the model runs as it is: no gradients, adapters folded in)."""
        config = self.config
        size = {"batch_size": config.probe_batch_size, "max_length": config.max_length}
        dtype = torch.bfloat16 if config.probe_dtype == "bf16" else None
        with folded_weights(model, dtype):  # adapters folded in: one matmul per layer
            if config.context == "prompt":
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
        ``fit_fraction < 1`` after the first refresh a draw of that fraction of the aligned
        rows (seeded by ``seed`` and ``step``, drawn over all processes' rows, so the union
        of the shards is what one process would read; a resumed run draws the same)."""
        if self.last_refresh is None or self.config.fit_fraction >= 1:
            return self.fit_on
        keys = sorted({k for _, k in self.fit_rows_all})
        take = max(1, round(self.config.fit_fraction * len(keys)))
        drawn = set(random.Random(f"{self.config.seed}:{step}").sample(keys, take))
        return [s for s, k in zip(self.fit_on, self.fit_keys, strict=True) if k in drawn]

    def refresh(self, model: nn.Module, tokenizer: Any, step: int) -> dict[str, Any]:
        """Re-estimate ``U`` per layer from the current model; returns what to log: the
        held-out overlaps per layer and the largest principal angle to the previous ``U``.
        Gradient-based probes train on the states; the model itself gets no gradient."""
        was_training = model.training
        model.eval()
        try:
            states, labels, _ = self.states(model, tokenizer, self.fit_rows(step))
            held, _, held_varieties = self.states(model, tokenizer, self.measure)
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
            estimator, previous = self.estimators[i], self.subspaces.get(i)
            new = estimator.fit(states[i], labels) if first else estimator.update(states[i], labels)
            if first and self.with_reference:
                reference = make_estimator(
                    self.config.reference_estimator, self.config.reference_rank, **self.shared
                )
                self.reference[i] = reference.fit(states[i], labels)
            elif i in self.subspaces:
                angle = new.principal_angles(self.subspaces[i]).max()
                log["angle_to_previous"][str(i)] = float(angle)
            self.subspaces[i] = new
            log["overlap"][str(i)] = self.overlaps(i, held[i], held_varieties, model)
            if self.held_out_penalty is not None:
                penalties = self.penalties(i, held[i], previous, model)
                log.setdefault("held_out_penalty", {})[str(i)] = penalties
        self.last_refresh = step
        return log

    def penalties(
        self, layer: int, held: Tensor, previous: Subspace | None, model: nn.Module
    ) -> dict[str, float]:
        """The decoupler's penalty on every held-out token at ``layer`` under the ``U`` that
        training has been pushing against (``previous``: absent at step 0), the new ``U``
        ("own") and ``U₀`` ("reference"); sums and counts added over processes first."""
        assert self.held_out_penalty is not None
        bases = {"previous": previous, "own": self.subspaces[layer]}
        bases["reference"] = self.reference.get(layer)
        named = {name: basis for name, basis in bases.items() if basis is not None}
        count = float(held.shape[0])
        terms = [
            torch.stack([self.held_out_penalty(held, basis).double().cpu() * count,
                         torch.tensor(count, dtype=torch.float64)])
            for basis in named.values()
        ]  # fmt: skip
        summed = torch.stack(terms)
        if self.shared:
            on_device = summed.to(next(model.parameters()).device)
            self.shared["all_reduce"](on_device)
            summed = on_device.cpu()
        return {name: float(t[0] / max(t[1], 1.0)) for name, t in zip(named, summed, strict=True)}

    def overlaps(
        self, layer: int, held: Tensor, varieties: list[str], model: nn.Module
    ) -> dict[str, dict[str, float]]:
        """Per variety, the overlap of the held-out states with ``U`` ("own") and ``U₀``
        ("reference"); numerators and denominators summed over processes first."""
        bases = {"own": self.subspaces[layer]}
        if layer in self.reference:
            bases["reference"] = self.reference[layer]
        terms = []
        for variety in self.varieties:
            rows = torch.tensor([v == variety for v in varieties], dtype=torch.bool)
            terms += [subspace.overlap_terms(held[rows]) for subspace in bases.values()]
        summed = torch.stack(terms)  # (bases × varieties, 2)
        if self.shared:
            device = next(model.parameters()).device  # NCCL reduces device tensors only
            on_device = summed.to(device)
            self.shared["all_reduce"](on_device)
            summed = on_device.cpu()
        pairs = iter(summed.tolist())
        return {v: {name: overlap_ratio(*next(pairs)) for name in bases} for v in self.varieties}

    def state_dict(self) -> dict[str, Any]:
        return {
            "estimators": {str(i): e.state_dict() for i, e in self.estimators.items()},
            "subspaces": {str(i): s.state_dict() for i, s in self.subspaces.items()},
            "reference": {str(i): s.state_dict() for i, s in self.reference.items()},
            "last_refresh": self.last_refresh,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for i, estimator in self.estimators.items():
            estimator.load_state_dict(state["estimators"][str(i)])
        load = Subspace.from_state_dict
        self.subspaces = {int(i): load(s) for i, s in state["subspaces"].items()}
        self.reference = {int(i): load(s) for i, s in state["reference"].items()}
        self.last_refresh = state["last_refresh"]
