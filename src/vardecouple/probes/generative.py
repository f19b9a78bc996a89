r"""The ``variational-generative`` estimator: our second reading of "variational probe".

Variational Bayesian PCA with ARD (Bishop 1999) on the
standard variety's own states: :math:`x = W t + \mu + \epsilon`, :math:`t \sim
\mathcal{N}(0, I_q)`, :math:`\epsilon \sim \mathcal{N}(0, \tau^{-1} I)`, columns
:math:`w_i \sim \mathcal{N}(0, \alpha_i^{-1} I)`, :math:`\alpha_i, \tau` Gamma(1e-3, 1e-3);
mean-field :math:`q(t)q(W)q(\alpha)q(\tau)`, ``μ`` the sample mean. Every update is a
closed-form function of the discounted statistics ``(n, Σx, Σxxᵀ)``, so it is
statistics-based (accumulate / reduce / solve, forgetting factor) with the coordinate
ascent warm-started on ``update``. ARD drives unneeded columns to zero; ``U`` spans the
columns it keeps (effective rank ≤ ``rank``). Note what the prior can and cannot do: the
loading update is :math:`M \leftarrow \langle\tau\rangle^2 S M \Sigma_t \Sigma_W`, so
``span(M)`` stays inside ``span(S M)`` and, from the PCA start, inside the top
eigenspace of the scatter ``S``: whenever ARD keeps all ``q`` columns, ``U`` *is* PCA's
subspace (BENCHMARKS.md measures exactly that). What the model adds is the rank
(ARD), the noise level and the ELBO. :meth:`GenerativeProbeEstimator.elbo` is in
nats (a density over continuous states has no bit count without quantisation).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from vardecouple.probes.base import Moments, StatisticsEstimator
from vardecouple.probes.registry import register
from vardecouple.subspace import Subspace

__all__ = ["GenerativeProbeEstimator"]


@register
class GenerativeProbeEstimator(StatisticsEstimator):
    """Variational Bayesian PCA with ARD on the standard variety (module docstring).

    Args:
        rank: the cap ``q`` on the number of loading columns.
        fit_iters / update_iters: maximum coordinate-ascent sweeps for ``fit`` (from a
            PCA initialisation) and ``update`` (warm start).
        tol: stop when the ELBO's relative change falls below it.
        prune_tol: a column is kept while ‖w_i‖² > prune_tol · σ² (σ² the noise variance).
        prior: shape = rate of the Gamma priors on α and τ.
        forgetting, num_classes, all_reduce: as for every statistics estimator.
    """

    name = "variational-generative"
    outer_rows = "standard"

    def __init__(
        self,
        rank: int,
        *,
        fit_iters: int = 500,
        update_iters: int = 25,
        tol: float = 1e-8,
        prune_tol: float = 1e-2,
        prior: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(rank, **kwargs)
        if int(fit_iters) < 1 or int(update_iters) < 1:
            raise ValueError(f"{self.name}: fit_iters and update_iters must be >= 1")
        self.fit_iters, self.update_iters = int(fit_iters), int(update_iters)
        self.tol, self.prune_tol, self.prior = float(tol), float(prune_tol), float(prior)
        self.posterior: dict[str, Tensor] | None = None  # M, SW, alpha, tau
        self._elbo = float("nan")

    def fit(self, states: Tensor, labels: Tensor | None = None) -> Subspace:
        self.posterior = None
        return super().fit(states, labels)

    def solve(self, moments: Moments) -> Subspace:
        self._require_standard(moments)
        assert moments.outer is not None
        n = moments.counts[0]
        mean = moments.sums[0] / n
        scatter = moments.outer - n * torch.outer(mean, mean)
        scatter = (scatter + scatter.T) / 2
        d = scatter.shape[0]
        warm = self.posterior is not None and self.posterior["M"].shape[0] == d
        if not warm:
            self.posterior = self._initial_posterior(scatter / n)
        self._coordinate_ascent(scatter, n, self.update_iters if warm else self.fit_iters)
        return self._subspace(mean)

    def _initial_posterior(self, cov: Tensor) -> dict[str, Tensor]:
        d, q = cov.shape[0], self.rank
        vals, vecs = torch.linalg.eigh(cov)
        vals, vecs = vals.flip(0), vecs.flip(1)
        rest = vals[q:]
        sigma2 = (
            rest.mean().clamp(min=1e-12 * vals[0].clamp(min=1e-30))
            if rest.numel()
            else vals[-1] / 10
        )
        m = vecs[:, :q] * (vals[:q] - sigma2).clamp(min=1e-6 * sigma2).sqrt()
        col = m.square().sum(0)
        return {
            "M": m,
            "SW": torch.zeros(q, q, dtype=cov.dtype),
            "alpha": d / col,
            "tau": 1.0 / sigma2.reshape(()),
        }

    def _coordinate_ascent(self, scatter: Tensor, n: Tensor, max_iters: int) -> int:
        """Bishop's (1999) variational updates on the scatter matrix; returns sweeps done."""
        assert self.posterior is not None
        p = self.posterior
        m, sw, alpha, tau = p["M"], p["SW"], p["alpha"], p["tau"]
        d, q = m.shape
        eye = torch.eye(q, dtype=m.dtype)
        a0 = b0 = self.prior
        trace_c = torch.trace(scatter)
        previous = -math.inf
        done = 0
        for done in range(1, max_iters + 1):  # noqa: B007
            ewtw = m.T @ m + d * sw
            sz = torch.linalg.inv(eye + tau * ewtw)  # q(t) covariance
            a = tau * sz @ m.T  # E[t_n] = A (x_n − μ)
            ca = scatter @ a.T  # (d, q)
            ezz = n * sz + a @ ca  # Σ_n E[t tᵀ]
            ezx = ca.T  # Σ_n E[t](x − μ)ᵀ
            sw = torch.linalg.inv(torch.diag(alpha) + tau * ezz)  # q(W) row covariance
            m = tau * ezx.T @ sw
            wnorm = m.square().sum(0) + d * torch.diagonal(sw)
            a_alpha, b_alpha = a0 + d / 2, b0 + wnorm / 2
            alpha = a_alpha / b_alpha
            ewtw = m.T @ m + d * sw
            resid = trace_c - 2 * torch.trace(m @ ezx) + torch.trace(ewtw @ ezz)
            a_tau, b_tau = a0 + n * d / 2, b0 + resid.clamp(min=0) / 2
            tau = a_tau / b_tau
            elbo = self._elbo_terms(n, d, q, sz, sw, m, ezz, resid, a_alpha, b_alpha, a_tau, b_tau)
            if abs(elbo - previous) <= self.tol * abs(elbo):
                break
            previous = elbo
        self.posterior = {"M": m, "SW": sw, "alpha": alpha, "tau": tau}
        self._elbo = elbo
        self.last_iterations = done
        return done

    def _elbo_terms(
        self,
        n: Tensor,
        d: int,
        q: int,
        sz: Tensor,
        sw: Tensor,
        m: Tensor,
        ezz: Tensor,
        resid: Tensor,
        a_alpha: float,
        b_alpha: Tensor,
        a_tau: Tensor,
        b_tau: Tensor,
    ) -> float:
        log2pi = math.log(2 * math.pi)
        a0 = b0 = self.prior
        e_log_tau = torch.digamma(a_tau) - torch.log(b_tau)
        e_tau = a_tau / b_tau
        lik = n * d / 2 * (e_log_tau - log2pi) - e_tau * resid / 2
        kl_t = 0.5 * (torch.trace(ezz) - n * q - n * torch.logdet(sz))
        a_alpha_t = torch.tensor(a_alpha, dtype=m.dtype)
        e_log_alpha = torch.digamma(a_alpha_t) - torch.log(b_alpha)
        e_alpha = a_alpha / b_alpha
        wnorm = m.square().sum(0) + d * torch.diagonal(sw)
        prior_w = (d / 2 * (e_log_alpha - log2pi) - e_alpha * wnorm / 2).sum()
        entropy_w = d * (q / 2 * (1 + log2pi) + 0.5 * torch.logdet(sw))

        def kl_gamma(aq: Tensor, bq: Tensor) -> Tensor:
            return (
                (aq - a0) * torch.digamma(aq)
                - torch.lgamma(aq)
                + math.lgamma(a0)
                + a0 * (torch.log(bq) - math.log(b0))
                + aq * (b0 - bq) / bq
            )

        kl_alpha = kl_gamma(a_alpha_t.expand_as(b_alpha), b_alpha).sum()
        kl_tau = kl_gamma(a_tau, b_tau)
        return float((lik - kl_t + prior_w + entropy_w - kl_alpha - kl_tau).item())

    def _subspace(self, mean: Tensor) -> Subspace:
        assert self.posterior is not None
        m, tau = self.posterior["M"], self.posterior["tau"]
        keep = m.square().sum(0) > self.prune_tol / tau
        if not bool(keep.any()):
            raise ValueError(f"{self.name}: ARD pruned every column; no structure above the noise")
        basis = Subspace.from_vectors(m[:, keep]).basis
        return Subspace(basis.to(torch.float32), mean.to(torch.float32))

    @property
    def effective_rank(self) -> int:
        """Number of loading columns ARD keeps (the rank of the last subspace)."""
        if self.subspace is None:
            raise ValueError(f"{self.name}: call fit() first")
        return self.subspace.rank

    def elbo(self) -> float:
        """The evidence lower bound of the last solve, in nats (μ at the sample mean)."""
        if self.posterior is None:
            raise ValueError(f"{self.name}: call fit() first")
        return self._elbo

    def noise_variance(self) -> float:
        """Posterior-mean isotropic noise variance ``1 / E[τ]``."""
        if self.posterior is None:
            raise ValueError(f"{self.name}: call fit() first")
        return float(1.0 / self.posterior["tau"].item())

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.posterior is not None:
            state["posterior"] = {k: v.clone() for k, v in self.posterior.items()}
            state["elbo"] = self._elbo
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.posterior = (
            {k: v.clone() for k, v in state["posterior"].items()} if "posterior" in state else None
        )
        self._elbo = float(state.get("elbo", float("nan")))
