"""The MTD task families: mixture-of-transition-distributions sequences with one transition
matrix shared by every lag (``mtd``, SPEC §1) or one per lag (``mtdg``, SPEC §3).

It owns the ``task:`` spec (``MTDSpec``), the next-token training objective, the standard
predictors of the lag weights (Figure 3's line-up) and the lag estimators ``icmix estimate``
offers.  A new MTD predictor is one entry in ``LAG_ESTIMATORS`` (its help text in
``icmix.families.lags.LAG_ESTIMATOR_HELP``) and/or ``predictors``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from icmix._checks import check_order, check_positive, check_positive_int
from icmix.predictors import ConstructedMirrorDescent, Key
from icmix.families.base import NextTokenObjective, SequenceFamily, register_family
from icmix.families.lags import LAG_ESTIMATOR_HELP
from icmix.tasks import MTDTask

DEFAULT_MD_STEPS = (1, 2, 3, 4)

# The keys of the MTD predictors figures and claims compare (selected by key, never by label).
BAYES, BAYES_GIBBS, MLE = Key("bayes", "exact"), Key("bayes", "gibbs"), Key("em")
MD_THEOREM_1, CONSTRUCTION = Key("md", steps=1, tuning="theorem-1"), ConstructedMirrorDescent.key


def md_key(steps: int, tuning: str = "tuned") -> Key:
    """k-step mirror descent, its step size ``tuned`` per length or ``shared`` over lengths."""
    return Key("md", steps=steps, tuning=tuning)


MD1, MD_SHARED = md_key(1), md_key(1, "shared")


@dataclass(frozen=True)
class MTDSpec:
    """An MTD task (SPEC §1) and the sequence length trained on."""

    KIND: ClassVar[str] = "mtd"
    kind: str = "mtd"  # the family's name in a task: section; must be mtd here
    vocab_size: int = 10  # Q, the token values (>= 2)
    order: int = 3  # M, the number of lags (1 <= M < length)
    alpha: float = 1.0  # Dirichlet concentration (> 0) of each sequence's lag weights; 1: uniform on the simplex
    seed: int = 0  # seeds the transition matrix (rows ~ Dirichlet(1)); the run's own seed draws the sequences
    length: int = 64  # T, input tokens of a training sequence (T + 1 are drawn); the model's max_length

    def __post_init__(self):
        if self.kind != self.KIND:
            raise ValueError(f"task.kind must be {self.KIND!r} here, got {self.kind!r}")
        check_positive_int("task.vocab_size", self.vocab_size, minimum=2)
        check_positive_int("task.length", self.length)
        check_order(self.order, self.length)
        check_positive("task.alpha", self.alpha)

    def model_fields(self) -> dict:
        """The model config fields the task sets."""
        return {"vocab_size": self.vocab_size, "max_length": self.length}


@dataclass(frozen=True)
class MTDgSpec(MTDSpec):
    """An MTDg task (SPEC §3): one transition matrix per lag, each drawn from the seed.

    Args:
        vocab_size: Q, the token values (>= 2).
        order: M, the number of lags, each with its own transition matrix (1 <= M < length).
        alpha: Dirichlet concentration (> 0) of each sequence's lag weights; 1: uniform on the simplex.
        seed: seeds the M transition matrices (rows ~ Dirichlet(1)); the run's own seed draws the sequences.
        length: T, input tokens of a training sequence (T + 1 are drawn); the model's max_length.
    """

    KIND: ClassVar[str] = "mtdg"
    kind: str = "mtdg"  # the family's name in a task: section; must be mtdg here


class MTDObjective(NextTokenObjective):
    """Next-token prediction on MTD sequences; ``all`` positions means every position with a
    full lag history (``MTDTask.loss_mask``), and the truth is the MTD predictive under the
    sequence's lag weights."""

    def loss_mask(self, length: int, positions: str) -> Tensor:
        """``(T,)`` bool from ``MTDTask.loss_mask``: ``all`` marks every position ``i >= M`` (a full
        lag history), ``last`` the final one."""
        return self.task.loss_mask(length, positions)

    def reference(self, batch: dict) -> Tensor:
        """``(B, Q)``: the MTD predictive of the token after ``batch["inputs"]`` under the
        sequences' true lag weights ``batch["latent"] (B, M)``."""
        from icmix.estimators.mtd import predictive

        return predictive(batch["inputs"], self.task.transition, batch["latent"])

    def optimum(self, batch: dict) -> float | None:
        """``eval_kl`` of the Bayes predictive (Dirichlet(1) prior, the task's): the smallest
        expected KL any predictor of the lag weights reaches.  Exact (the DP) where it costs at
        most ``10**6`` operations a sequence (order 3 up to about 30 transitions); beyond that,
        Gibbs sampling (500 draws after 100 of burn-in, a fixed seed), whose Monte-Carlo error
        is far below the differences a convergence check reads."""
        from icmix.estimators.mtd import bayes_exact, bayes_gibbs, predictive
        from icmix.metrics import kl_divergence

        if self.family.bayes_predictor(self.task) is None:  # a family that names none: unknown
            return None
        pi, m = self.task.transition.double(), self.task.order
        try:
            lam = bayes_exact(batch["inputs"], pi, m, max_work=10**6)
        except ValueError:  # the DP would be slow: sample instead
            lam = bayes_gibbs(batch["inputs"], pi, m, num_samples=500, burn_in=100, generator=0)
        p_bayes = predictive(batch["inputs"], pi, lam)
        return kl_divergence(self.reference(batch).double(), p_bayes).mean().item()


# ---- lag estimators and standard predictors -----------------------------------------------

@dataclass(frozen=True)
class LagOptions:
    """The knobs of the lag estimators (``icmix estimate``'s flags have the same names)."""

    steps: int = 1
    eta: float | None = None  # None: 1 / (M + 1), Theorem 1's step size
    max_iter: int = 1000
    tol: float = 1e-10
    alpha: float = 1.0
    gibbs_samples: int = 1000
    gibbs_burn_in: int = 200
    seed: int = 0


# name -> (what it is, lam(tokens (B, T), transition, order, options) -> (B, M)); what each is
# lives in ``icmix.families.lags`` (without torch, for the command line's help)
LAG_ESTIMATORS: dict[str, tuple[str, Callable]] = {name: (LAG_ESTIMATOR_HELP[name], fn) for name, fn in {
    "md": lambda x, pi, m, o: _est().mirror_descent(x, pi, m, o.eta if o.eta is not None else 1 / (m + 1), o.steps),
    "em": lambda x, pi, m, o: _est().em(x, pi, m, max_iter=o.max_iter, tol=o.tol),
    "em-steps": lambda x, pi, m, o: em_steps(x, pi, m, o.steps),
    "bayes-exact": lambda x, pi, m, o: _est().bayes_exact(x, pi, m, o.alpha),
    "bayes-gibbs": lambda x, pi, m, o: _est().bayes_gibbs(x, pi, m, o.alpha, o.gibbs_samples, o.gibbs_burn_in, o.seed),
}.items()}


def _est():
    from icmix.estimators import mtd

    return mtd


def em_steps(tokens, transition, order: int, steps: int, lengths=None) -> Tensor:
    """EM stopped after ``steps`` iterations from ``lam = 1/M`` (no convergence test): ``(B, M)``,
    or ``(B, P, M)`` with ``lengths`` (see ``mirror_descent``)."""
    from icmix.estimators.mtd.em import EM
    from icmix.estimators.mtd.evidence import lag_evidence, squeeze_prefixes

    algo = EM(lag_evidence(tokens, transition, order, lengths))
    state = algo.init()
    for _ in range(check_positive_int("steps", steps)):
        state = algo.step(state)
    return squeeze_prefixes(algo.readout(state), lengths)


def em_steps_predictor(steps: int):
    """EM stopped after ``steps`` iterations from ``lam = 1/M`` (``em_steps``) as a
    ``LagPredictor``, key ``em`` with ``steps``."""
    from icmix.predictors import LagPredictor

    return LagPredictor(Key("em", steps=steps), lambda x, pi, m, L: em_steps(x, pi, m, steps, L),
                        f"EM {steps}-step (from λ=1/m)")


def bayes_exact_predictor(alpha: float = 1.0):
    """The exact posterior mean of the lag weights under a Dirichlet(``alpha``) prior
    (``bayes_exact``'s dynamic programme) as a ``LagPredictor``, key ``BAYES``."""
    from icmix.predictors import LagPredictor

    return LagPredictor(BAYES, lambda x, pi, m, L: _est().bayes_exact(x, pi, m, alpha, L),
                        "Bayes (exact)")


def bayes_gibbs_predictor(alpha: float, samples: int, burn_in: int, seed: int):
    """The posterior mean of the lag weights by Gibbs sampling (``samples`` kept draws after
    ``burn_in``, seeded by ``seed + Stream.GIBBS``) as a ``LagPredictor``, key ``BAYES_GIBBS``."""
    from icmix.predictors import LagPredictor
    from icmix.random import Stream, make_generator

    return LagPredictor(BAYES_GIBBS, lambda x, pi, m, L: _est().bayes_gibbs(
        x, pi, m, alpha, samples, burn_in, make_generator(seed + Stream.GIBBS), L), "Bayes (Gibbs)")


def mle_predictor(max_iter: int = 5000, tol: float = 1e-7):
    """The maximum-likelihood lag weights by EM from ``lam = 1/M`` (at most ``max_iter`` iterations,
    tolerance ``tol``) as a ``LagPredictor``, key ``MLE``."""
    from icmix.predictors import LagPredictor

    return LagPredictor(MLE, lambda x, pi, m, L: _est().em(x, pi, m, max_iter, tol, L), "MLE (EM)")


def md_theorem1_predictor(order: int):
    """One mirror-descent step from ``lam = 1/M`` at Theorem 1's step size ``eta = 1/(order + 1)``
    as a ``LagPredictor``, key ``MD_THEOREM_1``."""
    from icmix.predictors import LagPredictor

    eta = 1.0 / (order + 1)
    return LagPredictor(MD_THEOREM_1,
                        lambda x, pi, m, L: _est().mirror_descent(x, pi, m, eta, 1, L), "MD 1-step (η=1/(m+1))")




class MTDFamily(SequenceFamily):
    """MTD (SPEC §1): one transition matrix ``pi`` shared by every lag, drawn from the task's seed, and lag
    weights drawn per sequence from Dirichlet(alpha); learned by the disentangled transformer or GPT."""

    kind = "mtd"
    spec = MTDSpec
    models = ("disentangled", "gpt")
    construction_label = ConstructedMirrorDescent.name  # the construction's line in figures
    slow_predictors = ("bayes/variant=gibbs", "em")  # (a chain, and EM to convergence, at every prefix)

    def build(self, spec: MTDSpec) -> MTDTask:
        """The ``MTDTask`` of the spec: one ``(Q, Q)`` transition matrix, rows drawn from Dirichlet(1) by ``seed``."""
        return MTDTask(spec.vocab_size, spec.order, spec.alpha, seed=spec.seed)

    def objective(self, task: MTDTask, cfg) -> MTDObjective:
        """An ``MTDObjective``: next-token prediction, judged against the exact Bayes predictive."""
        return MTDObjective(self, task, cfg)

    def sample(self, task: MTDTask, n: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` sequences of ``length`` tokens from the task, with the lag weights each was drawn
        with: ``(tokens (n, length), lam (n, order))``."""
        return task.sample(n, length, generator=generator)

    def true_predictive(self, task: MTDTask, tokens: Tensor, lam: Tensor, lengths: Sequence[int]) -> Tensor:
        """``(B, P, Q)``: the MTD predictive after each prefix length in ``lengths`` under the
        sequences' true lag weights ``lam (B, M)``."""
        from icmix.predictors import true_predictive

        return true_predictive(tokens, lam, task, lengths)

    def first_predicted(self, spec: MTDSpec) -> int:
        """``M + 1``: the shortest prefix holding one full lag history (``x_1..x_M`` → ``x_{M+1}``)
        to estimate the lag weights from."""
        return spec.order + 1

    def bayes_predictor(self, task: MTDTask):
        """The exact posterior mean of the lag weights under the task's Dirichlet prior."""
        return bayes_exact_predictor(task.alpha)

    def same_task(self, a: MTDTask, b: MTDTask) -> bool:
        """Same order and the same transition matrix (or matrices); ``alpha`` and the seed are not compared."""
        return a.order == b.order and torch.equal(a.transition, b.transition)

    def run_name(self, cfg) -> str:
        """``m{order}-T{length}-{loss}``."""
        return f"m{cfg.task.order}-T{cfg.task.length}-{cfg.loss}"

    def predictors(
        self,
        task: MTDTask,
        md_steps: Sequence[int] = DEFAULT_MD_STEPS,
        gibbs_samples: int = 1000,
        gibbs_burn_in: int = 200,
        em_max_iter: int = 5000,
        seed: int = 0,
        betas: Sequence[float] | None = None,
        include_gibbs: bool = True,
        include_construction: bool = True,
    ) -> list:
        """The estimators of the MTD paper's Figure 3: exact and Gibbs Bayes, the MLE, one-step
        MD at ``eta = 1/(M+1)`` (Theorem 1), k-step MD with tuned step sizes, and the 3-layer
        transformer construction (tuned like one-step MD, which it equals); beyond the paper,
        k-step EM (from ``lam = 1/M``, for each k of ``md_steps``) next to k-step MD."""
        from icmix.predictors import DEFAULT_BETAS, ConstructedMirrorDescent, TunedMirrorDescent

        betas = DEFAULT_BETAS if betas is None else betas
        preds = [bayes_exact_predictor(task.alpha)]
        if include_gibbs:
            preds.append(bayes_gibbs_predictor(task.alpha, gibbs_samples, gibbs_burn_in, seed))
        preds += [mle_predictor(em_max_iter), md_theorem1_predictor(task.order)]
        preds += [TunedMirrorDescent(steps=k, betas=betas) for k in md_steps]
        preds += [em_steps_predictor(k) for k in md_steps]
        if include_construction:
            preds.append(ConstructedMirrorDescent(betas=betas, name=self.construction_label))
        return preds


class MTDgFamily(MTDFamily):
    """MTDg (SPEC §3): like ``mtd`` but lag g has its own matrix ``pi_g``.  Every lag estimator
    takes the ``(M, Q, Q)`` stack, so the predictors are MTD's."""

    kind = "mtdg"
    spec = MTDgSpec
    construction_label = "Construction (3 layers + ReLU MLPs, tuned β)"

    def build(self, spec: MTDgSpec) -> MTDTask:
        """The ``MTDTask`` of the spec with ``per_lag``: ``M`` transition matrices ``(M, Q, Q)``,
        rows drawn from Dirichlet(1) by ``seed``."""
        return MTDTask(spec.vocab_size, spec.order, spec.alpha, seed=spec.seed, per_lag=True)

    def run_name(self, cfg) -> str:
        """``mtdg-m{order}-T{length}-{loss}``."""
        return f"mtdg-m{cfg.task.order}-T{cfg.task.length}-{cfg.loss}"


register_family(MTDFamily())
register_family(MTDgFamily())
