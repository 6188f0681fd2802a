"""Regression-mixture Figure 3: sample efficiency at a fixed training-set size n.

For each n, a transformer is trained on a fixed set of n prompts (``task.n_train``: prompts
drawn from the set, their pairs dropped and shuffled to the curriculum's length; only the
points curriculum, Appendix C.1) and compared, on fresh prompts, with the posterior mean
plugged with components estimated from *the same* n prompts:

- by batch EM (the paper's Algorithm 1, random start);
- by the subspace algorithm (SA) of Jain et al. 2023;
- with the true components (the oracle, what no estimate can beat).

Each estimate's "oracle prediction error" ``(sigma^2 + mean_j min_w ||w_j - w||^2) / d`` (the
error of predicting with the estimate nearest to the prompt's component) is drawn as a
horizontal line.  The paper's claim: the transformer comes close to the model-specific
algorithms at the same n.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch

from icmix._checks import check_positive_int
from icmix.estimators import regression as reg
from icmix.predictors import Key, RegressionPredictor
from icmix.evaluate import evaluate_regression
from icmix.train import TrainedRegressor
from icmix.experiments import mlr_fig2
from icmix.experiments.figure import Result, TrainedFigure
from icmix.families.mixlinreg import PM_EM, PM_ORACLE, PM_SA, training_set
from icmix.figures.curves import mean_band, prompt_length_axis
from icmix.metrics import min_matching_error, oracle_prediction_error
from icmix.tasks import MixLinRegTask
from icmix.train import TrainConfig
from icmix.experiments.claims import Claim, by_key, measured, read, select, trained_key

NAME = "mlr-fig3"
ESTIMATORS = ("EM", "SA")


@dataclass(frozen=True)
class Config(mlr_fig2.Config):
    """Settings of ``mlr-fig3``: fig2's, with ``n_trains``, the sizes n of the fixed training sets (one run each, no
    dimension curriculum), and ``dropouts``, one per n (empty: ``dropout`` for all).  Every noise must be > 0.

    Where a field of ``mlr_fig2.Config`` means something else here:

    Args:
        n_points: N, (x, y) pairs per prompt of the fixed training sets and of evaluation.
        curriculum_every: steps between stages of the points curriculum (+2 points each); 0: none.
        dims_start: unused: a fixed training set allows no dimension curriculum (every run starts at ``dim``).
        steps: training steps of every run (one per seed, m, noise and n).
        dropout: the decoder's dropout probability, in [0, 1), for every n where ``dropouts`` is empty.
    """

    components: tuple[int, ...] = (5,)  # the numbers m of components: one run per seed, m, noise and n
    noises: tuple[float, ...] = (1.0,)  # the noise levels sigma trained (each > 0: batch EM assumes Gaussian noise)
    n_trains: tuple[int, ...] = (500, 1000, 2000, 4000)  # sizes n of the fixed training sets (prompts), one run each
    dropouts: tuple[float, ...] = ()  # one per n (the paper tuned it per n); empty: ``dropout`` for all

    def __post_init__(self):
        for n in self.n_trains:
            check_positive_int("n_trains", n)
        if not self.n_trains:
            raise ValueError("n_trains must be non-empty")
        if self.dropouts and len(self.dropouts) != len(self.n_trains):
            raise ValueError(f"dropouts must be empty or one per n_trains ({len(self.n_trains)}), got {self.dropouts}")
        if any(noise <= 0 for noise in self.noises):
            raise ValueError("mlr-fig3 needs noise > 0 (batch EM assumes Gaussian noise)")
        super().__post_init__()

    def runs(self) -> dict[tuple, TrainConfig]:
        """``(seed, m, sigma, n) -> TrainConfig``: a fixed set of n prompts, no dimension curriculum."""
        dropouts = self.dropouts or (self.dropout,) * len(self.n_trains)
        return {(s, m, noise, n): self.train_config(s, m, noise, dropout=p, n_train=n, dims_start=self.dim)
                for s in self.seeds for m in self.components for noise in self.noises
                for n, p in zip(self.n_trains, dropouts)}


PRESETS = {
    # fig2's quick model on 500 and 2000 prompts of 17 points, 1000 steps.
    "quick": Config(**{**dataclasses.asdict(mlr_fig2.PRESETS["quick"]), "components": (5,), "noises": (1.0,),
                       "n_trains": (500, 2000), "steps": 1000, "curriculum_every": 100}),
    # CPU: fig2's cpu model, d = 8, on 500 to 4000 prompts of 17 points, 4000 steps (8 runs in
    # about 20 minutes with 2 jobs; fig2's 20k steps are not used on these small fixed sets).
    "cpu": Config(steps=4000),
    # The long tier: the cpu recipe for twice its steps on n = 500 (the claim's), 4 seeds, each run
    # keeping its checkpoint 1000 steps before the end (the other n's would not fit the zoo's cap).
    "long": Config(steps=8000, n_trains=(500,), seeds=(0, 1, 2, 3), tail=True),
    # The paper: n = 15k..60k prompts, d = 20, 41 points, dropout tuned per n (Appendix C.1).
    "paper": Config(**{**dataclasses.asdict(mlr_fig2.PRESETS["paper"]), "components": (5,), "noises": (1.0,),
                       "n_trains": (15_000, 30_000, 45_000, 60_000), "dropouts": (0.0, 0.1, 0.0, 0.1)}),
}


def estimate(task: MixLinRegTask, n: int, cfg: Config, seed: int) -> dict[str, torch.Tensor]:
    """EM's and SA's components from the n training prompts of the run."""
    xs, ys = training_set(task, n, cfg.n_points, seed)
    return {"EM": reg.batch_em(xs, ys, task.n_components, task.noise, generator=seed).components,
            "SA": reg.subspace_algorithm(xs, ys, task.n_components, task.noise, generator=seed).components}


def plugin_key(estimator: str) -> Key:
    """The key of the posterior mean plugging in ``estimator``'s (``EM``, ``SA``) components."""
    return Key("posterior-mean", estimator.lower())


def compute(cfg: Config, out: Path, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The normalised MSE by k of every predictor, and the estimates' errors."""
    tables, estimates = [], []
    for (seed, m, noise, n), task, path in mlr_fig2.trained_tasks(cfg, out, progress):
        found = estimate(task, n, cfg, seed)
        preds = [TrainedRegressor.from_run(path, "transformer"),
                 *(RegressionPredictor(plugin_key(name), partial(reg.posterior_mean, components=w, noise=noise),
                                       f"posterior mean ({name})") for name, w in found.items()),
                 RegressionPredictor(PM_ORACLE, partial(reg.posterior_mean, components=task.components, noise=noise),
                                     "posterior mean (oracle)")]
        xs, ys = task.sample(cfg.n_eval, cfg.n_points, generator=mlr_fig2.eval_generator(seed))
        table, _ = evaluate_regression(xs, ys, preds, cfg.dim)
        keys = dict(seed=seed, n_components=m, noise=noise, n_train=n)
        tables.append(table.assign(**keys))
        estimates += [dict(**keys, estimator=name, min_matching_error=min_matching_error(w, task.components),
                           oracle_prediction_error=oracle_prediction_error(w, task.components, noise, cfg.dim))
                      for name, w in found.items()]
    return pd.concat(tables, ignore_index=True), pd.DataFrame(estimates)


def draw(table: pd.DataFrame, estimates: pd.DataFrame, cfg: Config):
    """A panel per (m, sigma, n): normalised MSE against k of the transformer and the EM, SA and oracle
    posterior-mean plug-ins (range over seeds), with each estimate's oracle prediction error as a dashed line."""
    settings = [(m, s, n) for m in cfg.components for s in cfg.noises for n in cfg.n_trains]
    fig, axes = plt.subplots(1, len(settings), figsize=(4.6 * len(settings), 4), squeeze=False, sharey=True)
    colours = {PM_EM.id: "tab:orange", PM_SA.id: "tab:green", PM_ORACLE.id: "black"}
    for ax, (m, noise, n) in zip(axes[0], settings):
        at = (table.n_components == m) & (table.noise == noise) & (table.n_train == n)
        for key, g in table[at].groupby("key", sort=False):
            trained = g["predictor"].iloc[0] == "trained"
            mean_band(ax, g.groupby("k")["nmse"].agg(["mean", "min", "max"]), g["label"].iloc[0],
                      color="tab:red" if trained else colours.get(key), lw=2.5 if trained else 1.5)
        e = estimates[(estimates.n_components == m) & (estimates.noise == noise) & (estimates.n_train == n)]
        for name in ESTIMATORS:
            level = e[e.estimator == name]["oracle_prediction_error"].mean()
            ax.axhline(level, ls="--", lw=1, color=colours[plugin_key(name).id],
                       label=f"oracle prediction error ({name})")
        ax.set_ylim(0, 1.2)
        prompt_length_axis(ax, "normalised MSE", f"n = {n} prompts (m = {m}, σ = {noise})")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"Regression mixtures, Fig. 3: a fixed training set of n prompts, the transformer vs EM and SA "
                 f"plug-ins (d = {cfg.dim}; bands: range over seeds)", fontsize=11)
    fig.tight_layout()
    return fig


def report(table: pd.DataFrame, estimates: pd.DataFrame, cfg: Config) -> str:
    """Markdown: the mean normalised MSE at k = d/2, d and 2d (those below ``n_points``) per n and predictor, the
    estimates' errors, and the transformer over the best plug-in at the largest k."""
    ks = sorted({cfg.dim // 2, cfg.dim, 2 * cfg.dim} & set(range(cfg.n_points)))
    mean = (table[table.k.isin(ks)].groupby(["n_components", "noise", "n_train", "key", "k"], sort=False)["nmse"]
            .mean().unstack("k").reset_index())
    est = (estimates.groupby(["n_components", "noise", "n_train", "estimator"], sort=False)
           [["min_matching_error", "oracle_prediction_error"]].mean().reset_index())
    last = mean.set_index(["n_components", "noise", "n_train", "key"])[ks[-1]].unstack("key")
    trained = table.loc[table.predictor == "trained", "key"].iloc[0]
    ratio = (last[trained] / last[[PM_EM.id, PM_SA.id]].min(axis=1)).rename(
        f"transformer / best plug-in at k = {ks[-1]}").reset_index().astype({"n_components": str, "n_train": str})
    mean.insert(3, "predictor", mean.pop("key").map(table.drop_duplicates("key").set_index("key")["label"]))
    return ("Normalised MSE on fresh prompts (mean over seeds)\n\n" + mean.to_markdown(index=False, floatfmt=".4f")
            + "\n\nThe estimates from the n training prompts (mean over seeds)\n\n"
            + est.to_markdown(index=False, floatfmt=".4f") + "\n\n" + ratio.to_markdown(index=False, floatfmt=".3f"))


class Fig3(TrainedFigure):
    """``mlr-fig3``: transformers trained on n fixed prompts against posterior-mean plug-ins estimated from the same
    prompts."""

    name, Config, presets = NAME, Config, PRESETS

    def compute(self, cfg: Config, out: Path, progress: bool = True) -> Result:
        """Normalised MSE by k of the transformer and the plug-ins, per run; the EM and SA estimates' errors as the
        ``estimates`` extra table."""
        table, estimates = compute(cfg, out, progress)
        return Result(table, {"estimates": estimates})

    def draw(self, result: Result, cfg: Config):
        """Normalised MSE against k per n, with the estimates' oracle prediction errors as lines."""
        return draw(result.table, result.extra["estimates"], cfg)

    def report(self, result: Result, cfg: Config) -> str:
        """The normalised MSE per n and predictor, the estimates' errors and the transformer's ratio to the best
        plug-in."""
        return report(result.table, result.extra["estimates"], cfg)


FIGURE = Fig3()


# --- claims (``icmix.experiments.claims``) ------------------------------------------------

@FIGURE.claim("MLR",
              "Trained on a fixed set of n prompts, the transformer is as sample-efficient as EM / SA plug-ins",
              "NMSE(transformer) / NMSE(best of the EM and SA posterior-mean plug-ins fitted on the same prompts) "
              "at k = 2d, smallest n = {n}; holds if ≤ 1.2",
              bounds=(0.0, math.inf),
              trained=lambda tc, cfg: tc.task.n_train == min(cfg.n_trains))
def sample_efficiency(c: Claim, out: Path, cfg) -> Claim:
    """NMSE of the transformer over the best of the EM and SA plug-ins at k = 2d and the smallest n, per seed; the
    mean ratio at every n in the note."""
    k = 2 * cfg.dim
    n = min(cfg.n_trains)
    all_n = read(out, "mlr-fig3")
    all_n = select(all_n, "mlr-fig3", k=min(k, all_n.k.max()))
    trained = trained_key(all_n, "mlr-fig3")
    t = select(all_n, f"mlr-fig3 (n = {n})", n_train=n)
    at = by_key(t, "seed", "nmse", [trained, PM_EM, PM_SA], "mlr-fig3")
    best = at[[PM_EM.id, PM_SA.id]].min(axis=1)
    measured(c, at[trained] / best, 1.2, "<=")
    by_n = by_key(all_n, ["n_train", "seed"], "nmse", [trained, PM_EM, PM_SA], "mlr-fig3")
    ratio = (by_n[trained] / by_n[[PM_EM.id, PM_SA.id]].min(axis=1)).groupby("n_train").mean()
    c.note = "by n: " + ", ".join(f"{n_}: {r:.2f}" for n_, r in ratio.items())
    return c
