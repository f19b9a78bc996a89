r"""What every subspace estimator is, and the statistics several of them share.

An estimator turns labelled hidden states ``(n, d)`` (label 0 = the standard variety,
1..m = the other varieties) into a :class:`~vardecouple.subspace.Subspace`. It has
``fit`` (from scratch), ``update`` (online: tracks the current model without a refit)
and ``state_dict`` / ``load_state_dict``; internally each separates *accumulate*
(per-batch statistics or gradients), *reduce* (a sum, all-reduced across processes by
the ``all_reduce`` callable when one is given) and *solve*.

An estimator makes itself known by name with :func:`register` (the registry in
:mod:`vardecouple.probes.registry` imports no estimator).
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from vardecouple.probes.registry import register
from vardecouple.subspace import Subspace, compute_dtype

__all__ = [
    "AllReduce",
    "ClassMode",
    "Moments",
    "StatisticsEstimator",
    "SubspaceEstimator",
    "check_classes",
    "collapse_classes",
    "register",
]

AllReduce = Callable[[Tensor], None]
"""Sums a tensor in place across processes (e.g. ``torch.distributed.all_reduce``)."""


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
        states = states.detach().to(compute_dtype(states))
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

    def check_state(self, state: dict[str, Any]) -> None:
        """A ValueError unless ``state`` is this estimator's kind and rank."""
        if state.get("name") != self.name or state.get("rank") != self.rank:
            raise ValueError(
                f"{self.name}: state is for estimator {state.get('name')!r} with rank "
                f"{state.get('rank')!r}, expected {self.name!r} with rank {self.rank}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank})"


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


def check_classes(name: str, classes: str) -> None:
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
        self.check_state(state)
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
