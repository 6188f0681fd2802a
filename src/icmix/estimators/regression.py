"""Predictors for mixtures of linear regressions (SPEC §2), vectorised over prompts and prefixes.

Every predictor takes ``xs (B, N, d)`` and ``ys (B, N)`` and returns ``(B, N)``, float64:
column j predicts ``ys[:, j]`` from the pairs ``0..j-1`` and ``xs[:, j]`` (column 0 sees no
pairs).  Running sums over the prompt give every prefix at once.

- ``posterior_mean``: the Bayes-optimal prediction when the components are known (uniform
  prior over them, Gaussian noise); ``noise = 0`` is its limit, ``argmin``'s rule.
- ``argmin``: the component with the least squared residual so far (ties averaged).
- ``ols``: minimum-norm least squares on the prefix.
- ``ridge``: the posterior mean of Bayesian linear regression with prior ``N(0, prior_var I)``.
- ``batch_em``: the components estimated from n training prompts (the paper's Algorithm 1),
  to plug into ``posterior_mean`` and ``argmin`` ("EM weights").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from icmix._checks import as_components, as_prompts, check_nonnegative, check_positive, check_positive_int

_CHUNK = 1 << 24  # elements of a prefix-expanded intermediate built at once


def _exclusive_cumsum(x: Tensor, dim: int = 1) -> Tensor:
    """Sums of the entries *before* each position (exact: no subtraction)."""
    c = x.cumsum(dim)
    return torch.cat([torch.zeros_like(c.narrow(dim, 0, 1)), c.narrow(dim, 0, c.shape[dim] - 1)], dim)


def component_residuals(xs, ys, components) -> tuple[Tensor, Tensor]:
    """``sse (B, N, m)``: squared residuals of each component summed over the pairs before
    each position; ``pred (B, N, m)``: each component's prediction ``<w_j, x>``."""
    xs, ys = as_prompts(xs, ys)
    w = as_components(components, xs.shape[-1])
    pred = xs @ w.T
    return _exclusive_cumsum((pred - ys[..., None]) ** 2), pred


def _argmin_weights(sse: Tensor) -> Tensor:
    tie = (sse == sse.min(-1, keepdim=True).values).to(sse.dtype)
    return tie / tie.sum(-1, keepdim=True)


def posterior_weights(xs, ys, components, noise: float) -> Tensor:
    """Posterior probabilities of the components after each prefix ``(B, N, m)``:
    ``softmax_j(-sse_j / (2 noise^2))``; ``noise = 0`` puts equal weight on the minimisers."""
    noise = check_nonnegative("noise", noise)
    sse, _ = component_residuals(xs, ys, components)
    variance = 2 * noise**2
    if variance == 0 or 1 / variance == float("inf"):  # noise = 0, or so small it underflows: the limit
        return _argmin_weights(sse)
    precision = 1 / variance
    # Shift by the minimum first: the best component has logit 0, so however small the noise
    # the logits never all underflow to -inf (no NaN), and the limit is argmin's rule.
    return torch.softmax(-(sse - sse.min(-1, keepdim=True).values) * precision, dim=-1)


def posterior_mean(xs, ys, components, noise: float) -> Tensor:
    """Bayes-optimal prediction with known components: ``sum_j P(j | prefix) <w_j, x>``."""
    _, pred = component_residuals(xs, ys, components)
    return (posterior_weights(xs, ys, components, noise) * pred).sum(-1)


def argmin(xs, ys, components) -> Tensor:
    """Prediction of the component with the least squared residual on the prefix (an average
    over tied components, e.g. all of them in column 0): the ``noise -> 0`` limit of
    ``posterior_mean``."""
    return posterior_mean(xs, ys, components, 0.0)


def ols(xs, ys) -> Tensor:
    """Minimum-norm least squares on each prefix (``pinv(X) y``), evaluated at the next ``x``.
    Column 0 (no pairs) predicts 0.  One batched pseudo-inverse per prefix length."""
    xs, ys = as_prompts(xs, ys)
    b, n, _ = xs.shape
    out = torch.zeros(b, n, dtype=torch.float64)
    for j in range(1, n):
        w = (torch.linalg.pinv(xs[:, :j]) @ ys[:, :j, None]).squeeze(-1)  # (B, d)
        out[:, j] = (w * xs[:, j]).sum(-1)
    return out


def ridge(xs, ys, noise: float, prior_var: float = 1.0) -> Tensor:
    """Bayesian linear regression (the reviewers' "Bayesian OLS"): the posterior mean of
    ``w ~ N(0, prior_var I)`` given the prefix, ``(X^T X + noise^2 / prior_var I)^{-1} X^T y``,
    evaluated at the next ``x``.  ``noise = 0`` is the minimum-norm OLS limit."""
    noise = check_nonnegative("noise", noise)
    prior_var = check_positive("prior_var", prior_var)
    if noise == 0:
        return ols(xs, ys)
    xs, ys = as_prompts(xs, ys)
    b, n, d = xs.shape
    out = torch.empty(b, n, dtype=torch.float64)
    eye = torch.eye(d, dtype=torch.float64) * (noise**2 / prior_var)
    step = max(1, _CHUNK // (n * d * d))
    for s in range(0, b, step):
        x, y = xs[s : s + step], ys[s : s + step]
        gram = _exclusive_cumsum(x[..., :, None] * x[..., None, :]) + eye  # (b, N, d, d)
        moment = _exclusive_cumsum(x * y[..., None])  # (b, N, d)
        w = torch.linalg.solve(gram, moment)
        out[s : s + step] = (w * x).sum(-1)
    return out


@dataclass(frozen=True)
class EMResult:
    """Output of ``batch_em``: estimated ``components (m, d)``, mixing ``weights (m,)``, the
    iterations run, whether the stopping rule was met, and the log-likelihood after each
    iteration (non-decreasing: every step is an exact E- and M-step)."""

    components: Tensor
    weights: Tensor
    n_iter: int
    converged: bool
    log_likelihood: list[float]


def batch_em(xs, ys, n_components: int, noise: float, max_iter: int = 20_000, tol: float = 1e-3,
             generator: torch.Generator | int | None = None, init=None) -> EMResult:
    """Batch EM for a discrete mixture of linear regressions (Pathak et al., Algorithm 1, App. C.2).

    Every prompt ``(xs[i], ys[i])`` is one draw of the latent component, so responsibilities are
    per prompt: ``gamma_ij ∝ pi_j prod_l phi((y_il - <x_il, w_j>) / noise)``; then
    ``pi_j = mean_i gamma_ij`` and ``w_j`` solves the ``gamma_ij``-weighted least squares over all
    pairs.  All ``N`` pairs of a prompt are used.  Initialisation as in the paper: ``pi`` uniform
    on the simplex, ``w_j`` uniform on the sphere of radius ``sqrt(d)`` (or ``init (m, d)``).
    Stops after ``max_iter`` iterations or when ``max_j min_j' ||w_j^t - w_j'^{t-1}|| <= tol``
    (the paper's rule; it took ``max_iter = 20000, tol = 1e-3``).

    Choices the paper leaves open: sufficient statistics ``X_i^T X_i, X_i^T y_i`` are formed once,
    so an iteration costs ``O(n m d^2)``; a component whose responsibilities all vanish keeps its
    previous estimate; the M-step solves with a ``1e-10 I`` jitter, negligible unless a
    component's weighted design is singular.
    """
    from icmix.random import dirichlet, make_generator

    xs, ys = as_prompts(xs, ys)
    m = check_positive_int("n_components", n_components)
    noise = check_positive("noise", noise)
    max_iter = check_positive_int("max_iter", max_iter)
    tol = check_positive("tol", tol)
    n, k, d = xs.shape
    g = make_generator(generator)
    log_pi = dirichlet(torch.ones(m, dtype=torch.float64), g).clamp_min(1e-300).log()
    if init is None:
        w = torch.randn(m, d, generator=g, dtype=torch.float64)
        w = w / w.norm(dim=1, keepdim=True) * d**0.5
    else:
        w = as_components(init, d).clone()
        if w.shape[0] != m:
            raise ValueError(f"init has {w.shape[0]} components, n_components is {m}")
    gram = xs.transpose(1, 2) @ xs  # (n, d, d)
    moment = (xs.transpose(1, 2) @ ys[..., None]).squeeze(-1)  # (n, d)
    yy = (ys**2).sum(1)  # (n,)
    const = -0.5 * k * torch.log(torch.tensor(2 * torch.pi * noise**2, dtype=torch.float64))
    jitter = 1e-10 * torch.eye(d, dtype=torch.float64)
    history, converged, it = [], False, 0
    for it in range(1, max_iter + 1):
        sse = yy[:, None] - 2 * moment @ w.T + torch.einsum("jd,nde,je->nj", w, gram, w)  # (n, m)
        logits = log_pi - sse.clamp_min(0) / (2 * noise**2) + const
        total = torch.logsumexp(logits, dim=1)  # (n,) log p(prompt_i) under the current parameters
        history.append(total.sum().item())
        gamma = torch.exp(logits - total[:, None])
        mass = gamma.sum(0)  # (m,)
        log_pi = (mass / n).clamp_min(1e-300).log()
        a = torch.einsum("nj,nde->jde", gamma, gram) + jitter
        rhs = gamma.T @ moment
        new = torch.linalg.solve(a, rhs[..., None]).squeeze(-1)
        new = torch.where((mass > 0)[:, None], new, w)
        move = torch.cdist(new, w).min(dim=1).values.max().item()
        w = new
        if move <= tol:
            converged = True
            break
    return EMResult(components=w, weights=log_pi.exp(), n_iter=it, converged=converged, log_likelihood=history)
