"""Training losses and the map from a model's output to a next-token distribution.

- ``mse``: the paper's loss, the Brier score ``||out - onehot(y)||^2`` of the *linear*
  output read as probabilities.  For evaluation that output is floored at ``1e-6`` and
  renormalised, so the KL is always finite.
- ``ce``: cross-entropy, the output read as logits (softmax for evaluation).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

MSE_FLOOR = 1e-6


def loss_fn(out: Tensor, targets: Tensor, mask: Tensor, loss: str) -> Tensor:
    """Mean loss over the masked positions: ``out (B, T, Q)``, ``targets (B, T)``, ``mask (T,)``."""
    out, targets = out[:, mask], targets[:, mask]
    if loss == "mse":
        onehot = F.one_hot(targets, out.shape[-1]).to(out.dtype)
        return (out - onehot).pow(2).sum(-1).mean()
    if loss == "ce":
        return F.cross_entropy(out.reshape(-1, out.shape[-1]).float(), targets.reshape(-1))
    raise ValueError(f"unknown loss {loss!r}")


def to_distribution(out: Tensor, loss: str) -> Tensor:
    """Next-token distributions from model outputs ``(..., Q)`` trained with ``loss``."""
    if loss == "ce":
        return torch.softmax(out.double(), -1)
    p = out.double().clamp_min(MSE_FLOOR)
    return p / p.sum(-1, keepdim=True)
