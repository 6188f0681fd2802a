"""Predictors: what every evaluation, figure and claim compares, and the keys they join on.

Every predictor has a stable ``key`` (``Key``: what it is, e.g. ``md``, 2 steps, tuned η) and a
display ``name`` (its label, for the reader only).  Tables carry the key's fields as columns
(``key, predictor, variant, steps, tuning, model_kind, depth, loss``); figures and claims select
by them, never by the label.

A sequence *predictor* answers one call, ``predict(tokens (B, T), task, lengths) -> (B, P, Q)``:
the next-token distribution after each prefix ``tokens[:, :L]``, using nothing past it
(``SequencePredictor``); a tunable one (``Tunable``) also has ``tune``.
Estimators of the lag weights become MTD predictors through ``LagPredictor``; mirror descent
with a step size tuned per length is ``TunedMirrorDescent`` and the hand-built transformer
``ConstructedMirrorDescent`` (tuned the same way).  A regression predictor answers
``predict(xs (B, N, d), ys (B, N)) -> (B, N)`` (``RegressionPredictor``).  A finished training
run is a predictor through ``icmix.train.TrainedPredictor`` / ``TrainedRegressor``.

This module sits low in the layers: it imports only tasks, estimators, constructions and the
numeric helpers, so task families, evaluation and training can all build on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from icmix.estimators import mtd as est
from icmix.metrics import cross_entropy, kl_divergence
from icmix.tasks import MTDTask

# (tokens, transition, order, lengths) -> lam (B, P, M)
LagEstimate = Callable[[Tensor, Tensor, int, list[int]], Tensor]

DEFAULT_BETAS = tuple(float(b) for b in np.geomspace(0.05, 500.0, 41))  # ratio 1.26 between points


@dataclass(frozen=True)
class Key:
    """A predictor's stable identity, separate from its display label.

    ``predictor``: what it is (``bayes``, ``em``, ``md``, ``construction``, ``trained``,
    ``posterior-mean``, ``ols``, ...); ``variant``: which version (``exact``/``gibbs`` Bayes,
    ``oracle``/``em``/``sa`` plug-in weights); ``steps``: iterations of an iterative method;
    ``tuning``: how its step size is set (``tuned`` per length, ``shared`` over lengths,
    ``theorem-1``); ``model_kind``, ``depth``, ``loss``: of a trained model.
    """

    predictor: str
    variant: str | None = None
    steps: int | None = None
    tuning: str | None = None
    model_kind: str | None = None
    depth: int | None = None
    loss: str | None = None

    @property
    def id(self) -> str:
        """The key as one string (``md/steps=2/tuning=tuned``): the ``key`` column tables join on."""
        parts = [f"{f}={v}" for f, v in self.fields().items() if f != "predictor" and v is not None]
        return "/".join([self.predictor, *parts])

    def fields(self) -> dict:
        """Every field of the key by name, in ``KEY_FIELDS`` order, ``None`` where unset."""
        return {f: getattr(self, f) for f in KEY_FIELDS}

    def columns(self) -> dict:
        """The table columns of this key: ``key`` and one per field."""
        return {"key": self.id, **self.fields()}


KEY_FIELDS = ("predictor", "variant", "steps", "tuning", "model_kind", "depth", "loss")


@runtime_checkable
class SequencePredictor(Protocol):
    """The prefix contract of a sequence task (SPEC §1): ``predict(tokens (B, T), task, lengths
    (P,)) -> (B, P, Q)``, the next-token distribution after each prefix ``tokens[:, :L]``."""

    key: Key
    name: str

    def predict(self, tokens: Tensor, task, lengths: Sequence[int]) -> Tensor:
        """``(B, P, Q)``: the next-token distribution after each prefix ``tokens[:, :L]``, ``L`` in ``lengths``."""
        ...


@runtime_checkable
class Tunable(Protocol):
    """A predictor with a free parameter chosen per length on a separate tuning batch:
    ``tune(tokens (B, T), truth, task, lengths)`` before ``predict``; ``chosen_beta`` holds
    the choice per length (reported in the table)."""

    chosen_beta: dict[int, float]

    def tune(self, tokens: Tensor, truth: Tensor, task, lengths: Sequence[int]) -> None:
        """Choose the free parameter per length in ``lengths`` on the tuning batch
        ``tokens (B, T)``, with its ``truth`` (the sequences' latent)."""
        ...


@dataclass
class LagPredictor:
    """A predictor that plugs an estimate of the lag weights into the MTD predictive."""

    key: Key
    estimate: LagEstimate
    name: str = ""

    def __post_init__(self):
        self.name = self.name or self.key.id

    def predict(self, tokens: Tensor, task: MTDTask, lengths: Sequence[int]) -> Tensor:
        """The MTD predictive ``(B, P, Q)`` with the lag weights ``estimate`` gives from each prefix
        ``(B, P, M)`` plugged in."""
        lam = self.estimate(tokens, task.transition, task.order, list(lengths))
        return est.predictive(tokens, task.transition, lam, list(lengths))


class TunedBeta:
    """A predictor family indexed by an inverse temperature ``beta``, tuned per length.

    Subclasses implement ``predict_beta(tokens, task, lengths, beta (P,)) -> (B, P, Q)``.
    ``tune`` picks, for each length, the ``beta`` with the lowest mean KL on a *separate*
    tuning batch, as the paper grid-searches the step size; ``predict`` then uses it.  With
    ``shared = True`` it picks one ``beta`` for every length (the lowest KL averaged over the
    lengths), what a single set of weights would use if it could not adapt to the length.
    """

    key: Key
    name: str
    betas: Sequence[float]
    chosen_beta: dict[int, float]

    def predict_beta(self, tokens: Tensor, task: MTDTask, lengths: Sequence[int], beta: Tensor) -> Tensor:
        """``(B, P, Q)``: the prediction after each prefix ``lengths[p]`` with ``beta[p]``; subclasses implement it."""
        raise NotImplementedError

    def tune(self, tokens: Tensor, lam_true: Tensor, task: MTDTask, lengths: Sequence[int]) -> None:
        """Choose ``beta`` per length (one for all with ``shared``): the lowest mean KL(true ‖ predicted)
        on the tuning batch ``tokens (B, T)`` with the true lag weights ``lam_true (B, M)``."""
        lengths = list(lengths)
        p_true = true_predictive(tokens, lam_true, task, lengths)
        scores = []
        for beta in self.betas:
            p_hat = self.predict_beta(tokens, task, lengths, torch.full((len(lengths),), float(beta), dtype=torch.float64))
            scores.append(kl_divergence(p_true, p_hat).mean(0))  # (P,)
        self._choose(torch.stack(scores), lengths)

    def tune_observed(self, tokens: Tensor, targets: Tensor, task, lengths: Sequence[int]) -> None:
        """Tune on data with no known truth (real text): the ``beta`` with the lowest mean
        cross-entropy of the observed next tokens ``targets (B, P)`` after each prefix."""
        lengths = list(lengths)
        scores = []
        for beta in self.betas:
            p_hat = self.predict_beta(tokens, task, lengths, torch.full((len(lengths),), float(beta), dtype=torch.float64))
            scores.append(cross_entropy(p_hat, targets).mean(0))
        self._choose(torch.stack(scores), lengths)

    def _choose(self, scores: Tensor, lengths: list[int]) -> None:
        """``scores (betas, P)``, lower is better: the best ``beta`` per length (or one for all)."""
        if getattr(self, "shared", False):  # one beta for every length: the best mean score over lengths
            best = scores.mean(1).argmin().expand(len(lengths))
        else:
            best = scores.argmin(0)
        self.chosen_beta = {L: float(self.betas[i]) for L, i in zip(lengths, best.tolist())}

    def predict(self, tokens: Tensor, task: MTDTask, lengths: Sequence[int]) -> Tensor:
        """``(B, P, Q)`` with each length's ``chosen_beta``; ``ValueError`` for a length not tuned."""
        missing = [L for L in lengths if L not in self.chosen_beta]
        if missing:
            raise ValueError(f"{self.name}: not tuned for lengths {missing}; call tune() first")
        beta = torch.tensor([self.chosen_beta[L] for L in lengths], dtype=torch.float64)
        return self.predict_beta(tokens, task, list(lengths), beta)


@dataclass
class TunedMirrorDescent(TunedBeta):
    """k-step mirror descent with ``eta = beta / (M * N)`` (``N = L - M`` transitions), the
    scale of Theorem 2 and of the transformer construction, ``beta`` tuned per length."""

    steps: int = 1
    betas: Sequence[float] = DEFAULT_BETAS
    name: str = ""
    chosen_beta: dict[int, float] = field(default_factory=dict)
    shared: bool = False

    def __post_init__(self):
        if not self.name:
            self.name = f"MD {self.steps}-step ({'one β for all lengths' if self.shared else 'tuned η'})"

    @property
    def key(self) -> Key:
        """``md`` with ``steps``, tuning ``shared`` or ``tuned``."""
        return Key("md", steps=self.steps, tuning="shared" if self.shared else "tuned")

    def predict_beta(self, tokens: Tensor, task: MTDTask, lengths: Sequence[int], beta: Tensor) -> Tensor:
        """k-step MD from ``lam = 1/M`` at ``eta = beta / (M (L - M))`` for each prefix length
        ``L``, plugged into the MTD predictive: ``(B, P, Q)``."""
        n = torch.tensor(lengths, dtype=torch.float64) - task.order
        lam = est.mirror_descent(tokens, task.transition, task.order, beta / (task.order * n), self.steps, lengths)
        return est.predictive(tokens, task.transition, lam, lengths)


@dataclass
class ConstructedMirrorDescent(TunedBeta):
    """The hand-built one-step-MD transformer (``icmix.construct.md_transformer``: the paper's
    3 layers, or with ReLU MLPs for an MTDg task), with ``beta`` tuned per length.

    One model is built per distinct ``beta``; its output at position ``L - 1`` is the
    prediction after the prefix of length ``L``.  Runs in batches of ``batch_size``.
    """

    betas: Sequence[float] = DEFAULT_BETAS
    name: str = "Construction (3-layer, tuned β)"
    batch_size: int = 256
    chosen_beta: dict[int, float] = field(default_factory=dict)
    key = Key("construction", steps=1, tuning="tuned")

    def predict_beta(self, tokens: Tensor, task: MTDTask, lengths: Sequence[int], beta: Tensor) -> Tensor:
        """``(B, P, Q)`` float64: the construction's output at position ``L - 1`` for each length ``L``, one
        model per distinct ``beta``, run on ``tokens[:, :max(lengths)]`` in batches of ``batch_size``."""
        from icmix.construct import md_transformer

        t = max(lengths)
        pos = torch.tensor(lengths) - 1
        out = torch.empty(tokens.shape[0], len(lengths), task.vocab_size, dtype=torch.float64)
        for b in torch.unique(beta).tolist():
            cols = (beta == b).nonzero().squeeze(1)
            model = md_transformer(task.transition, task.order, b, max_length=t)
            with torch.no_grad():
                for start in range(0, tokens.shape[0], self.batch_size):
                    rows = slice(start, start + self.batch_size)
                    out[rows, cols] = model(tokens[rows, :t])[:, pos[cols]]
        return out


def true_predictive(tokens: Tensor, lam_true: Tensor, task: MTDTask, lengths: Sequence[int]) -> Tensor:
    """``(B, P, Q)`` next-token distributions under the sequences' true lag weights."""
    lam = lam_true[:, None, :].expand(-1, len(lengths), -1)
    return est.predictive(tokens, task.transition, lam, list(lengths))


def check_distinct_keys(predictors) -> None:
    """Refuse two predictors with one key: their rows would merge in every table and figure
    (give one a ``variant``, e.g. ``TrainedPredictor.from_run(run, key=...)``)."""
    seen: dict[Key, str] = {}
    for pred in predictors:
        if pred.key in seen:
            raise ValueError(f"predictors {seen[pred.key]!r} and {pred.name!r} share the key {pred.key.id!r}; "
                             "give each predictor its own key")
        seen[pred.key] = pred.name

# ---- regression mixtures -----------------------------------------------------------------
# A regression predictor answers ``predict(xs (B, N, d), ys (B, N)) -> (B, N)`` under the
# prefix contract of SPEC §2: column j uses the pairs before j and ``xs[:, j]`` only.


@dataclass
class RegressionPredictor:
    """A function of the prompt as a predictor, e.g. ``RegressionPredictor(Key("ols"), reg.ols,
    "OLS")`` or, with the task's components, ``RegressionPredictor(Key("posterior-mean",
    "oracle"), partial(reg.posterior_mean, components=w, noise=s), "posterior mean (oracle)")``."""

    key: Key
    fn: Callable[[Tensor, Tensor], Tensor]
    name: str = ""

    def __post_init__(self):
        self.name = self.name or self.key.id

    def predict(self, xs: Tensor, ys: Tensor) -> Tensor:
        """``fn(xs, ys)``: ``(B, N)``, column j predicting ``ys[:, j]`` from the pairs before j and ``xs[:, j]``."""
        return self.fn(xs, ys)
