"""Mirror descent (exponentiated gradient) on the lag weights (SPEC §1).

With the negative-entropy mirror map, one step from ``lam^k`` is
``lam^{k+1} ∝ lam^k ⊙ exp(eta * grad l(lam^k))``.  From ``lam^0 = 1/M`` the gradient is
``M * sum_t gamma_t(g)``, so one step has the closed form
``lam^1 = softmax(eta * M * sum_t gamma_t)``: that is what the 3-layer transformer
construction computes with ``eta = beta / (M * N)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from icmix._checks import check_positive_int
from icmix.estimators.mtd.evidence import LagEvidence, lag_evidence, squeeze_prefixes


@dataclass(frozen=True)
class MDState:
    """Iterate of mirror descent: ``log_lam (B, P, M)`` after ``step`` steps."""

    log_lam: Tensor
    step: int


def _as_eta(eta, evidence: LagEvidence) -> Tensor:
    """Step size as a ``(P, 1)`` tensor: a scalar, or one value per prefix length."""
    e = torch.as_tensor(eta, dtype=evidence.c.dtype, device=evidence.c.device)
    if e.ndim == 0:
        e = e.expand(len(evidence.lengths))
    if e.shape != (len(evidence.lengths),):
        raise ValueError(f"eta must be a scalar or have one value per prefix length ({len(evidence.lengths)}), got shape {tuple(e.shape)}")
    if not torch.isfinite(e).all() or (e < 0).any():
        raise ValueError(f"eta must be finite and >= 0, got {e.tolist()}")
    return e[:, None]


class MirrorDescent:
    """Exponentiated-gradient ascent on ``l(lam)`` over the simplex, exposed step by step.

    Example:
        >>> md = MirrorDescent(lag_evidence(tokens, pi, 3), eta=0.01)
        >>> state = md.init()
        >>> for _ in range(3): state = md.step(state)
        >>> lam = md.readout(state)  # (B, 1, M)
    """

    def __init__(self, evidence: LagEvidence, eta):
        self.evidence = evidence
        self.eta = _as_eta(eta, evidence)

    def init(self) -> MDState:
        """``log_lam = -log M`` (uniform weights) for every sequence and prefix ``(B, P, M)``, at step 0."""
        b, _, m = self.evidence.c.shape
        p = len(self.evidence.lengths)
        log_lam = torch.full((b, p, m), -math.log(m), dtype=self.evidence.c.dtype, device=self.evidence.c.device)
        return MDState(log_lam=log_lam, step=0)

    def step(self, state: MDState) -> MDState:
        """One step ``log_lam + eta * grad l(lam)``, renormalised by a log-softmax; the first uses
        the closed-form gradient at uniform ``lam``, ``M sum_t gamma_t(g)``, and an overflowing move
        is capped so the softmax stays finite."""
        if state.step == 0:
            # At lam = 1/M, c_tg / s_t = M gamma_t(g): one cumulative sum serves every prefix.
            grad = self.evidence.order * self.evidence.responsibility_sums()
        else:
            grad = self.evidence.gradient(state.log_lam.exp())
        # A huge step can underflow a weight to 0 and blow the next gradient up to inf;
        # cap the move at a finite value so the softmax stays defined.
        move = torch.nan_to_num(self.eta * grad, posinf=torch.finfo(grad.dtype).max / 4)
        logits = state.log_lam + move
        return MDState(log_lam=torch.log_softmax(logits, dim=-1), step=state.step + 1)

    def readout(self, state: MDState) -> Tensor:
        """``(B, P, M)`` lag weights."""
        return state.log_lam.exp()


def mirror_descent(
    tokens, transition, order: int, eta, steps: int = 1, lengths: Sequence[int] | str | None = None
) -> Tensor:
    """``steps`` steps of mirror descent on the lag weights from ``lam^0 = 1/M``.

    Args:
        tokens: int ``(B, T)``.
        transition: ``(Q, Q)`` row-stochastic ``pi``, or ``(M, Q, Q)``, one per lag (MTDg).
        order: M.
        eta: step size, a scalar or one per prefix length.
        steps: number of MD steps (>= 1).
        lengths: ``None`` -> estimate from the full sequence, return ``(B, M)``;
            a list or ``"all"`` -> estimate from each prefix ``tokens[:, :L]``, return ``(B, P, M)``.

    Raises:
        ValueError: bad transition matrix, tokens, order or step size.
    """
    steps = check_positive_int("steps", steps)
    md = MirrorDescent(lag_evidence(tokens, transition, order, lengths), eta)
    state = md.init()
    for _ in range(steps):
        state = md.step(state)
    return squeeze_prefixes(md.readout(state), lengths)
