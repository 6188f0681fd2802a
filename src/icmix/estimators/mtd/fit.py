"""Fitting MTD models to observed sequences (SPEC §3): what real text needs before any in-context
estimator can run.

- ``skip_bigrams``: the lag-g skip-bigram matrices ``pi_g[a, b]``, smoothed as
  ``(count + kappa) / (row count + Q kappa)`` (add-kappa; ``kappa = 0.5`` by default, the
  Krichevsky–Trofimov / Jeffreys choice); ``pi_1`` is the bigram matrix, the shared ``pi`` of MTD.
- ``unigram``: the smoothed character frequencies.
- ``global_lambda``: one ``lam`` for the whole training split by EM on every transition of
  every document (the classic MTD fit, Raftery 1985), for a shared ``pi`` or per-lag ``pi_g``.
- ``fit_dirichlet_prior``: an empirical prior ``Dirichlet(alpha_1..alpha_M)`` for the
  in-context lag weights, maximising the marginal likelihood of training windows by Monte-Carlo
  EM (Gibbs E-step, Newton M-step).

Every function takes documents as int64 arrays (or a ``(B, T)`` batch of windows).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from icmix._checks import check_positive, check_positive_int
from icmix.estimators.mtd.bayes import GibbsSampler
from icmix.estimators.mtd.em import EM
from icmix.estimators.mtd.evidence import LagEvidence, lag_evidence


def skip_bigrams(documents: Sequence[np.ndarray], q: int, order: int, kappa: float = 0.5) -> Tensor:
    """``(M, Q, Q)`` float64: ``pi_g[a, b] = (#{t: y_{t-g} = a, y_t = b} + kappa) / (#{t: y_{t-g} = a} + Q kappa)``,
    pairs counted within documents only."""
    check_positive("kappa", kappa)
    counts = np.zeros((order, q, q))
    for doc in documents:
        for g in range(1, order + 1):
            if len(doc) > g:
                np.add.at(counts[g - 1], (doc[:-g], doc[g:]), 1)
    counts += kappa
    return torch.from_numpy(counts / counts.sum(-1, keepdims=True))


def unigram(documents: Sequence[np.ndarray], q: int, kappa: float = 0.5) -> Tensor:
    """``(Q,)`` float64 smoothed character frequencies."""
    counts = np.full(q, float(kappa))
    for doc in documents:
        counts += np.bincount(doc, minlength=q)
    return torch.from_numpy(counts / counts.sum())


def stacked_evidence(documents: Sequence[np.ndarray], transition, order: int) -> LagEvidence:
    """The lag evidence of every transition of every document (length > M), as one sequence."""
    rows = [lag_evidence(torch.from_numpy(np.asarray(d))[None], transition, order).c[0]
            for d in documents if len(d) > order]
    if not rows:
        raise ValueError(f"no document is longer than the order {order}")
    c = torch.cat(rows)[None]  # (1, N, M)
    return LagEvidence(c=c, lengths=(c.shape[1] + order,))


def global_lambda(documents: Sequence[np.ndarray], transition, order: int, max_iter: int = 5000,
                  tol: float = 1e-10) -> Tensor:
    """``(M,)``: the MLE of one ``lam`` for all of ``documents`` (EM to convergence)."""
    algo = EM(stacked_evidence(documents, transition, order))
    return algo.readout(algo.run(max_iter, tol))[0, 0]


def dirichlet_mle(mean_log: Tensor, alpha0: Tensor | None = None, iters: int = 100, tol: float = 1e-12) -> Tensor:
    """The Dirichlet concentration whose ``E[log lam_g] = psi(alpha_g) - psi(sum alpha)`` equals
    ``mean_log (M,)`` (the MLE from the mean log of draws): Newton's method on the
    log-likelihood, whose Hessian ``diag(-psi'(alpha)) + psi'(sum alpha) 11^T`` is inverted in
    closed form (Minka 2000), a step halved while it would leave ``alpha > 0``."""
    alpha = torch.ones_like(mean_log) if alpha0 is None else alpha0.clone()
    for _ in range(iters):
        grad = torch.digamma(alpha.sum()) - torch.digamma(alpha) + mean_log
        q = -torch.polygamma(1, alpha)
        z = torch.polygamma(1, alpha.sum())
        b = (grad / q).sum() / (1 / z + (1 / q).sum())
        step = (grad - b) / q
        while (alpha - step <= 0).any():
            step = step / 2
        alpha = alpha - step
        if (step.abs() <= tol * alpha).all():
            break
    return alpha


def fit_dirichlet_prior(tokens: Tensor, transition, order: int, em_iters: int = 30, samples: int = 200,
                        burn_in: int = 100, generator: torch.Generator | int | None = 0, tol: float = 1e-3) -> Tensor:
    """``alpha (M,)`` maximising ``sum_b log p(window_b | alpha)`` over the windows ``tokens (B, T)``,
    by Monte-Carlo EM: the E-step runs the Gibbs sampler at the current ``alpha`` and averages the
    Rao-Blackwellised ``E[log lam_g | Z] = psi(alpha_g + n_g) - psi(sum alpha + N)`` over draws and
    windows; the M-step is ``dirichlet_mle`` of that average.  Stops when ``alpha`` moves by less
    than ``tol`` relative, or after ``em_iters`` iterations."""
    evidence = lag_evidence(tokens, transition, order)
    gen = torch.Generator().manual_seed(generator) if isinstance(generator, int) else generator
    alpha = torch.ones(order, dtype=torch.float64)
    n = float(evidence.n_rows[0])
    for _ in range(check_positive_int("em_iters", em_iters)):
        sampler = GibbsSampler(evidence, alpha, samples, burn_in, gen)
        lam, total = sampler.init().lam, torch.zeros(order, dtype=torch.float64)
        for step in range(burn_in + samples):
            counts, lam = sampler.draw(lam)
            if step >= burn_in:
                total += (torch.digamma(alpha + counts) - torch.digamma(alpha.sum() + n)).mean((0, 1))
        new = dirichlet_mle(total / samples, alpha)
        moved = ((new - alpha).abs() / alpha).max().item()
        alpha = new
        if moved < tol:
            break
    return alpha
