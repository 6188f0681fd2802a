"""Regression-mixture Figure 4: how close the transformer's predictions are to each algorithm.

``d_k^sq(f, g) = E[(f(P) - g(P))^2]`` at each prompt length k, with f the trained transformer
(fig2's models, sigma = 1 as in the paper; nothing is retrained when written to fig2's
``--out``) and g the posterior mean or argmin with the true components ("oracle") or with
components estimated from ``n_em`` training prompts by batch EM or by the subspace algorithm
(SA): the paper's six algorithms.  The paper's claim: the closest is the posterior mean with
oracle weights, at every k.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from icmix.estimators import regression as reg
from icmix.predictors import Key
from icmix.evaluate import d2_distances
from icmix.train import TrainedRegressor
from icmix.experiments import mlr_fig2
from icmix.experiments.figure import TableFigure
from icmix.families.mixlinreg import PM_ORACLE
from icmix.figures.curves import mean_band, prompt_length_axis
from icmix.random import Stream, stream
from icmix.experiments.claims import Claim, MissingRows, read, select, verdict

NAME = "mlr-fig4"


@dataclass(frozen=True)
class Config(mlr_fig2.Config):
    """Settings of ``mlr-fig4``: fig2's (and so its runs; every noise must be > 0), with ``n_em``, the number of
    training prompts from which batch EM and SA estimate the components.
    """

    noises: tuple[float, ...] = (1.0,)  # the noise levels sigma trained (each > 0: batch EM assumes Gaussian noise)
    n_em: int = 15_000  # fresh training-distribution prompts per run from which batch EM and SA fit the components

    def __post_init__(self):
        super().__post_init__()
        if any(noise <= 0 for noise in self.noises):
            raise ValueError("mlr-fig4 needs noise > 0 (batch EM assumes Gaussian noise)")


PRESETS = {name: Config(**{**dataclasses.asdict(cfg), "noises": (1.0,)}) for name, cfg in mlr_fig2.PRESETS.items()}


def compute(cfg: Config, out: Path, progress: bool = True) -> pd.DataFrame:
    """``d_k^sq`` between the transformer and each of the six algorithms (posterior mean and argmin with the oracle,
    EM and SA components) on ``n_eval`` fresh prompts per run, with the excess over the oracle posterior mean:
    the table of ``d2_distances`` with ``seed, n_components, noise`` in front."""
    tables = []
    for (seed, m, noise), task, path in mlr_fig2.trained_tasks(cfg, out, progress):
        train_x, train_y = task.sample(cfg.n_em, cfg.n_points, generator=stream(seed, Stream.EM_TRAINING))
        estimates = {"oracle": task.components,
                     "EM": reg.batch_em(train_x, train_y, m, noise, generator=seed).components,
                     "SA": reg.subspace_algorithm(train_x, train_y, m, noise, generator=seed).components}
        xs, ys = task.sample(cfg.n_eval, cfg.n_points, generator=mlr_fig2.eval_generator(seed))
        model = TrainedRegressor.from_run(path, "transformer")
        preds, labels = {model.key: model.predict(xs, ys)}, {model.key: model.name}
        for weights, w in estimates.items():
            for algorithm, fn in (("posterior-mean", lambda: reg.posterior_mean(xs, ys, w, noise)),
                                  ("argmin", lambda: reg.argmin(xs, ys, w))):
                key = Key(algorithm, weights.lower())
                preds[key], labels[key] = fn(), f"{algorithm.replace('-', ' ')} ({weights})"
        table = d2_distances(preds, model.key, baseline=PM_ORACLE, labels=labels)
        table.insert(0, "noise", noise)
        table.insert(0, "n_components", m)
        table.insert(0, "seed", seed)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def draw(table: pd.DataFrame, cfg: Config):
    """A panel per (m, sigma): ``d_k^sq`` from the transformer to each algorithm against k (log scale, range over
    seeds); colour by the components used, line style by algorithm."""
    settings = [(m, s) for m in cfg.components for s in cfg.noises]
    fig, axes = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.3), squeeze=False)
    colours = {"oracle": dict(color="black"), "em": dict(color="tab:orange"), "sa": dict(color="tab:green")}
    lines = {"posterior-mean": dict(lw=2), "argmin": dict(ls="--")}
    for ax, (m, noise) in zip(axes[0], settings):
        g = table[(table.n_components == m) & (table.noise == noise)]
        for _, h in g.groupby("other_key", sort=False):
            first = h.iloc[0]
            style = {**colours.get(first["other_variant"], {}), **lines.get(first["other_predictor"], {})}
            mean_band(ax, h.groupby("k")["d2"].agg(["mean", "min", "max"]), first["other"], **style)
        prompt_length_axis(ax, "d_k^sq(transformer, g)", f"m = {m}, σ = {noise}", log=True)
        ax.legend(fontsize=7)
    fig.suptitle(f"Regression mixtures, Fig. 4: distance from the transformer's predictions (d = {cfg.dim}; "
                 f"bands: range over seeds)", fontsize=11)
    fig.tight_layout()
    return fig


def report(table: pd.DataFrame, cfg: Config) -> str:
    """Which algorithm is closest at each k, and whether the oracle posterior mean is closest or
    tied (a paired 95% CI over prompts, every seed's, of the excess distance covering 0)."""
    mean = table.groupby(["n_components", "noise", "k", "other_key"], sort=False)["d2"].mean().unstack("other_key")
    closest = mean.idxmin(axis=1).rename("closest")
    # farther than the oracle PM, significantly: excess - ci > 0; nearer: excess + ci < 0
    nearer = (table.excess + table.excess_ci < 0).groupby([table.n_components, table.noise, table.k]).any()
    lines = []
    for (m, noise), g in closest.groupby(level=[0, 1]):
        ks = g.index.get_level_values("k")
        late = g[ks >= cfg.dim / 2]
        share = (late == PM_ORACLE.id).mean()
        beaten = nearer.loc[(m, noise)][lambda s: s.index >= cfg.dim / 2]
        lines.append(f"- m = {m}, σ = {noise}: the oracle posterior mean is the closest at {share:.0%} of the k >= d/2 "
                     f"({len(late)} lengths); another algorithm is significantly closer (paired 95% CI, in any seed) "
                     f"at {int(beaten.sum())} of them")
    labels = table.drop_duplicates("other_key").set_index("other_key")["other"]
    table_k = mean.rename(columns=labels).join(closest.map(labels)).reset_index()
    table_k = table_k[table_k.k.isin(sorted({1, cfg.dim // 2, cfg.dim, 2 * cfg.dim} & set(table_k.k)))]
    return ("d_k^sq between the transformer and each algorithm (mean over seeds)\n\n"
            + table_k.to_markdown(index=False, floatfmt=".4g") + "\n\n" + "\n".join(lines))


FIGURE = TableFigure(NAME, Config, PRESETS, compute, draw, report)


# --- claims (``icmix.experiments.claims``) ------------------------------------------------

def d2_ranking(c: Claim, out: Path, cfg, m: int) -> Claim:
    """The share of lengths k >= d/2 at which no other algorithm is significantly closer to the transformer than the
    oracle posterior mean (``m`` components; the excess pooled over seeds)."""
    t = select(read(out, "mlr-fig4"), f"mlr-fig4 (m = {m})", n_components=m)
    t = t[(t.k >= cfg.dim / 2) & (t.other_key != PM_ORACLE.id)]
    if t.empty:
        raise MissingRows(f"mlr-fig4 has no rows with m = {m} and k >= d/2")
    g = t.groupby(["k", "other_key"])
    excess = g["excess"].mean()
    ci = g["excess_ci"].apply(lambda s: float(np.sqrt((s**2).sum())) / len(s))
    beaten = (excess + ci < 0).groupby("k").any()
    closest = (excess > 0).groupby("k").all()
    c.mean = float(1 - beaten.mean())
    c.value = (f"{100 * c.mean:.0f}% of {len(beaten)} k (strictly closest at {100 * closest.mean():.0f}%)")
    worst = excess[excess + ci < 0]
    if len(worst):
        labels = t.drop_duplicates("other_key").set_index("other_key")["other"]
        c.note = ("beaten by " + ", ".join(sorted({labels[o] for _, o in worst.index}))
                  + f" at k = {sorted({k for k, _ in worst.index})}")
    c.verdict = verdict(not beaten.any())
    return c


for m in (5, 20):
    FIGURE.claim("MLR",
                 "The transformer is closest (d²) to the posterior mean with the true weights (m = {m})",
                 "share of k ≥ d/2 where no other of the six posterior-mean/argmin variants is significantly closer "
                 "(paired interval of the excess d², pooled over seeds); holds if 100%",
                 bounds=(0.0, 1.0),
                 trained=lambda tc, cfg, m: tc.task.n_components == m,
                 m=m)(d2_ranking)
del m  # (the loop's name, not part of the module)
