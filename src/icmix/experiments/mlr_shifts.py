"""Regression-mixture Figures 5-9: the transformer and the posterior mean under distribution shift.

The models are fig2's (the same ``Config`` fields, so the same runs: write to fig2's ``--out``
and nothing is retrained).  Prompts are drawn from shifted versions of each task (SPEC §2):

- covariate scaling: ``x ~ N(0, kappa^2 I)``, query included (Figs 5 and 7);
- weight scaling: ``alpha w_j`` in place of ``w_j`` (Figs 6 left and 8);
- additive weight shift: ``w_j + eps / sqrt(d) 1``, a shift of norm eps (Figs 6 right and 9).

Figs 5-6 show the trained transformer, Figs 7-9 the posterior mean with the task's
(unshifted) components and noise level: what the Bayes-optimal rule of the training
distribution does on the shifted one.
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
import numpy as np
import pandas as pd

from icmix.estimators import regression as reg
from icmix.predictors import RegressionPredictor
from icmix.evaluate import evaluate_regression
from icmix.train import TrainedRegressor
from icmix.experiments import mlr_fig2
from icmix.experiments.figure import Result, TrainedFigure
from icmix.families.mixlinreg import PM_ORACLE
from icmix.figures.curves import mean_band, prompt_length_axis
from icmix.experiments.claims import Claim, by_key, fmt, judge, read, seeds, select, trained_key

SHIFTS = {  # name -> (sample() keyword, label)
    "covariate scale": ("covariate_scale", "κ"),
    "weight scale": ("weight_scale", "α"),
    "weight shift": ("weight_shift", "ε"),
}


@dataclass(frozen=True)
class Config(mlr_fig2.Config):
    """Settings of ``mlr-fig5`` to ``mlr-fig9``: fig2's (and so its runs), with the shift values evaluated:
    ``kappas`` (covariate scale), ``alphas`` (weight scale) and ``epsilons`` (norm of the additive weight shift).

    Where a field of ``mlr_fig2.Config`` means something else here:

    Args:
        n_eval: prompts of ``n_points`` pairs per run and shift value (at no shift, fig2's evaluation prompts).
    """

    kappas: tuple[float, ...] = (1 / 3, 0.5, 1.0, 2.0, 3.0)  # covariate scales kappa: x ~ N(0, kappa^2 I) (figs 5, 7)
    alphas: tuple[float, ...] = (1 / 3, 0.5, 1.0, 2.0, 3.0)  # weight scales alpha: alpha w_j for w_j (figs 6, 8)
    epsilons: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # weight shifts eps: w_j + eps / sqrt(d) 1 (figs 6, 9)

    def values(self, shift: str) -> tuple[float, ...]:
        """The values evaluated for ``shift``, a key of ``SHIFTS``."""
        return {"covariate scale": self.kappas, "weight scale": self.alphas, "weight shift": self.epsilons}[shift]


PRESETS = {name: Config(**dataclasses.asdict(cfg)) for name, cfg in mlr_fig2.PRESETS.items()}

# Registry name -> (predictor shown: the trained model or the oracle posterior mean, shifts shown), as in the paper.
FIGURES = {
    "mlr-fig5": ("trained", ("covariate scale",)),
    "mlr-fig6": ("trained", ("weight scale", "weight shift")),
    "mlr-fig7": ("posterior-mean", ("covariate scale",)),
    "mlr-fig8": ("posterior-mean", ("weight scale",)),
    "mlr-fig9": ("posterior-mean", ("weight shift",)),
}
LABELS = {"trained": "transformer", "posterior-mean": "posterior mean (oracle)"}


def compute(cfg: Config, out: Path, predictor: str, shifts: tuple[str, ...], progress: bool = True) -> pd.DataFrame:
    """Normalised MSE by k of ``predictor`` on prompts under each shift and value:
    columns ``seed, n_components, noise, shift, value, label, k, nmse, ...`` and the key columns."""
    tables = []
    for (seed, m, noise), task, path in mlr_fig2.trained_tasks(cfg, out, progress):
        if predictor == "trained":
            pred = TrainedRegressor.from_run(path, LABELS[predictor])
        else:
            pred = RegressionPredictor(PM_ORACLE, partial(reg.posterior_mean, components=task.components, noise=noise),
                                       LABELS[predictor])
        for shift in shifts:
            keyword, _ = SHIFTS[shift]
            for value in cfg.values(shift):
                gen = mlr_fig2.eval_generator(seed)  # fig2's prompts when unshifted
                xs, ys = task.sample(cfg.n_eval, cfg.n_points, gen, **{keyword: value})
                table, _ = evaluate_regression(xs, ys, [pred], cfg.dim)
                for col, v in (("value", value), ("shift", shift), ("noise", noise), ("n_components", m), ("seed", seed)):
                    table.insert(0, col, v)
                tables.append(table)
    return pd.concat(tables, ignore_index=True)


def draw(table: pd.DataFrame, cfg: Config, name: str, predictor: str, shifts: tuple[str, ...]):
    """A panel per (m, sigma) row and shift column: normalised MSE of ``predictor`` against k (log scale) at each
    value of the shift, coloured from the smallest to the largest."""
    settings = [(m, s) for m in cfg.components for s in cfg.noises]
    fig, axes = plt.subplots(len(settings), len(shifts), figsize=(5.5 * len(shifts), 3.6 * len(settings)), squeeze=False)
    for i, (m, noise) in enumerate(settings):
        for j, shift in enumerate(shifts):
            ax = axes[i, j]
            g = table[(table.n_components == m) & (table.noise == noise) & (table["shift"] == shift)]
            values = cfg.values(shift)
            colours = plt.cm.viridis([v / max(1, len(values) - 1) for v in range(len(values))])
            for value, colour in zip(values, colours):
                curve = g[g["value"] == value].groupby("k")["nmse"].agg(["mean", "min", "max"])
                mean_band(ax, curve, f"{SHIFTS[shift][1]} = {value:.2g}", color=colour)
            prompt_length_axis(ax, "normalised MSE", f"{shift}, m = {m}, σ = {noise}", log=True)
            ax.legend(fontsize=7)
    spread = "range over seeds" if len(cfg.seeds) > 1 else "one seed"
    fig.suptitle(f"Regression mixtures, {name[4:].replace('fig', 'Fig. ')}: the {LABELS[predictor]} under distribution "
                 f"shift (d = {cfg.dim}; bands: {spread})", fontsize=11)
    fig.tight_layout()
    return fig


def report(table: pd.DataFrame, cfg: Config) -> str:
    """Per shift, the mean normalised MSE at k = min(2d, ``n_points`` - 1) for each (m, sigma) and shift value, as
    Markdown."""
    k = min(2 * cfg.dim, cfg.n_points - 1)
    parts = []
    for shift, g in table[table.k == k].groupby("shift", sort=False):
        at = g.groupby(["n_components", "noise", "value"], sort=False)["nmse"].mean().unstack("value")
        at.columns = [f"{SHIFTS[shift][1]} = {v:.3g}" for v in at.columns]
        parts.append(f"{shift}: normalised MSE at k = {k} (mean over seeds)\n\n" + at.to_markdown(floatfmt=".4f"))
    return "\n\n".join(parts)


class ShiftFigure(TrainedFigure):
    """One of Figs 5-9: ``FIGURES[name]`` says which predictor and shifts it shows."""

    Config, presets = Config, PRESETS

    def __init__(self, name: str):
        self.name = name
        self.predictor, self.shifts = FIGURES[name]

    def compute(self, cfg: Config, out: Path, progress: bool = True) -> Result:
        """Normalised MSE by k of this figure's predictor under each of its shifts and values."""
        return Result(compute(cfg, out, self.predictor, self.shifts, progress))

    def draw(self, result: Result, cfg: Config):
        """This figure's predictor against k, a panel per shift and setting, a curve per shift value."""
        return draw(result.table, cfg, self.name, self.predictor, self.shifts)

    def report(self, result: Result, cfg: Config) -> str:
        """The mean normalised MSE at k = 2d (or the longest prompt) per setting and shift value, as Markdown."""
        return report(result.table, cfg)


fig5, fig6, fig7, fig8, fig9 = (ShiftFigure(name) for name in FIGURES)


# --- claims (``icmix.experiments.claims``) ------------------------------------------------

SMALL = {"covariate scale": (0.5, 2.0), "weight scale": (0.5, 2.0), "weight shift": (0.25,)}
LARGE = {"covariate scale": (1 / 3, 3.0), "weight scale": (1 / 3, 3.0), "weight shift": (1.0,)}


@fig5.claim("MLR",
            "The transformer is robust to small distribution shifts but not to large ones",
            "NMSE(transformer) / NMSE(posterior mean, oracle, under the same shift) at k = 2d, m = 5, σ = 1, worst "
            "of the small shifts (κ, α ∈ {{1/2, 2}}; ε = 1/4) and of the large (κ, α ∈ {{1/3, 3}}; ε = 1); "
            "holds if small ≤ 1.5 < large",
            needs=("mlr-fig6", "mlr-fig7", "mlr-fig8", "mlr-fig9"),
            bounds=(0.0, math.inf),
            trained=lambda tc, cfg: tc.task.n_components == 5 and tc.task.noise == 1.0)
def shift_robustness(c: Claim, out: Path, cfg) -> Claim:
    """The worst NMSE(transformer) / NMSE(oracle posterior mean, same shift) at k = 2d (m = 5, sigma = 1) over the
    small shifts and over the large ones, per seed, from the tables of figs 5-9."""
    k = 2 * cfg.dim
    t = pd.concat([read(out, f) for f in c.figures], ignore_index=True)
    t = select(t, "mlr-fig5..9 (m = 5, σ = 1)", n_components=5, noise=1.0, k=min(k, t.k.max()))
    trained = trained_key(t, "mlr-fig5..9")
    at = by_key(t, ["seed", "shift", "value"], "nmse", [trained, PM_ORACLE], "mlr-fig5..9")
    ratio = (at[trained] / at[PM_ORACLE.id]).reset_index(name="ratio")

    def worst(kind):
        sel = np.zeros(len(ratio), bool)
        for shift, values in kind.items():
            sel |= (ratio["shift"] == shift).to_numpy() & np.isclose(ratio["value"].to_numpy()[:, None],
                                                                      np.array(values)[None]).any(1)
        return ratio[sel]

    small, large = worst(SMALL), worst(LARGE)
    small_worst, large_worst = small.groupby("seed")["ratio"].max(), large.groupby("seed")["ratio"].max()
    ms, cs, n, _ = seeds(small_worst)
    ml, cl, _, _ = seeds(large_worst)
    c.mean, c.ci = ms, cs
    c.value = f"small: {fmt(ms, cs, n)}; large: {fmt(ml, cl, n)}"
    by_shift = lambda r: r.groupby(["shift", "value"])["ratio"].mean()  # noqa: E731
    c.note = ("worst small: {} {:.3g} ({:.3g}); worst large: {} {:.3g} ({:.3g})"
              .format(*by_shift(small).idxmax(), by_shift(small).max(), *by_shift(large).idxmax(), by_shift(large).max()))
    return judge(c, (small_worst, 1.5, "<="), (large_worst, 1.5, ">"))
