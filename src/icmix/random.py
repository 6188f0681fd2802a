"""Seeded randomness.  The library never touches the global RNG: every sampler takes an
explicit ``torch.Generator`` (or a seed that makes one)."""

from __future__ import annotations

import torch
from torch import Tensor


class Stream:
    """The named random streams of the library: the generator for purpose ``P`` of seed ``s``
    is ``stream(s, Stream.P)``, seeded ``s + P``.  Every offset lives here, so a new purpose
    can pick one no other uses.  The values are part of every result: never change one.  (Two
    are shared, by history: ``GIBBS`` and ``RANK_DROPOUT`` feed different generators, and
    ``CHECK`` seeds two figures' sequences.)"""

    EVALUATION = 1  # evaluate_mtd's sequences (and its tuning batch, drawn after them)
    GIBBS = 7919  # the Gibbs sampler's chain in the standard MTD predictors
    RANK_DROPOUT = 7919  # multiplied by the rank: each data-parallel rank's dropout stream
    AGREEMENT = 10_000  # mtd-fig4's agreement sequences
    ATTENTION = 20_000  # the one sequence whose attention maps a figure draws
    CHECK = 30_000  # the construction's differential check; mtd-fig4's ablation sequences
    ATTENTION_PANEL = 30_500  # mtd-construction's drawn sequence
    MLR_CHECK = 31_000  # mlr-construction's prompts
    FINE_TUNE = 40_000  # mtd-fig4's ablation fine-tuning
    TRACKING = 50_000  # mtd-fig5's tracking sequences
    READOUT = 60_000  # mtd-fig5's per-layer readout sequences
    CONSTRUCTION_TUNE = 70_000  # mtd-fig6/8's construction tuning batch
    EM_TRAINING = 80_000  # mlr-fig4's batch-EM training prompts
    MLR_EVALUATION = 90_000  # the regression figures' evaluation prompts
    TEXT_TUNE = 100_000  # the text figure's tuning windows (training split)
    TEXT_PRIOR = 110_000  # the text figure's windows for the empirical prior (training split)
    BASELINES = 120_000  # `icmix baselines`' fresh examples (and, after them, its tuning batch)
    TESTBEDS = 130_000  # the testbeds' figures' evaluation prompts and sequences
    TRAINING_EVALUATION = 1_000_003  # a training run's fixed evaluation batch
    TRAINING_SET = 2_000_003  # a fixed-training-set run's prompts (mlr-fig3)


def stream(seed: int, which: int) -> torch.Generator:
    """The CPU generator of the named stream ``which`` for ``seed``."""
    return torch.Generator().manual_seed(int(seed) + int(which))


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
