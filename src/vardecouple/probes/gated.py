r"""The gated Bayesian linear layer of the paper's probe (Voita & Titov 2020, after
Louizos et al. 2017 and Molchanov et al. 2017).

For an input :math:`x \in \mathbb{R}^d` and ``C`` classes:

.. math::

    f(x) = W (x \odot z) + b, \quad
    q(z_j) = \mathcal{N}(\mu^z_j, \sigma^{z\,2}_j), \quad
    q(W_{cj}) = \mathcal{N}(\mu^W_{cj}, \sigma^{W\,2}_{cj}), \quad
    q(b_c) = \mathcal{N}(\mu^b_c, \sigma^{b\,2}_c),

with a log-uniform prior on each gate :math:`z_j` (one per input dimension: group
sparsity) and :math:`\mathcal{N}(0, 1)` priors on ``W`` and ``b``. A training forward pass
draws the gates per example and the pre-activations by local reparameterisation,
:math:`f \sim \mathcal{N}(W^\mu (x\odot z) + b^\mu,\ (x\odot z)^2 \sigma^{W2\top} + \sigma^{b2})`.
The gate KL uses Molchanov's approximation in
:math:`\log\alpha_j = \log\sigma^{z2}_j - \log\mu^{z2}_j`
(:math:`-\mathrm{KL} \approx k_1\sigma(k_2 + k_3\log\alpha) - \tfrac12\log(1+\alpha^{-1}) - k_1`).
Weight variances are clipped at 0.04.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["GatedBayesianLinear", "revive_gates"]

_K1, _K2, _K3 = 0.63576, 1.87320, 1.48695


class GatedBayesianLinear(nn.Module):
    """Linear layer with Gaussian weights and a log-uniform-prior gate per input dimension."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        max_var: float = 0.04,
        init_logvar: float = -9.0,
        gates: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        d, c = in_features, out_features

        def rnd(*shape: int) -> Tensor:
            return torch.randn(*shape, generator=generator)

        self.max_var, self.gates = max_var, gates
        self.z_mu = nn.Parameter(1.0 + 1e-2 * rnd(d), requires_grad=gates)
        self.z_logvar = nn.Parameter(init_logvar + 1e-2 * rnd(d), requires_grad=gates)
        self.w_mu = nn.Parameter(rnd(c, d) / math.sqrt(d))
        self.w_logvar = nn.Parameter(init_logvar + 1e-2 * rnd(c, d))
        self.b_mu = nn.Parameter(torch.zeros(c))
        self.b_logvar = nn.Parameter(init_logvar + 1e-2 * rnd(c))

    def forward(
        self, x: Tensor, generator: torch.Generator | None = None, sample: bool = True
    ) -> Tensor:
        if not self.gates:  # a plain Bayesian linear layer: z ≡ 1
            if not sample:
                return x @ self.w_mu.T + self.b_mu
            xz = x
        elif not sample:
            return (x * self.z_mu) @ self.w_mu.T + self.b_mu
        else:
            eps_z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            xz = x * (self.z_mu + (0.5 * self.z_logvar).exp() * eps_z)
        mean = xz @ self.w_mu.T + self.b_mu
        var = xz.square() @ self.w_logvar.exp().T + self.b_logvar.exp()
        eps = torch.randn(mean.shape, generator=generator, dtype=x.dtype)
        return mean + var.sqrt() * eps

    def log_alpha(self) -> Tensor:
        """Per-dimension log dropout rate of the gates; large = pruned (−∞ without gates)."""
        if not self.gates:
            return torch.full_like(self.z_mu, -math.inf)
        return self.z_logvar - torch.log(self.z_mu.square() + 1e-8)

    def kl(self) -> Tensor:
        """KL(q ‖ p) in nats: gates (Molchanov approximation) + weights + bias (vs N(0, 1))."""
        if self.gates:
            la = self.log_alpha()
            kl_z = -(_K1 * torch.sigmoid(_K2 + _K3 * la) - 0.5 * nn.functional.softplus(-la) - _K1)
        else:
            kl_z = torch.zeros(())

        def gauss(mu: Tensor, logvar: Tensor) -> Tensor:
            return 0.5 * (logvar.exp() + mu.square() - 1.0 - logvar)

        return (
            kl_z.sum()
            + gauss(self.w_mu, self.w_logvar).sum()
            + gauss(self.b_mu, self.b_logvar).sum()
        )

    @torch.no_grad()
    def clip_variances(self) -> None:
        bound = math.log(self.max_var)
        self.w_logvar.clamp_(max=bound)
        self.b_logvar.clamp_(max=bound)


@torch.no_grad()
def revive_gates(
    layer: GatedBayesianLinear,
    optimizer: torch.optim.Optimizer,
    x: Tensor,
    t: Tensor,
    *,
    reduce: Callable[[list[Tensor]], None],
    prune_threshold: float,
    z: float,
    log_alpha: float,
    init_logvar: float,
) -> int:
    """Re-open the pruned gates that a score test says the states ``x`` (labels ``t``) need.

    A dead gate (``μ_z → 0``) cannot come back by itself, so without this an online
    probe stays in the support of the model it was first fitted on. For each pruned
    dimension ``j`` the score (the gradient of the summed CE with respect to a new
    weight on ``j``), ``g_jc = Σ_i (p_ic − t_ic) x_ij``, is compared with its null
    standard deviation ``sqrt(Σ_i p_ic (1 − p_ic) x_ij²)`` (both summed over processes by
    ``reduce``); where some class's ``|g| / sd`` exceeds ``z`` the gate re-opens at
    ``log α = log_alpha`` with zero weights (log-variance ``init_logvar``) and fresh Adam
    moments. Returns the number revived.
    """
    dead = layer.log_alpha() >= prune_threshold
    if not bool(dead.any()):
        return 0
    probs = torch.softmax(layer(x, sample=False), dim=-1)
    resid = probs - nn.functional.one_hot(t, probs.shape[1]).to(probs.dtype)
    xd = x[:, dead]
    score = resid.T @ xd  # (C, dead)
    sd = ((probs * (1 - probs)).T @ xd.square()).sqrt().clamp(min=1e-12)
    reduce([score, sd])  # sums of per-process scores; sd² sums approximately
    wake = (score.abs() / sd).amax(0) > z
    idx = dead.nonzero().flatten()[wake]
    if idx.numel() == 0:
        return 0
    layer.z_mu[idx] = 1.0
    layer.z_logvar[idx] = log_alpha
    layer.w_mu[:, idx] = 0.0
    layer.w_logvar[:, idx] = init_logvar
    for param in (layer.z_mu, layer.z_logvar, layer.w_mu, layer.w_logvar):
        for buf in optimizer.state.get(param, {}).values():
            if isinstance(buf, Tensor) and buf.shape == param.shape:
                buf[..., idx] = 0.0
    return int(idx.numel())
