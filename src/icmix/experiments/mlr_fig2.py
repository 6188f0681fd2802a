"""Regression-mixture Figure 2: the transformer against OLS, the posterior mean and argmin.

For each number of components m, noise level sigma and seed, train the GPT-style decoder on
prompts of the task (with the Garg et al. curriculum), then measure the normalised MSE
(MSE / d) against the prompt length k (pairs seen) of

- the trained transformer;
- OLS (minimum norm) and, when sigma > 0, ridge (Bayesian OLS with the prior variance of a
  coordinate of ``w``, 1);
- the posterior mean and argmin with the true components ("oracle weights");
- when sigma > 0, the hand-built transformer that computes the posterior mean
  (``icmix.construct.posterior_mean_transformer``, GELU MLPs), evaluated like the others.

The paper's claim: the transformer tracks the posterior mean, far below OLS before k = d.
"""

from __future__ import annotations

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
from icmix.predictors import RegressionPredictor
from icmix.evaluate import evaluate_regression
from icmix.train import TrainedRegressor
from icmix.experiments.common import cadence, family_task, trained_runs
from icmix.experiments.figure import TableFigure
from icmix.families import get_family
from icmix.families.mixlinreg import ARGMIN_ORACLE, CONSTRUCTED, OLS, PM_ORACLE, RIDGE
from icmix.figures.curves import mean_band, prompt_length_axis
from icmix.tasks import MixLinRegTask
from icmix.train import TrainConfig
from icmix.random import Stream, stream
from icmix.experiments.claims import Claim, by_key, measured, read, seeds, select, trained_key

NAME = "mlr-fig2"


@dataclass(frozen=True)
class Config:
    """Settings of ``mlr-fig2``, extended by the other regression figures (3-9).  ``dim`` d, the numbers of
    ``components`` m and the ``noises`` sigma trained, ``n_points`` pairs per prompt; ``curriculum_every``,
    ``dims_start``, ``points_start``: the curriculum, growing the dimensions and points from these every
    ``curriculum_every`` steps; ``n_layers``, ``d_model``, ``n_heads``: the GPT-style decoder; ``n_eval``:
    evaluation prompts per run; ``jobs``: training runs at once."""

    dim: int = 8  # d, the covariate dimension
    components: tuple[int, ...] = (5, 20)  # the numbers m of components: one run per seed, m and noise
    noises: tuple[float, ...] = (0.0, 1.0)  # the noise levels sigma >= 0 trained, one run each
    n_points: int = 17  # N, (x, y) pairs per prompt at full size (the curriculum's end, evaluation)
    curriculum_every: int = 500  # steps between curriculum stages (+1 active dimension, +2 points each); 0: none
    dims_start: int = 4  # active coordinates of x at the first stage (up to dim)
    points_start: int = 9  # pairs per prompt at the first stage (up to n_points)
    n_layers: int = 4  # the decoder's blocks
    d_model: int = 64  # the decoder's width
    n_heads: int = 4  # the decoder's attention heads per layer (dividing d_model)
    steps: int = 4000  # training steps of every run
    batch_size: int = 64  # prompts per training batch
    lr: float = 1e-3  # Adam's peak learning rate (gradients clipped at norm 1)
    warmup_steps: int = 200  # steps of linear learning-rate warm-up
    schedule: str = "cosine"  # of the learning rate after warm-up: cosine or linear decay to 0, or constant
    tail: bool = False  # keep the checkpoint 1000 steps before the end (common.cadence; the long tier)
    dropout: float = 0.0  # the decoder's dropout probability, in [0, 1)
    n_eval: int = 1000  # evaluation prompts of n_points pairs per run (a seed's, shared by the regression figures)
    seeds: tuple[int, ...] = (0, 1)  # seed s draws the components and seeds the run's training and evaluation
    device: str = "auto"  # where the runs train: auto (CUDA where available, else the CPU), cpu, cuda or cuda:N
    precision: str = "fp32"  # fp32, or bf16 / fp16 autocast on CUDA
    data_device: str = "cpu"  # cpu, or device: sample training batches on the training device (another random stream)
    jobs: int = 1  # training runs at once, each in its own process

    def __post_init__(self):
        for name in ("dim", "n_points", "steps", "batch_size", "n_eval", "jobs"):
            check_positive_int(name, getattr(self, name))
        if not self.seeds or not self.components or not self.noises:
            raise ValueError("seeds, components and noises must be non-empty")
        self.runs()

    def runs(self) -> dict[tuple, TrainConfig]:
        """``(seed, m, sigma) -> TrainConfig``; the task seed is the run's seed."""
        return {(s, m, noise): self.train_config(s, m, noise)
                for s in self.seeds for m in self.components for noise in self.noises}

    def train_config(self, seed: int, m: int, noise: float, dropout: float | None = None, **task) -> TrainConfig:
        """The training run of one setting; ``task`` overrides task fields (e.g. ``n_train``)."""
        return TrainConfig.from_dict({
            "task": {"kind": "mixlinreg", "dim": self.dim, "n_components": m, "noise": float(noise), "seed": seed,
                     "n_points": self.n_points, "curriculum_every": self.curriculum_every,
                     "dims_start": self.dims_start, "points_start": self.points_start, **task},
            "model": {"kind": "gpt-regression", "n_layers": self.n_layers, "d_model": self.d_model,
                      "n_heads": self.n_heads, "dropout": self.dropout if dropout is None else float(dropout)},
            "optim": {"lr": self.lr, "schedule": self.schedule, "warmup_steps": self.warmup_steps},
            "steps": self.steps, "batch_size": self.batch_size, "loss": "mse", "loss_positions": "all", "seed": seed,
            **cadence(self.steps, self.tail),
            "device": self.device, "precision": self.precision, "data_device": self.data_device,
        })


PRESETS = {
    # Every figure of both papers in under 30 minutes on 2 CPU cores (``icmix reproduce all``):
    # d = 8, prompts of 2d + 1 points, a 4-layer width-64 decoder, 2000 steps, sigma = 1 only.
    "quick": Config(noises=(1.0,), steps=2000, curriculum_every=200, warmup_steps=100),
    # CPU in about 2 hours with 2 jobs: the same for 20k steps, where the m = 5 model is
    # Bayes-optimal to within a few per cent (NMSE and d² against the oracle posterior mean);
    # sigma = 1 only, the setting every claim reads (``--set "mlr-fig2.noises=(0.0,1.0)"`` adds
    # the noiseless panels, 4 more runs).
    "cpu": Config(noises=(1.0,), steps=20_000),
    # The long tier: the cpu model for twice its steps, 4 seeds, each run keeping its checkpoint 1000
    # steps before the end (the claims-scaling figure also trains it at 1/8, 1/4 and 1/2 of them).
    "long": Config(noises=(1.0,), steps=40_000, seeds=(0, 1, 2, 3), tail=True),
    # The paper: d = 20, curriculum 5 -> 20 dims and 11 -> 41 points (+1 / +2 every 2000 steps),
    # 12 layers, width 256, 8 heads, batch 64 (a GPU job).
    "paper": Config(dim=20, n_points=41, curriculum_every=2000, dims_start=5, points_start=11, n_layers=12,
                    d_model=256, n_heads=8, steps=250_000, lr=1e-4, warmup_steps=1000, n_eval=2560,
                    seeds=(0, 1, 2)),
}


def eval_generator(seed: int) -> torch.Generator:
    """The evaluation prompts of a seed, shared by every regression figure (so unshifted
    prompts in figs 5-9 are fig2's, and figs 3-4 compare on the same draws)."""
    return stream(seed, Stream.MLR_EVALUATION)


def trained_tasks(cfg: Config, out: Path, progress: bool = True):
    """``(run key, task, run directory)`` for every training run of a regression figure, after
    training (or reusing) them all; the key starts ``(seed, m, sigma)``."""
    for key, path in trained_runs(out, cfg.runs(), cfg.jobs, progress).items():
        seed, m, noise = key[:3]
        yield key, family_task("mixlinreg", dim=cfg.dim, n_components=m, noise=noise, seed=seed), path


def predictors(task: MixLinRegTask, noise: float, run: Path) -> list:
    """What fig2 compares on a run's task: the trained transformer of ``run``, the oracle posterior mean and argmin
    and OLS, and, when ``noise`` > 0, ridge (prior variance 1) and the posterior-mean construction."""
    w = task.components
    preds = [TrainedRegressor.from_run(run, "transformer"), *get_family("mixlinreg").predictors(task, noise)]
    if noise > 0:
        preds.append(RegressionPredictor(RIDGE, partial(reg.ridge, noise=noise, prior_var=1.0), "ridge (Bayesian OLS)"))
        preds.append(RegressionPredictor(CONSTRUCTED, partial(constructed, components=w, noise=noise),
                                         "constructed transformer"))
    return preds


def constructed(xs, ys, components, noise: float):
    """The posterior-mean construction's predictions (built for the prompts' length)."""
    from icmix.construct import posterior_mean_transformer

    model = posterior_mean_transformer(components, noise, xs.shape[1])
    with torch.no_grad():
        return model(xs, ys)


def compute(cfg: Config, out: Path, progress: bool = True) -> pd.DataFrame:
    """Normalised MSE by prompt length k of every predictor on ``n_eval`` fresh prompts per run: the table of
    ``evaluate_regression`` with ``seed, n_components, noise`` in front."""
    tables = []
    for (seed, m, noise), task, path in trained_tasks(cfg, out, progress):
        xs, ys = task.sample(cfg.n_eval, cfg.n_points, generator=eval_generator(seed))
        table, _ = evaluate_regression(xs, ys, predictors(task, noise, path), cfg.dim)
        table.insert(0, "noise", noise)
        table.insert(0, "n_components", m)
        table.insert(0, "seed", seed)
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds with the range over seeds (one seed: the 95% CI over prompts), per
    setting, predictor ``key`` and k; keeps the ``label`` and ``predictor`` columns."""
    keys = ["n_components", "noise", "key", "k"]
    g = table.groupby(keys, sort=False)["nmse"]
    out = g.agg(["mean", "min", "max", "count"]).reset_index()
    one = out["count"] == 1
    ci = table.groupby(keys, sort=False)["nmse_ci"].first().to_numpy()
    out.loc[one, "min"] = out.loc[one, "mean"] - ci[one.to_numpy()]
    out.loc[one, "max"] = out.loc[one, "mean"] + ci[one.to_numpy()]
    names = table.drop_duplicates("key").set_index("key")
    return out.assign(label=out["key"].map(names["label"]), predictor=out["key"].map(names["predictor"]))


def draw(table: pd.DataFrame, cfg: Config):
    """A panel per m (rows) and sigma (columns): normalised MSE against k of each predictor, mean over seeds with
    its spread, and a dotted line at k = d."""
    s = summarise(table)
    rows, cols = len(cfg.components), len(cfg.noises)
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    styles = {PM_ORACLE.id: dict(color="black", lw=2), ARGMIN_ORACLE.id: dict(color="grey", ls="--"),
              OLS.id: dict(color="tab:blue"), RIDGE.id: dict(color="tab:cyan", ls=":"),
              CONSTRUCTED.id: dict(color="tab:orange", ls="none", marker="x", ms=4)}
    trained = dict(color="tab:red", lw=2.5)
    spread = "range over seeds" if len(cfg.seeds) > 1 else "95% CI over prompts"
    for i, m in enumerate(cfg.components):
        for j, noise in enumerate(cfg.noises):
            ax = axes[i, j]
            for key, g in s[(s.n_components == m) & (s.noise == noise)].groupby("key", sort=False):
                style = trained if g["predictor"].iloc[0] == "trained" else styles.get(key, {})
                mean_band(ax, g.set_index("k"), g["label"].iloc[0], **style)
            ax.axvline(cfg.dim, color="k", lw=0.5, ls=":")
            ax.set_ylim(0, 1.5)
            prompt_length_axis(ax, "normalised MSE", f"m = {m}, σ = {noise} ({spread})")
            if i == 0:  # ridge appears only where sigma > 0
                ax.legend(fontsize=7)
    fig.suptitle(f"Regression mixtures, Fig. 2: transformer vs OLS and the oracle posterior mean (d = {cfg.dim})",
                 fontsize=11)
    fig.tight_layout()
    return fig


def report(table: pd.DataFrame, cfg: Config) -> str:
    """Per m and sigma, the mean normalised MSE of each predictor at k = 1, d/2, d and 2d (those below
    ``n_points``), and the transformer's ratio to the oracle posterior mean at the largest (its own value when
    sigma = 0), as Markdown."""
    s = summarise(table)
    ks = sorted({1, cfg.dim // 2, cfg.dim, 2 * cfg.dim} & set(range(cfg.n_points)))
    parts = []
    for m in cfg.components:
        for noise in cfg.noises:
            g = s[(s.n_components == m) & (s.noise == noise)]
            pivot = g.pivot(index="key", columns="k", values="mean").reindex(g["key"].unique())[ks]
            at = pivot[ks[-1]]
            model = at[g.drop_duplicates("key").set_index("key")["predictor"].eq("trained")].iloc[0]
            pivot.index = g.drop_duplicates("key")["label"].rename("predictor")
            if noise > 0:
                line = f"transformer / posterior mean at k = {ks[-1]}: {model / at[PM_ORACLE.id]:.3f}"
            else:  # noise-free: the oracle identifies the component from one pair and errs by 0
                line = f"transformer at k = {ks[-1]}: {model:.4f} (the posterior mean is exact without noise)"
            parts.append(f"m = {m}, σ = {noise}: normalised MSE (mean over seeds)\n\n{pivot.to_markdown(floatfmt='.4f')}"
                         f"\n\n- {line}")
    return "\n\n".join(parts)


FIGURE = TableFigure(NAME, Config, PRESETS, compute, draw, report)


# --- claims (``icmix.experiments.claims``) ------------------------------------------------

def transformer_vs_pm(c: Claim, out: Path, cfg, m: int) -> Claim:
    """NMSE of the transformer over the oracle posterior mean's at k = 2d (``m`` components, sigma = 1), per seed;
    OLS's ratio in the note."""
    k = 2 * cfg.dim
    t = read(out, "mlr-fig2")
    t = select(t, f"mlr-fig2 (m = {m}, σ = 1)", n_components=m, noise=1.0, k=min(k, t.k.max()))
    trained = trained_key(t, "mlr-fig2")
    at = by_key(t, "seed", "nmse", [trained, PM_ORACLE, OLS], "mlr-fig2")
    measured(c, at[trained] / at[PM_ORACLE.id], 1.2, "<=")
    c.note = f"OLS / posterior mean: {seeds(at[OLS.id] / at[PM_ORACLE.id])[3]}"
    return c


for m in (5, 20):
    FIGURE.claim("MLR",
                 "The trained transformer is as good as the posterior mean (m = {m}, σ = 1)",
                 "NMSE(transformer) / NMSE(posterior mean, oracle weights) at k = 2d = {k}; holds if ≤ 1.2",
                 bounds=(0.0, math.inf),
                 trained=lambda tc, cfg, m: tc.task.n_components == m and tc.task.noise == 1.0,
                 m=m)(transformer_vs_pm)
del m  # (the loop's name, not part of the module)
