"""Evaluation: predictors x task x prefix lengths -> a tidy table with confidence intervals.

The generic loop of every sequence family (``evaluate_sequences``: mean KL(true ‖ predicted) of
the next token per predictor and prefix length), its MTD form (``evaluate_mtd``), and the
regression tables (``evaluate_regression``, ``d2_distances``).  The predictors themselves live
in ``icmix.predictors``; a finished training run is a predictor through
``icmix.train.TrainedPredictor``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from icmix.metrics import kl_divergence, mean_ci
from icmix.predictors import Key, Tunable, check_distinct_keys, true_predictive
from icmix.random import make_generator
from icmix.tasks import MTDTask

if TYPE_CHECKING:
    import pandas as pd

    from icmix.predictors import SequencePredictor


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
