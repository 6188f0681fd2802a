"""Differential checks of constructions against their algorithms (used by tests and the CLI)."""

from __future__ import annotations

import torch

from icmix.estimators.mtd import lag_evidence, mirror_descent, predictive
from icmix.models import DisentangledTransformer
from icmix.tasks import MTDTask


def md_reference(tokens, transition, order: int, beta: float) -> torch.Tensor:
    """One-step-MD predictive after every prefix of length ``>= M+1``: ``(B, T-M, Q)``, with
    the construction's step size ``eta = beta / (M N)``."""
    t = tokens.shape[1]
    n = torch.arange(1, t - order + 1, dtype=torch.float64)
    lam = mirror_descent(tokens, transition, order, beta / (order * n), 1, "all")
    return predictive(tokens, transition, lam, "all")


def mtd_differential_check(model: DisentangledTransformer, task: MTDTask, beta: float, n_sequences: int,
                           length: int, generator: torch.Generator) -> dict[str, float]:
    """Max errors of the construction vs one-step MD, and of its layer-1/2 blocks vs the
    responsibilities and their running mean, on fresh sequences."""
    m = task.order
    tokens, _ = task.sample(n_sequences, length, generator=generator)
    with torch.no_grad():
        out, cache = model.run_with_cache(tokens)
    ref = md_reference(tokens, task.transition, m, beta)
    c = lag_evidence(tokens, task.transition, m, "all").c  # (B, N, M)
    gamma = c / c.sum(-1, keepdim=True)
    running = gamma.cumsum(1) / torch.arange(1, gamma.shape[1] + 1, dtype=gamma.dtype)[None, :, None]
    attn1 = cache["attention"][0][:, 0]  # (B, T, T)
    i = torch.arange(m, length)
    gamma_model = torch.stack([attn1[:, i, i - g] for g in range(1, m + 1)], -1)  # (B, N, M)
    block = cache["stream"][..., model.layouts[2]["attn2.0/attn1.0/offset"]][:, m:, 1 : m + 1]
    return {
        "max_error": (out[:, m:].double() - ref).abs().max().item(),
        "max_error_gamma": (gamma_model.double() - gamma).abs().max().item(),
        "max_error_mean": (block.double() - running).abs().max().item(),
    }
