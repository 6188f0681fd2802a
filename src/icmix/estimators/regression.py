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
- ``subspace_algorithm``: the components estimated by Jain et al.'s clipped, projected
  gradient rounds (Algorithm 1 of arXiv 2309.01973), "SA weights"; also a good start for EM.
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


@dataclass(frozen=True)
class SAResult:
    """Output of ``subspace_algorithm``: the ``components (m, d)`` kept by the final pruning,
    every ``candidates (L, d)`` of the list (one per reference prompt), the ``references (L,)``
    they started from, and ``kept (rounds, L)``: how many prompts passed each round's filter."""

    components: Tensor
    candidates: Tensor
    references: Tensor
    kept: Tensor


def subspace_algorithm(xs, ys, n_components: int, noise: float, rounds: int = 10, n_references: int | None = None,
                       clip: float = 3.0, filter_scale: float = 0.2, groups: int = 5, step: float = 1.0,
                       subspace_dim: int | None = None, generator: torch.Generator | int | None = None) -> SAResult:
    """The subspace algorithm (SA) of Jain, Sen, Kong, Das and Orlitsky (NeurIPS 2024, arXiv
    2309.01973, Algorithm 1 with ClipEst, GradSubEst and GradEst), run on prompts as batches.

    For each of ``L`` reference prompts ``b*``, start at ``w = 0`` and run ``rounds`` rounds of
    clipped, projected gradient descent towards the component that generated ``b*``:

    1. *ClipEst.* ``theta`` = mean squared residual of ``w`` on the first half of ``b*``;
       clipping level ``kappa = clip * sqrt(theta + noise^2)``.  The clipped gradient of a pair
       is ``clamp(<x, w> - y, -kappa, kappa) x``: pairs of other components, with large
       residuals, count for little.
    2. *GradSubEst.* With ``g1_b, g2_b`` the mean clipped gradients on the two halves of prompt
       b, ``A = (1/2n) sum_b (g1_b g2_b^T + g2_b g1_b^T)`` estimates ``sum_j p_j g_j g_j^T`` (the
       halves are independent, so the noise cancels); ``P`` projects on its top
       ``l = subspace_dim`` (default ``min(m, d)``) eigenvectors.
    3. *GradEst.* Prompt b passes the filter when ``zeta_b = <P(g1_b - g1_b*), P(g2_b - g2_b*)>``,
       an unbiased estimate of the squared distance between b's and b*'s projected expected
       gradients, is at most ``(filter_scale * kappa)^2``.  The passing prompts are split into
       ``groups`` groups; the step ``Delta`` is the median-of-means of their projected
       whole-prompt gradients ``P g_b`` (the group mean with the least median distance to the
       other group means).
    4. ``w <- w - step * Delta``.  With ``x ~ N(0, I)`` the unclipped expected gradient is
       ``w - w_b*``, so the paper's step ``1 / C_1`` is 1.

    The list of ``L`` candidates is then pruned to ``m``: greedily, the candidate that most
    lowers ``sum_b min_j SSE_b(w_j)`` over the prompts is added until ``m`` are chosen.

    Choices of ours, where the paper leaves them open or assumes other data:

    - Every prompt serves as a "small" batch (subspace), a "medium" batch (filter and gradient)
      and as a candidate reference, and all prompts are reused in every round (the paper
      splits the batches across rounds for its proof and notes this "may not be necessary
      in practice").  Halves are consecutive pairs (pairs are exchangeable).
    - The filter uses one pair of halves (the paper's ``T_1`` medians need more pairs than a
      prompt has), and ``Delta`` uses the whole prompt, including the halves the filter saw
      (the paper keeps them apart).  With prompts of 17 pairs, splitting a prompt in four
      made the filter test so noisy that a third of the kept prompts came from other
      components and the estimates stalled at ~0.6 from the truth (d = 8, m = 5, n = 2000);
      with halves ~90% are right and the error is ~0.2.
    - The Theta-constants: ``rounds = 10``, ``clip = 3`` (instead of
      ``sqrt(32 (C + 1) C_1 / eps)``, which never clips at these sizes), the filter threshold
      ``(filter_scale * kappa)^2`` with ``filter_scale = 0.2``, ClipEst's median-of-means with
      one group (a prompt has few pairs), ``groups = 5`` for the final median-of-means (1 when
      fewer than 10 prompts pass).  Tuned once on d = 8, m = 5, sigma = 1, n = 2000.
    - ``L = n_references`` reference prompts drawn without replacement, by default ``8 m``
      (the paper's Theta(1 / alpha)).  A reference always passes its own filter.
    - The pruning to ``m`` components (the paper returns the whole list and picks one per new
      batch by its error; a posterior-mean plug-in needs ``m``).
    """
    from icmix.random import make_generator

    xs, ys = as_prompts(xs, ys)
    m = check_positive_int("n_components", n_components)
    noise = check_nonnegative("noise", noise)
    rounds = check_positive_int("rounds", rounds)
    clip, filter_scale, step = (check_positive(name, v) for name, v in
                                (("clip", clip), ("filter_scale", filter_scale), ("step", step)))
    groups = check_positive_int("groups", groups)
    n, k, d = xs.shape
    if k < 2:
        raise ValueError(f"the subspace algorithm splits each prompt in halves: it needs N >= 2 points, got {k}")
    n_ref = check_positive_int("n_references", n_references if n_references is not None else 8 * m)
    if n_ref > n:
        raise ValueError(f"n_references = {n_ref} is more than the {n} prompts")
    ell = min(d, check_positive_int("subspace_dim", subspace_dim) if subspace_dim is not None else m)
    g = make_generator(generator)
    refs = torch.randperm(n, generator=g)[:n_ref]
    group = torch.randint(groups, (n,), generator=g)
    chunk = max(1, _CHUNK // (n * k))  # references processed at once
    parts = [_sa_rounds(xs, ys, refs[s : s + chunk], noise, rounds, clip, filter_scale, groups, step, group, ell)
             for s in range(0, n_ref, chunk)]
    candidates, kept = torch.cat([w for w, _ in parts]), torch.cat([p for _, p in parts], dim=1)
    return SAResult(components=_prune(xs, ys, candidates, m), candidates=candidates, references=refs, kept=kept)


def _sa_rounds(xs, ys, refs, noise, rounds, clip, filter_scale, groups, step, group, ell):
    """Algorithm 1 for the reference prompts ``refs (c,)`` at once: ``(c, d)`` estimates and the
    number of prompts passing the filter each round ``(rounds, c)``."""
    n, k, d = xs.shape
    c, h = len(refs), k // 2
    at_ref = torch.arange(c), refs
    w = torch.zeros(c, d, dtype=torch.float64)
    passed = torch.zeros(rounds, c, dtype=torch.long)
    for r in range(rounds):
        res = torch.einsum("bnd,cd->cbn", xs, w) - ys  # (c, n, N) residuals
        theta = (res[at_ref][:, :h] ** 2).mean(1)  # ClipEst on b*'s first half
        kappa = clip * (theta + noise**2).sqrt()  # (c,)
        clipped = torch.maximum(torch.minimum(res, kappa[:, None, None]), -kappa[:, None, None])
        s1 = torch.einsum("cbn,bnd->cbd", clipped[..., :h], xs[:, :h])  # gradient sums on the halves
        s2 = torch.einsum("cbn,bnd->cbd", clipped[..., h:], xs[:, h:])
        g1, g2, whole = s1 / h, s2 / (k - h), (s1 + s2) / k
        a = torch.einsum("cbi,cbj->cij", g1, g2)
        basis = torch.linalg.eigh((a + a.transpose(1, 2)) / (2 * n)).eigenvectors[..., -ell:]  # (c, d, l)
        p1, p2 = (torch.einsum("cbd,cdl->cbl", v, basis) for v in (g1, g2))  # coordinates in the subspace
        zeta = ((p1 - p1[at_ref][:, None]) * (p2 - p2[at_ref][:, None])).sum(-1)  # (c, n)
        keep = zeta <= (filter_scale * kappa[:, None]) ** 2
        keep[at_ref] = True
        passed[r] = keep.sum(1)
        delta = _median_of_means(torch.einsum("cbd,cdl->cbl", whole, basis), keep, group, groups)  # (c, l)
        w = w - step * torch.einsum("cl,cdl->cd", delta, basis)
    return w, passed


def _median_of_means(values: Tensor, keep: Tensor, group: Tensor, groups: int) -> Tensor:
    """``values (c, n, l)`` averaged over the kept prompts ``keep (c, n)`` within each of
    ``groups`` groups; per reference, the group mean with the least median distance to the
    other group means (all kept prompts as one group when fewer than ``2 * groups`` pass)."""
    onehot = torch.nn.functional.one_hot(group, groups).to(values.dtype)  # (n, G)
    w = keep.to(values.dtype)[..., None] * onehot  # (c, n, G)
    counts = w.sum(1)  # (c, G)
    means = torch.einsum("cng,cnl->cgl", w, values) / counts.clamp_min(1)[..., None]
    overall = torch.einsum("cn,cnl->cl", keep.to(values.dtype), values) / keep.sum(1).clamp_min(1)[:, None]
    spread = torch.cdist(means, means).median(dim=2).values  # (c, G)
    spread = torch.where(counts > 0, spread, torch.inf)
    best = means[torch.arange(len(means)), spread.argmin(1)]
    few = keep.sum(1) < 2 * groups
    return torch.where(few[:, None], overall, best)


def _prune(xs: Tensor, ys: Tensor, candidates: Tensor, m: int) -> Tensor:
    """Greedily choose ``m`` of the candidates ``(L, d)``: each time the one that most lowers
    the total over prompts of the least sum of squared residuals among those chosen."""
    gram = xs.transpose(1, 2) @ xs
    moment = (xs.transpose(1, 2) @ ys[..., None]).squeeze(-1)
    sse = (ys**2).sum(1)[:, None] - 2 * moment @ candidates.T + torch.einsum("ld,nde,le->nl", candidates, gram, candidates)
    best = torch.full((len(xs),), torch.inf, dtype=torch.float64)
    chosen = []
    for _ in range(min(m, len(candidates))):
        total = torch.minimum(best[:, None], sse).sum(0)
        if chosen:
            total[chosen] = torch.inf
        j = int(total.argmin())
        chosen.append(j)
        best = torch.minimum(best, sse[:, j])
    return candidates[chosen]
