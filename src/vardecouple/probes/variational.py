r"""The paper's probe, ``variational``: a sparse Bayesian linear classifier of variety
labels from hidden states (per-dimension standardised inputs; the layer and its priors:
:mod:`vardecouple.probes.gated`). It minimises the negative ELBO on a batch ``B`` of the
``N`` probe states,

.. math::

    \mathcal{L} = \sum_{i \in B} \mathrm{CE}(y_i, f(x_i)) + \tfrac{|B|}{N}\,
    \mathrm{KL}(q \,\|\, p).

The *variational codelength* of the labels is
:math:`(\mathbb{E}_q[\sum_i \mathrm{CE}_i] + \mathrm{KL}) / \ln 2` bits.

The subspace: the posterior-mean effective weights :math:`\bar W = \mu^W \mathrm{diag}(\mu^z)`
(gates with :math:`\log\alpha > 3` pruned to 0), mapped back to the raw state space
(divided by the per-dimension scale), **row-centred** (softmax is blind to a shift
shared by all rows), and ``U`` = its top-``k`` right singular vectors. ``C`` classes give
at most ``C − 1`` directions: ``classes="standard-vs-rest"`` (two logits, the paper's
reading) gives rank 1, ``"all"`` (``m + 1`` logits) at most ``m``.

The generative reading, ``variational-generative``, lives in :mod:`vardecouple.probes.generative`.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from vardecouple.probes.base import AllReduce, ClassMode, Moments, SubspaceEstimator, check_classes
from vardecouple.probes.gated import GatedBayesianLinear, revive_gates
from vardecouple.probes.registry import register
from vardecouple.subspace import Subspace

__all__ = ["GatedBayesianLinear", "VariationalProbeEstimator"]

_LN2 = math.log(2.0)


@register
class VariationalProbeEstimator(SubspaceEstimator):
    """The paper's probe: see the module docstring for the model and the subspace.

    Args:
        rank: subspace dimension ``k`` (capped at ``C − 1`` with a warning).
        classes: ``"standard-vs-rest"`` (two logits) or ``"all"`` (one per variety).
        fit_epochs / update_epochs: passes over the probe states for ``fit`` (from a
            fresh initialisation) and ``update`` (warm start, optimizer state kept).
        batch_size, lr: Adam minibatch size and learning rate.
        prune_threshold: gates with ``log α`` above it count as pruned.
        standardize: z-score each input dimension with discounted running statistics.
        forgetting: weight of old standardisation/centre statistics at each update.
        max_var: clip of the weight variances (Voita & Titov's 0.04).
        mc_samples: posterior samples for the expected data cost of the codelength.
        revive_pruned / revive_z / revive_log_alpha: on ``update``, re-open the pruned
            gates whose score statistic exceeds ``revive_z``, at ``log α =
            revive_log_alpha``, so the support can follow the model
            (:func:`~vardecouple.probes.gated.revive_gates`).
        kl_weight, fit_steps, gates, init_logvar: knobs for studying the probe
            (``docs/probe.md``), off by default: the KL term multiplied by
            ``kl_weight``; ``fit`` runs exactly ``fit_steps`` optimizer steps whatever
            the number of states (``None``: ``fit_epochs`` passes); ``gates=False`` drops
            the gates (``z ≡ 1``: a Bayesian linear classifier with N(0, 1) priors only);
            ``init_logvar`` starts every log-variance there (the paper's code: −9).
        num_classes: number of label values, inferred when ``None``.
        seed: initialisation, shuffling and sampling are reproducible from it.
        all_reduce: sums gradients and statistics across processes.
    """

    name = "variational"
    needs_labels = True

    def __init__(
        self,
        rank: int,
        *,
        classes: ClassMode = "standard-vs-rest",
        fit_epochs: int = 40,
        update_epochs: int = 3,
        batch_size: int = 256,
        lr: float = 0.02,
        prune_threshold: float = 3.0,
        standardize: bool = True,
        forgetting: float = 0.5,
        max_var: float = 0.04,
        mc_samples: int = 8,
        revive_pruned: bool = True,
        revive_z: float = 4.0,
        revive_log_alpha: float = -3.0,
        kl_weight: float = 1.0,
        fit_steps: int | None = None,
        gates: bool = True,
        init_logvar: float = -9.0,
        num_classes: int | None = None,
        seed: int = 0,
        all_reduce: AllReduce | None = None,
    ) -> None:
        super().__init__(rank, all_reduce=all_reduce)
        check_classes(self.name, classes)
        for key, value in (
            ("fit_epochs", fit_epochs),
            ("update_epochs", update_epochs),
            ("batch_size", batch_size),
            ("mc_samples", mc_samples),
        ):
            if int(value) < 1:
                raise ValueError(f"{self.name}: {key} must be >= 1, got {value!r}")
        if not lr > 0:
            raise ValueError(f"{self.name}: lr must be > 0, got {lr!r}")
        if not kl_weight >= 0:
            raise ValueError(f"{self.name}: kl_weight must be >= 0, got {kl_weight!r}")
        if fit_steps is not None and int(fit_steps) < 1:
            raise ValueError(f"{self.name}: fit_steps must be >= 1, got {fit_steps!r}")
        if not 0.0 <= forgetting <= 1.0:
            raise ValueError(f"{self.name}: forgetting must lie in [0, 1], got {forgetting!r}")
        self.classes = classes
        self.fit_epochs, self.update_epochs = int(fit_epochs), int(update_epochs)
        self.batch_size, self.lr = int(batch_size), float(lr)
        self.prune_threshold, self.standardize = float(prune_threshold), bool(standardize)
        self.forgetting, self.max_var, self.mc_samples = (
            float(forgetting),
            float(max_var),
            int(mc_samples),
        )
        self.revive_pruned, self.revive_z = bool(revive_pruned), float(revive_z)
        self.revive_log_alpha = float(revive_log_alpha)
        self.revived = 0
        self.kl_weight, self.gates, self.init_logvar = float(kl_weight), bool(gates), init_logvar
        self.fit_steps = None if fit_steps is None else int(fit_steps)
        self.num_classes, self.seed = num_classes, int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.layer: GatedBayesianLinear | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.stats: Moments | None = None  # per-class counts/sums; outer = None
        self.sq: Tensor | None = None  # Σ x² per dimension (discounted)
        self._warned_rank = False

    # -- data ------------------------------------------------------------------
    def _targets(self, labels: Tensor) -> Tensor:
        return (labels != 0).long() if self.classes == "standard-vs-rest" else labels

    def _num_logits(self, labels: Tensor) -> int:
        if self.classes == "standard-vs-rest":
            return 2
        c = self.num_classes if self.num_classes is not None else int(labels.max().item()) + 1
        return max(c, 2)

    def _accumulate_stats(self, x: Tensor, y: Tensor) -> tuple[Moments, Tensor]:
        c = max(int(y.max().item()) + 1, self.num_classes or 0)
        x64 = x.to(torch.float64)
        onehot = nn.functional.one_hot(y, c).to(torch.float64)
        m = Moments(onehot.sum(0), onehot.T @ x64, None)
        sq = x64.square().sum(0)
        self._reduce([*m.tensors(), sq])
        return m, sq

    def _scale(self) -> tuple[Tensor, Tensor]:
        """Per-dimension (mean, std) of the discounted statistics (identity if off)."""
        assert self.stats is not None and self.sq is not None
        d = self.stats.sums.shape[1]
        if not self.standardize:
            return torch.zeros(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64)
        n = self.stats.counts.sum()
        mean = self.stats.sums.sum(0) / n
        var = (self.sq / n - mean.square()).clamp(min=0.0)
        std = var.sqrt()
        std = torch.where(std > 1e-6 * std.max().clamp(min=1e-30), std, torch.ones_like(std))
        return mean, std

    def _inputs(self, states: Tensor) -> Tensor:
        mean, std = self._scale()
        return ((states.to(torch.float64) - mean) / std).to(torch.float32)

    # -- accumulate / reduce / solve -------------------------------------------
    def _train(self, x: Tensor, t: Tensor, epochs: int, max_steps: int | None = None) -> None:
        """Minibatch ELBO steps: accumulate (backward), reduce (all-reduce grads), step.
        ``max_steps``: stop after that many steps, passing over the data as often as it
        takes (``epochs`` is then ignored)."""
        assert self.layer is not None and self.optimizer is not None
        n_local = torch.tensor(float(x.shape[0]), dtype=torch.float64)
        self._reduce([n_local])
        n_total = float(n_local.item())
        params = list(self.layer.parameters())
        steps = passes = 0
        while steps < max_steps if max_steps is not None else passes < epochs:
            passes += 1
            order = torch.randperm(x.shape[0], generator=self.generator)
            if self.all_reduce is None:
                chunks = list(order.split(self.batch_size))
            else:  # every process takes the same number of steps, whatever its share:
                # step j sums process chunks j into one global batch of ≈ batch_size rows
                chunks = list(order.tensor_split(math.ceil(n_total / self.batch_size)))
            for idx in chunks:
                self.optimizer.zero_grad(set_to_none=False)
                logits = self.layer(x[idx], generator=self.generator)
                loss = nn.functional.cross_entropy(logits, t[idx], reduction="sum")
                kl = self.layer.kl()
                if self.kl_weight != 1.0:
                    kl = self.kl_weight * kl
                loss = loss + (idx.numel() / n_total) * kl
                loss.backward()  # accumulate
                self._reduce([p.grad for p in params if p.grad is not None])  # reduce
                self.optimizer.step()  # solve (one step of it)
                self.layer.clip_variances()
                steps += 1
                if max_steps is not None and steps >= max_steps:
                    break
        self.last_iterations = steps

    def _solve(self) -> Subspace:
        assert self.layer is not None and self.stats is not None
        with torch.no_grad():
            keep = (self.layer.log_alpha() < self.prune_threshold).to(torch.float64)
            z = self.layer.z_mu.to(torch.float64) if self.gates else torch.ones_like(keep)
            w = self.layer.w_mu.to(torch.float64) * (z * keep)
            _, std = self._scale()
            w = w / std  # the same linear functionals in raw state coordinates
            w = w - w.mean(0, keepdim=True)  # row-centre: softmax ignores shared shifts
            _, s, vh = torch.linalg.svd(w, full_matrices=False)
        available = int((s > 1e-12 * s[0].clamp(min=1e-300)).sum().item()) if s.numel() else 0
        available = min(available, w.shape[0] - 1)
        if available < 1:
            raise ValueError(f"{self.name}: every gate was pruned; the probe found no direction")
        k = self.rank
        if k > available:
            if not self._warned_rank:
                warnings.warn(
                    f"{self.name}: rank {self.rank} capped at {available} (a probe with "
                    f"{w.shape[0]} logits identifies at most {w.shape[0] - 1} direction(s))",
                    stacklevel=3,
                )
                self._warned_rank = True
            k = available
        center = self.stats.class_balanced_mean()
        return Subspace(vh[:k].T.to(torch.float32), center.to(torch.float32))

    # -- public API ------------------------------------------------------------
    def fit(self, states: Tensor, labels: Tensor | None = None) -> Subspace:
        x, y = self._validate(states, labels)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.stats, self.sq = self._accumulate_stats(x, y)
        self.layer = GatedBayesianLinear(
            x.shape[1], self._num_logits(y), max_var=self.max_var, init_logvar=self.init_logvar,
            gates=self.gates, generator=self.generator,
        )  # fmt: skip
        self.optimizer = torch.optim.Adam(self.layer.parameters(), lr=self.lr, betas=(0.9, 0.99))
        self._train(self._inputs(x), self._targets(y), self.fit_epochs, self.fit_steps)
        self.subspace = self._solve()
        return self.subspace

    def update(self, states: Tensor, labels: Tensor | None = None) -> Subspace:
        if self.layer is None:
            return self.fit(states, labels)
        x, y = self._validate(states, labels)
        if x.shape[1] != self.layer.z_mu.shape[0]:
            raise ValueError(
                f"{self.name}: states have dim {x.shape[1]}, the probe {self.layer.z_mu.shape[0]}"
            )
        if self.classes == "all" and int(y.max().item()) >= self.layer.w_mu.shape[0]:
            raise ValueError(f"{self.name}: label {int(y.max().item())} unseen at fit time")
        assert self.stats is not None and self.sq is not None
        new, sq = self._accumulate_stats(x, y)
        self.stats = self.stats.discounted_sum(self.forgetting, new)
        self.sq = self.forgetting * self.sq + sq
        inputs, targets = self._inputs(x), self._targets(y)
        self.revived = self._revive_pruned_gates(inputs, targets) if self.revive_pruned else 0
        self._train(inputs, targets, self.update_epochs)
        self.subspace = self._solve()
        return self.subspace

    def _revive_pruned_gates(self, x: Tensor, t: Tensor) -> int:
        """Re-open the pruned gates the current states need (:func:`revive_gates`)."""
        assert self.layer is not None and self.optimizer is not None
        return revive_gates(
            self.layer, self.optimizer, x, t, reduce=self._reduce,
            prune_threshold=self.prune_threshold, z=self.revive_z,
            log_alpha=self.revive_log_alpha, init_logvar=self.init_logvar,
        )  # fmt: skip

    def kl(self) -> float:
        """KL(q ‖ p) of the current posterior, in nats (the model part of the code)."""
        self._require_fitted()
        assert self.layer is not None
        with torch.no_grad():
            return float(self.layer.kl().item())

    def gate_log_alpha(self) -> Tensor:
        """``log α`` per input dimension (pruned where above ``prune_threshold``)."""
        self._require_fitted()
        assert self.layer is not None
        return self.layer.log_alpha().detach().clone()

    def kept_dimensions(self) -> Tensor:
        """Indices of the input dimensions whose gates survive."""
        return (self.gate_log_alpha() < self.prune_threshold).nonzero().flatten()

    def codelength(self, states: Tensor, labels: Tensor) -> dict[str, float]:
        """The variational code of ``labels`` given ``states``, in bits.

        ``data_bits`` = E_q[Σ CE] (Monte Carlo over ``mc_samples`` posterior draws, from a
        fixed seed), ``model_bits`` = KL(q ‖ p); ``uniform_bits`` = N · H(label prior)
        (the code of a model that knows only the class frequencies) and ``compression`` =
        uniform_bits / (data_bits + model_bits).
        """
        self._require_fitted()
        assert self.layer is not None
        x, y = self._validate(states, labels)
        t = self._targets(y)
        if int(t.max().item()) >= self.layer.w_mu.shape[0]:
            raise ValueError(f"{self.name}: label {int(y.max().item())} unseen at fit time")
        inputs = self._inputs(x)
        g = torch.Generator().manual_seed(self.seed + 1)
        with torch.no_grad():
            data = (
                sum(
                    nn.functional.cross_entropy(
                        self.layer(inputs, generator=g), t, reduction="sum"
                    ).item()
                    for _ in range(self.mc_samples)
                )
                / self.mc_samples
            )
            model = float(self.layer.kl().item())
            p = torch.bincount(t).to(torch.float64) / t.numel()
            p = p[p > 0]
            uniform = -float((p * p.log2()).sum().item()) * t.numel()
        total = (data + model) / _LN2
        return {
            "data_bits": data / _LN2,
            "model_bits": model / _LN2,
            "total_bits": total,
            "uniform_bits": uniform,
            "compression": uniform / total if total > 0 else float("inf"),
        }

    def description_length(self, states: Tensor, labels: Tensor) -> float:
        """Variational codelength of ``labels`` (bits): data cost + model cost."""
        return self.codelength(states, labels)["total_bits"]

    def _require_fitted(self) -> None:
        if self.layer is None:
            raise ValueError(f"{self.name}: call fit() first")

    # -- checkpoints ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "name": self.name,
            "rank": self.rank,
            "generator": self.generator.get_state(),
        }
        if self.layer is not None and self.optimizer is not None:
            assert self.stats is not None and self.sq is not None
            state["layer"] = {k: v.detach().clone() for k, v in self.layer.state_dict().items()}
            # deep copies: Adam's state_dict() and load_state_dict() share tensors with
            # the live optimizer, which would let later steps rewrite a saved state
            state["optimizer"] = copy.deepcopy(self.optimizer.state_dict())
            state["stats"] = self.stats.state_dict()
            state["sq"] = self.sq.clone()
        if self.subspace is not None:
            state["subspace"] = self.subspace.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.check_state(state)
        self.generator.set_state(state["generator"])
        if "layer" in state:
            c, d = state["layer"]["w_mu"].shape
            self.layer = GatedBayesianLinear(d, c, max_var=self.max_var, gates=self.gates)
            self.layer.load_state_dict(state["layer"])
            self.optimizer = torch.optim.Adam(
                self.layer.parameters(), lr=self.lr, betas=(0.9, 0.99)
            )
            self.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
            self.stats = Moments.from_state_dict(state["stats"])
            self.sq = state["sq"].clone()
        self.subspace = Subspace.from_state_dict(state["subspace"]) if "subspace" in state else None
