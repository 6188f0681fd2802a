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
