"""Metrics: divergences between predictive distributions and confidence intervals."""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats
from torch import Tensor


def kl_divergence(p: Tensor, q: Tensor) -> Tensor:
    """``KL(p || q)`` along the last dimension, with ``0 log 0 = 0``.

    ``inf`` where ``q`` puts zero mass on an outcome that ``p`` can produce.
    """
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1).clamp_min(0)


def cross_entropy(p: Tensor, targets: Tensor) -> Tensor:
    """``-log p[..., targets]`` in nats: the cross-entropy of each observed outcome ``targets
    (...)`` under the distributions ``p (..., Q)`` (a zero probability counts as ``1e-300``)."""
    return -p.gather(-1, targets[..., None]).squeeze(-1).clamp_min(1e-300).log()


def mean_ci(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean, standard error and Student-t confidence half-width of a 1-D sample.

    Returns ``(mean, sem, half_width)``; the half-width is NaN for fewer than two values.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    n = x.size
    mean = float(x.mean())
    if n < 2:
        return mean, float("nan"), float("nan")
    sem = float(x.std(ddof=1) / np.sqrt(n))
    return mean, sem, float(stats.t.ppf(0.5 + level / 2, n - 1) * sem)


def normalised_mse(pred: Tensor, ys: Tensor, dim: int) -> Tensor:
    """Mean squared error per prompt position, divided by the dimension d (the regression
    paper's "normalised MSE"): ``pred, ys (B, N) -> (N,)``."""
    if pred.shape != ys.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and ys {tuple(ys.shape)} differ in shape")
    return ((pred.double() - ys.double()) ** 2).mean(0) / dim


def min_matching_error(estimate: Tensor, truth: Tensor) -> float:
    """Recovery error of a set of components: the largest distance ``||w_j - w_hat||`` between
    matched pairs, under the one-to-one matching of ``estimate (m', d)`` to ``truth (m, d)`` of
    least total distance (Hungarian algorithm; every true component is matched when m' >= m)."""
    from scipy.optimize import linear_sum_assignment

    cost = torch.cdist(torch.as_tensor(truth, dtype=torch.float64),
                       torch.as_tensor(estimate, dtype=torch.float64)).numpy()
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].max())


def oracle_prediction_error(estimate: Tensor, truth: Tensor, noise: float, dim: int) -> float:
    """Pathak et al.'s "oracle prediction error" of estimated components (Fig. 3), normalised
    by d: ``(sigma^2 + mean_j min_{w in estimate} ||w_j - w||^2) / d``, the error of predicting
    with the estimate nearest to the prompt's true component when ``x ~ N(0, I)``."""
    sq = torch.cdist(torch.as_tensor(truth, dtype=torch.float64),
                     torch.as_tensor(estimate, dtype=torch.float64)).pow(2)
    return float((noise**2 + sq.min(dim=1).values.mean()) / dim)
