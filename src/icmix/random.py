"""Seeded randomness.  The library never touches the global RNG: every sampler takes an
explicit ``torch.Generator`` (or a seed that makes one)."""

from __future__ import annotations

import torch
from torch import Tensor


def make_generator(seed: int | torch.Generator | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` from a seed; a generator passes through unchanged.

    ``None`` means seed 0, not "random": the same call gives the same numbers.
    """
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator(device=device)
    g.manual_seed(0 if seed is None else int(seed))
    return g


def dirichlet(concentration: Tensor, generator: torch.Generator) -> Tensor:
    """Sample Dirichlet(concentration) along the last dimension, with an explicit generator.

    Uses normalised Gamma draws (``torch._standard_gamma`` is the sampler behind
    ``torch.distributions.Dirichlet``; unlike that class it accepts a generator).
    """
    g = torch._standard_gamma(concentration, generator=generator)
    total = g.sum(-1, keepdim=True)
    # Tiny concentrations can make every Gamma draw underflow to 0; fall back to a vertex.
    zero = total == 0
    if zero.any():
        idx = concentration.argmax(-1, keepdim=True)
        g = torch.where(zero, torch.zeros_like(g).scatter(-1, idx, 1.0), g)
        total = g.sum(-1, keepdim=True)
    return g / total


def categorical(probs: Tensor, generator: torch.Generator) -> Tensor:
    """One draw per row of ``probs (..., K)`` (unnormalised is fine) by inverse CDF.

    Returns int64 ``(...)``.  Vectorised: one uniform per row, one cumulative sum.
    """
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[:-1] + (1,), generator=generator, dtype=probs.dtype, device=probs.device)
    u = u * cdf[..., -1:]
    idx = (cdf <= u).sum(-1)  # the first k with u < cdf[k]; K is small (lags, vocab)
    return idx.clamp_max(probs.shape[-1] - 1)
