"""Evaluation: predictors x task x prefix lengths -> a tidy table with confidence intervals.

Every predictor has a stable ``key`` (``Key``: what it is, e.g. ``md``, 2 steps, tuned η) and a
display ``name`` (its label, for the reader only).  Tables carry the key's fields as columns
(``key, predictor, variant, steps, tuning, model_kind, depth, loss``); figures and claims select
by them, never by the label.

An MTD *predictor* answers one call, ``predict(tokens (B, T), task, lengths) -> (B, P, Q)``:
the next-token distribution after each prefix ``tokens[:, :L]``, using nothing past it
(``SequencePredictor``); a tunable one (``Tunable``) also has ``tune``.
Estimators of the lag weights become predictors through ``LagPredictor``; mirror descent
with a step size tuned per length is ``TunedMirrorDescent``, the hand-built transformer is
``ConstructedMirrorDescent`` (tuned the same way) and a finished training run is
``TrainedPredictor``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch
from torch import Tensor

from icmix.estimators import mtd as est
from icmix.metrics import kl_divergence, mean_ci
from icmix.random import make_generator
from icmix.tasks import MTDTask

if TYPE_CHECKING:
    import pandas as pd

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

    def predict(self, tokens: Tensor, task, lengths: Sequence[int]) -> Tensor: ...


@runtime_checkable
class Tunable(Protocol):
    """A predictor with a free parameter chosen per length on a separate tuning batch:
    ``tune(tokens (B, T), truth, task, lengths)`` before ``predict``; ``chosen_beta`` holds
    the choice per length (reported in the table)."""

    chosen_beta: dict[int, float]

    def tune(self, tokens: Tensor, truth: Tensor, task, lengths: Sequence[int]) -> None: ...


@dataclass
class LagPredictor:
    """A predictor that plugs an estimate of the lag weights into the MTD predictive."""

    key: Key
    estimate: LagEstimate
    name: str = ""

    def __post_init__(self):
        self.name = self.name or self.key.id

    def predict(self, tokens: Tensor, task: MTDTask, lengths: Sequence[int]) -> Tensor:
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
        raise NotImplementedError

    def tune(self, tokens: Tensor, lam_true: Tensor, task: MTDTask, lengths: Sequence[int]) -> None:
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
            scores.append(-p_hat.gather(-1, targets[..., None]).squeeze(-1).clamp_min(1e-300).log().mean(0))
        self._choose(torch.stack(scores), lengths)

    def _choose(self, scores: Tensor, lengths: list[int]) -> None:
        """``scores (betas, P)``, lower is better: the best ``beta`` per length (or one for all)."""
        if getattr(self, "shared", False):  # one beta for every length: the best mean score over lengths
            best = scores.mean(1).argmin().expand(len(lengths))
        else:
            best = scores.argmin(0)
        self.chosen_beta = {L: float(self.betas[i]) for L, i in zip(lengths, best.tolist())}

    def predict(self, tokens: Tensor, task: MTDTask, lengths: Sequence[int]) -> Tensor:
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
        return Key("md", steps=self.steps, tuning="shared" if self.shared else "tuned")

    def predict_beta(self, tokens: Tensor, task: MTDTask, lengths: Sequence[int], beta: Tensor) -> Tensor:
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


def evaluate_mtd(
    task: MTDTask,
    predictors: Sequence,
    lengths: Sequence[int],
    n_sequences: int,
    n_tune: int = 500,
    seed: int = 0,
    progress: bool = True,
) -> pd.DataFrame:
    """Mean KL(true || predicted) of the next token, per predictor and prefix length.

    One batch of ``n_sequences`` sequences of length ``max(lengths)`` is evaluated at every
    prefix length; tunable predictors are tuned on a separate batch of ``n_tune``.

    Returns a tidy table with columns ``estimator, length, kl_mean, kl_sem, kl_ci, n, beta, eta``
    (``kl_ci`` is the 95% Student-t half-width over sequences; ``estimator`` is the display
    label), then the predictor's key columns (``Key.columns``) and ``family``.
    """
    table = evaluate_sequences(task, predictors, lengths, n_sequences, n_tune, seed, progress,
                               sample=lambda n, t, gen: task.sample(n, t, generator=gen),
                               truth=lambda tokens, lam, L: true_predictive(tokens, lam, task, L))
    table.insert(table.columns.get_loc("n") + 1, "beta", table.pop("beta"))
    table.insert(table.columns.get_loc("beta") + 1, "eta", table["beta"] / (task.order * (table["length"] - task.order)))
    table["family"] = "mtdg" if task.per_lag else "mtd"
    return table


def evaluate_sequences(
    task,
    predictors: Sequence[SequencePredictor],
    lengths: Sequence[int],
    n_sequences: int,
    n_tune: int,
    seed: int,
    progress: bool,
    sample: Callable[[int, int, torch.Generator], tuple[Tensor, Tensor]],
    truth: Callable[[Tensor, Tensor, list[int]], Tensor],
) -> pd.DataFrame:
    """Mean KL(true || predicted) of the next token for any sequence task (the engine of
    ``evaluate_mtd``; a task family's own evaluation calls it with its sampler and truth).

    ``sample(n, T, generator) -> (tokens (n, T), latent)`` draws sequences with whatever
    ``truth(tokens, latent, lengths) -> (B, P, Q)`` needs for the true next-token
    distribution after each prefix.  Columns: ``estimator, length, kl_mean, kl_sem, kl_ci, n,
    beta`` and the key columns."""
    import pandas as pd

    check_distinct_keys(predictors)
    lengths = sorted(int(L) for L in lengths)
    gen = make_generator(seed)
    tokens, latent = sample(n_sequences, max(lengths), gen)
    p_true = truth(tokens, latent, lengths)
    tune_set = None
    rows = []
    it = predictors
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(predictors, desc=f"evaluate (seed {seed})", leave=False)
    for pred in it:
        if progress:
            it.set_postfix_str(pred.name)
        beta = {}
        if isinstance(pred, Tunable):
            if tune_set is None:
                tune_set = sample(n_tune, max(lengths), gen)
            pred.tune(tune_set[0], tune_set[1], task, lengths)
            beta = pred.chosen_beta
        kl = kl_divergence(p_true, pred.predict(tokens, task, lengths))  # (B, P)
        for j, L in enumerate(lengths):
            mean, sem, ci = mean_ci(kl[:, j].numpy())
            rows.append(dict(estimator=pred.name, length=L, kl_mean=mean, kl_sem=sem, kl_ci=ci, n=n_sequences,
                             beta=beta.get(L, np.nan), **pred.key.columns()))
    return pd.DataFrame(rows)


@dataclass
class TrainedPredictor:
    """A trained model (a finished run directory) as a sequence predictor.

    Its output at position ``L - 1`` is the prediction after the prefix of length ``L``,
    mapped to a distribution as its training loss implies (see ``train.objectives``).  It
    refuses a task other than the one it was trained on (its family's ``same_task``).
    """

    name: str
    model: torch.nn.Module
    loss: str
    task: object
    family: object
    batch_size: int = 256
    key: Key = Key("trained")

    @classmethod
    def from_run(cls, run_dir, name: str | None = None, key: Key | None = None) -> TrainedPredictor:
        """The final model of a finished run; its key is the model's kind, depth and loss
        (``trained_key``) unless ``key`` is given (two runs of one model kind in one table)."""
        from pathlib import Path

        from icmix.train import build_task, load_run

        cfg, model = load_run(run_dir)
        model.eval()
        return cls(name or f"trained {cfg.model.kind} ({Path(run_dir).name})", model, cfg.loss, build_task(cfg),
                   cfg.family, key=key or trained_key(cfg))

    def outputs(self, tokens: Tensor) -> Tensor:
        """Raw model outputs ``(B, T, Q)``, in batches, without gradients."""
        param = next(self.model.parameters())
        chunks = []
        with torch.no_grad():
            for start in range(0, tokens.shape[0], self.batch_size):
                chunks.append(self.model(tokens[start : start + self.batch_size].to(param.device)).double().cpu())
        return torch.cat(chunks)

    def predict(self, tokens: Tensor, task, lengths: Sequence[int]) -> Tensor:
        from icmix.train.objectives import to_distribution

        if not self.family.same_task(task, self.task):
            raise ValueError(f"{self.name} was trained on a different task ({self.task!r}), not {task!r}")
        lengths = list(lengths)
        out = self.outputs(tokens[:, : max(lengths)])
        return to_distribution(out[:, torch.tensor(lengths) - 1], self.loss)


def check_distinct_keys(predictors) -> None:
    """Refuse two predictors with one key: their rows would merge in every table and figure
    (give one a ``variant``, e.g. ``TrainedPredictor.from_run(run, key=...)``)."""
    seen: dict[Key, str] = {}
    for pred in predictors:
        if pred.key in seen:
            raise ValueError(f"predictors {seen[pred.key]!r} and {pred.name!r} share the key {pred.key.id!r}; "
                             "give each predictor its own key")
        seen[pred.key] = pred.name


def trained_key(cfg) -> Key:
    """The key of a trained model: its kind, depth and loss."""
    return Key("trained", model_kind=cfg.model.kind, depth=getattr(cfg.model_config(), "n_layers", None), loss=cfg.loss)


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
        return self.fn(xs, ys)


@dataclass
class TrainedRegressor:
    """A finished regression training run as a predictor (float32 model, float64 output)."""

    name: str
    model: torch.nn.Module
    batch_size: int = 512
    key: Key = Key("trained")

    @classmethod
    def from_run(cls, run_dir, name: str | None = None, key: Key | None = None) -> TrainedRegressor:
        from pathlib import Path

        from icmix.models import RegressionGPT
        from icmix.train import load_run

        cfg, model = load_run(run_dir)
        if not isinstance(model, RegressionGPT):
            raise ValueError(f"{run_dir} holds a {cfg.model.kind!r} model, not a regression transformer")
        return cls(name or f"transformer ({Path(run_dir).name})", model.eval(), key=key or trained_key(cfg))

    def predict(self, xs: Tensor, ys: Tensor) -> Tensor:
        param = next(self.model.parameters())
        out = []
        with torch.no_grad():
            for s in range(0, xs.shape[0], self.batch_size):
                x, y = xs[s : s + self.batch_size].to(param.device), ys[s : s + self.batch_size].to(param.device)
                out.append(self.model(x, y).double().cpu())
        return torch.cat(out)


def evaluate_regression(xs: Tensor, ys: Tensor, predictors: Sequence, dim: int) -> tuple[pd.DataFrame, dict]:
    """Normalised MSE (MSE / d) of each predictor at every prompt length ``k`` (pairs seen,
    ``k = 0..N-1``) on the prompts ``xs, ys``, with a 95% CI over prompts.

    Returns the tidy table (``label, k, nmse, nmse_sem, nmse_ci, n``, the key columns and
    ``family``; ``label`` is the display label) and the predictions ``{key: (B, N)}`` (for
    ``d2_distances``).
    """
    import pandas as pd

    check_distinct_keys(predictors)
    preds, rows = {}, []
    for pred in predictors:
        p = pred.predict(xs, ys).double()
        preds[pred.key] = p
        err = ((p - ys.double()) ** 2 / dim).numpy()
        for k in range(xs.shape[1]):
            mean, sem, ci = mean_ci(err[:, k])
            rows.append(dict(label=pred.name, k=k, nmse=mean, nmse_sem=sem, nmse_ci=ci, n=xs.shape[0],
                             **pred.key.columns(), family="mixlinreg"))
    return pd.DataFrame(rows), preds


def d2_distances(preds: dict[Key, Tensor], reference: Key, baseline: Key | None = None,
                 labels: dict[Key, str] | None = None) -> pd.DataFrame:
    """``d_k^sq(f, g) = E[(f(P) - g(P))^2]`` between the predictor ``reference`` and every other,
    at each prompt length k (the regression paper's Fig. 4): ``other, k, d2, d2_ci`` (``other``:
    the display label from ``labels``), with the other's key as ``other_key, other_predictor,
    other_variant``.

    With ``baseline`` (one of the others) also ``excess, excess_ci``: ``d_k^sq(f, g) -
    d_k^sq(f, baseline)`` paired over the same prompts, with its 95% CI, so "g is farther
    from f than the baseline" can be told from a tie."""
    import pandas as pd

    labels = labels or {}
    f = preds[reference]
    base = None if baseline is None else ((f - preds[baseline]) ** 2).numpy()
    rows = []
    for key, g in preds.items():
        if key == reference:
            continue
        sq = ((f - g) ** 2).numpy()
        for k in range(sq.shape[1]):
            mean, _, ci = mean_ci(sq[:, k])
            row = dict(other=labels.get(key, key.id), k=k, d2=mean, d2_ci=ci)
            if base is not None:
                row["excess"], _, row["excess_ci"] = mean_ci(sq[:, k] - base[:, k])
            row.update(other_key=key.id, other_predictor=key.predictor, other_variant=key.variant)
            rows.append(row)
    return pd.DataFrame(rows)
