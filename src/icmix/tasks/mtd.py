"""Mixture-of-transition-distributions (MTD) sequences (SPEC §1).

One transition matrix ``pi (Q, Q)`` is shared by every sequence of a task (in-weight
knowledge).  Each sequence draws its own lag weights ``lam ~ Dirichlet(alpha 1_M)``
(in-context knowledge).  The first ``M`` tokens are uniform; afterwards
``Z_t ~ Categorical(lam)`` and ``y_t ~ pi[y_{t - Z_t}, :]``.

MTDg (SPEC §3, Raftery's general form) gives each lag its own matrix: ``transition (M, Q, Q)``
and ``y_t ~ pi_{Z_t}[y_{t - Z_t}, :]`` with ``pi_g = transition[g - 1]``.

Shapes: B batch, T length, Q vocabulary, M lags (order).  Lag ``g = 1..M`` is column
``g - 1`` of every ``lam``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from icmix._checks import as_transitions, check_memory, check_order, check_positive, check_positive_int
from icmix.random import categorical, dirichlet, make_generator


class MTDTask:
    """An MTD task: a fixed transition matrix and a Dirichlet prior over lag weights.

    Args:
        vocab_size: Q, the number of token values.
        order: M, the number of lags.
        alpha: Dirichlet concentration of the lag-weight prior (``alpha = 1``: uniform).
        seed: seeds the transition matrix (rows ~ Dirichlet(1)) when none is given.
        transition: optional user matrix ``(Q, Q)``, or ``(M, Q, Q)`` with one per lag;
            validated (row-stochastic, non-negative).
        per_lag: draw one matrix per lag from the seed (MTDg) instead of one shared matrix.

    Example:
        >>> task = MTDTask(vocab_size=10, order=3, seed=0)
        >>> tokens, lam = task.sample(4, 64, generator=torch.Generator().manual_seed(1))
        >>> tokens.shape, lam.shape
        (torch.Size([4, 64]), torch.Size([4, 3]))
    """

    def __init__(self, vocab_size: int, order: int, alpha: float = 1.0, seed: int = 0, transition=None,
                 per_lag: bool = False):
        self.vocab_size = check_positive_int("vocab_size", vocab_size, minimum=2)
        self.order = check_order(order)
        self.alpha = check_positive("alpha", alpha)
        self.seed = int(seed)
        if transition is None:
            shape = (self.order, vocab_size, vocab_size) if per_lag else (vocab_size, vocab_size)
            check_memory(f"an MTD task with vocab_size {vocab_size:,}", 3 * 8 * math.prod(shape),
                         f"its transition {'matrices are' if per_lag else 'matrix is'} {shape} float64")
            transition = dirichlet(torch.ones(shape, dtype=torch.float64), make_generator(seed))
        pi = as_transitions(transition, self.order, dtype=torch.float64)
        if pi.shape[-1] != self.vocab_size:
            raise ValueError(f"transition matrix is {tuple(pi.shape)} but vocab_size is {vocab_size}")
        if per_lag and pi.ndim != 3:
            raise ValueError(f"per_lag needs one transition matrix per lag, shape ({self.order}, Q, Q); "
                             f"got {tuple(pi.shape)}")
        self.transition = pi  # (Q, Q), or (M, Q, Q) with one matrix per lag

    @property
    def per_lag(self) -> bool:
        """True for MTDg: one transition matrix per lag."""
        return self.transition.ndim == 3

    def __repr__(self) -> str:
        kind = ", per_lag=True" if self.per_lag else ""
        return f"MTDTask(vocab_size={self.vocab_size}, order={self.order}, alpha={self.alpha}, seed={self.seed}{kind})"

    def sample_lambda(self, batch_size: int, generator: torch.Generator | None = None) -> Tensor:
        """Lag weights ``(B, M)`` from the Dirichlet(alpha) prior."""
        g = make_generator(generator)
        conc = torch.full((batch_size, self.order), self.alpha, dtype=torch.float64, device=g.device)
        return dirichlet(conc, g)

    def sample(
        self,
        batch_size: int,
        length: int,
        generator: torch.Generator | int | None = None,
        lam: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Sample ``batch_size`` sequences of ``length`` tokens.

        Vectorised over the batch: the only loop is over time, which is inherently
        sequential.  Pass ``lam (B, M)`` to fix the lag weights instead of drawing them.

        Returns:
            tokens: int64 ``(B, T)``; lam: float64 ``(B, M)``, the true lag weights; both on
            the generator's device.
        """
        batch_size = check_positive_int("batch_size", batch_size)
        length = check_positive_int("length", length)
        check_order(self.order, length)
        g = make_generator(generator)
        dev = g.device  # sampled where the generator lives (a CUDA generator: on the GPU)
        m, pi = self.order, self.transition.to(dev)
        if lam is None:
            lam = self.sample_lambda(batch_size, g)
        else:
            lam = torch.as_tensor(lam, dtype=torch.float64, device=dev)
            if lam.shape != (batch_size, m):
                raise ValueError(f"lam must have shape ({batch_size}, {m}), got {tuple(lam.shape)}")
        tokens = torch.empty(batch_size, length, dtype=torch.int64, device=dev)
        tokens[:, :m] = torch.randint(self.vocab_size, (batch_size, m), generator=g, device=dev)
        # Draw every lag Z_t at once; only the token draw depends on the past.
        z = categorical(lam[:, None, :].expand(batch_size, length - m, m), g) + 1  # (B, T-M) in 1..M
        rows = torch.arange(batch_size, device=dev)
        for t in range(m, length):
            source = tokens[rows, t - z[:, t - m]]  # (B,)
            tokens[:, t] = categorical(pi[z[:, t - m] - 1, source] if pi.ndim == 3 else pi[source], g)
        return tokens, lam

    def loss_mask(self, length: int, positions: str) -> Tensor:
        """``(T,)`` bool: the positions a loss is taken at.  ``"last"``: the final one;
        ``"all"``: every position ``i >= M`` (a prefix with at least one lag-complete transition)."""
        mask = torch.zeros(length, dtype=torch.bool)
        if positions == "last":
            mask[-1] = True
        elif positions == "all":
            mask[self.order :] = True
        else:
            raise ValueError(f"positions must be 'last' or 'all', got {positions!r}")
        return mask
