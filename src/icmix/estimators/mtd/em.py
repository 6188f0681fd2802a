"""Maximum likelihood for the lag weights by expectation-maximisation (SPEC §1).

E-step: ``r_tg ∝ lam_g c_tg``.  M-step: ``lam_g <- mean_t r_tg``.  Written with the
shared gradient, the update is ``lam <- lam ⊙ grad l(lam) / N``: a multiplicative update
whose fixed points are the MLE on the simplex, which EM reaches monotonically.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from icmix._checks import check_positive, check_positive_int
from icmix.estimators.mtd.evidence import LagEvidence, lag_evidence, squeeze_prefixes


@dataclass(frozen=True)
class EMState:
    """EM iterate ``lam (B, P, M)`` after ``step`` iterations."""

    lam: Tensor
    step: int


class EM:
    """EM for the lag weights, exposed step by step (``init`` / ``step`` / ``readout``)."""

    def __init__(self, evidence: LagEvidence):
        self.evidence = evidence

    def init(self) -> EMState:
        """``lam = 1/M`` for every sequence and prefix ``(B, P, M)``, at step 0."""
        b, _, m = self.evidence.c.shape
        p = len(self.evidence.lengths)
        lam = torch.full((b, p, m), 1.0 / m, dtype=self.evidence.c.dtype, device=self.evidence.c.device)
        return EMState(lam=lam, step=0)

    def step(self, state: EMState) -> EMState:
        """One EM iteration, E- and M-step together: ``lam <- lam ⊙ grad l(lam) / N`` (``N`` the
        prefix's rows), renormalised onto the simplex."""
        n = self.evidence.n_rows.to(state.lam.dtype)[None, :, None]
        lam = state.lam * self.evidence.gradient(state.lam) / n
        return EMState(lam=lam / lam.sum(-1, keepdim=True), step=state.step + 1)

    def readout(self, state: EMState) -> Tensor:
        """``(B, P, M)``: the current iterate's lag weights."""
        return state.lam

    def run(self, max_iter: int = 1000, tol: float = 1e-10) -> EMState:
        """Iterate from ``init`` until no weight moves by more than ``tol`` in one iteration, or
        ``max_iter`` iterations (with a warning)."""
        max_iter = check_positive_int("max_iter", max_iter)
        tol = check_positive("tol", tol)
        state = self.init()
        for _ in range(max_iter):
            new = self.step(state)
            delta = (new.lam - state.lam).abs().max().item()
            state = new
            if delta <= tol:
                break
        else:
            warnings.warn(f"EM did not reach tol={tol:g} in {max_iter} iterations (last move {delta:.2e})", stacklevel=3)
        return state

    def log_likelihood(self, state: EMState) -> Tensor:
        """``(B, P)`` log-likelihood of the current iterate."""
        return self.evidence.log_likelihood(state.lam)


def em(
    tokens,
    transition,
    order: int,
    max_iter: int = 1000,
    tol: float = 1e-10,
    lengths: Sequence[int] | str | None = None,
) -> Tensor:
    """Maximum-likelihood lag weights by EM, from ``lam = 1/M``.

    Stops when no weight of any sequence moves by more than ``tol`` in one iteration, or
    after ``max_iter`` iterations (with a warning).  Returns ``(B, M)``, or ``(B, P, M)``
    when ``lengths`` is given (see ``mirror_descent``).
    """
    max_iter = check_positive_int("max_iter", max_iter)
    tol = check_positive("tol", tol)
    algo = EM(lag_evidence(tokens, transition, order, lengths))
    return squeeze_prefixes(algo.readout(algo.run(max_iter, tol)), lengths)
