"""Estimators of the MTD lag weights (SPEC §1).

Every function takes ``(tokens (B, T), transition, order M, ...)`` and returns
``lam_hat (B, M)`` (lag g in column g - 1) from the full sequence, or ``(B, P, M)`` from
each prefix in ``lengths``.  The iterative ones are also classes with ``init`` / ``step`` /
``readout``.  ``transition`` is one ``(Q, Q)`` matrix shared by every lag (MTD, SPEC §1) or
``(M, Q, Q)``, one per lag with lag g in ``transition[g - 1]`` (MTDg, SPEC §3); the estimators
see it only through the lag evidence (``lag_evidence``), so each serves both.
"""

from icmix.estimators.mtd.bayes import GibbsSampler, bayes_exact, bayes_gibbs, exact_cost
from icmix.estimators.mtd.em import EM, em
from icmix.estimators.mtd.evidence import LagEvidence, lag_evidence
from icmix.estimators.mtd.mirror_descent import MirrorDescent, mirror_descent
from icmix.estimators.mtd.predictive import predictive

__all__ = [
    "EM",
    "GibbsSampler",
    "LagEvidence",
    "MirrorDescent",
    "bayes_exact",
    "bayes_gibbs",
    "em",
    "exact_cost",
    "lag_evidence",
    "mirror_descent",
    "predictive",
]
