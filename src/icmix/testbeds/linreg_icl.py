"""``linreg``: a GPT trained with the curriculum of Garg et al. (2022) regresses in context, next to
every ``linreg`` predictor.

Per seed one regression GPT (``gpt-regression``) is trained on ``linreg`` prompts with the
curriculum (active dimensions and points growing every ``curriculum_every`` steps), then every
predictor and the model predict each ``y_j`` of the same fresh prompts from the ``j`` pairs before it.
The figure draws the error per dimension against the number of pairs seen, with 95 % intervals over
prompts (the mean over seeds), as Garg et al.'s Figure 2 does.  The table (``linreg.csv``) has one
row per seed, predictor and ``k`` (pairs seen); ``linreg-ratio.csv`` the GPT's error over least
squares' at ``k = d/2, d, 2d`` per seed.  A figure of the ``linreg`` testbed registered through the
``icmix.figures`` entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from icmix._checks import check_positive_int
from icmix.experiments.claims import Claim, measured
from icmix.experiments.common import cadence, trained_runs
from icmix.experiments.figure import Result, TrainedFigure
from icmix.families import get_family
from icmix.random import Stream, stream
from icmix.train import TrainConfig

NAME = "linreg"
GPT = "gpt"


@dataclass(frozen=True)
class Config:
    """Settings of ``linreg``: the task (``dim`` d, ``points`` n, ``x_dist``, ``noise_std``), the GPT
    (``n_layers``, ``d_model``, ``n_heads``), its curriculum (``curriculum_every``; the dimensions grow
    from ``dims_start`` by one, the points from ``points_start`` by two), the recipe (``steps``,
    ``batch_size``, ``lr``, ``warmup_steps``, cosine), one run per seed, and ``n_prompts`` fresh
    evaluation prompts per seed."""

    dim: int = 8
    points: int = 16
    x_dist: str = "gaussian"
    noise_std: float = 0.0
    n_layers: int = 4
    d_model: int = 48  # (width 48, not 64: four seeds fit within the zoo's size cap)
    n_heads: int = 4
    curriculum_every: int = 250
    dims_start: int = 4
    points_start: int = 9
    steps: int = 1500
    batch_size: int = 256  # (at 64 prompts a step the GPT sits on a plateau for thousands of steps)
    lr: float = 1e-3
    warmup_steps: int = 200
    seeds: tuple[int, ...] = (0, 1)
    n_prompts: int = 2000
    jobs: int = 1

    def __post_init__(self):
        for name in ("steps", "batch_size", "n_prompts", "jobs"):
            check_positive_int(name, getattr(self, name))
        if not self.seeds:
            raise ValueError("seeds must be non-empty")
        self.runs()

    def task(self) -> dict:
        """The ``linreg`` task spec of every run, with its curriculum."""
        return {"kind": "linreg", "dim": self.dim, "points": self.points, "x_dist": self.x_dist,
                "noise_std": self.noise_std, "curriculum_every": self.curriculum_every,
                "dims_start": self.dims_start, "points_start": self.points_start}

    def runs(self) -> dict[int, TrainConfig]:
        """``seed -> TrainConfig``: the regression GPT on every position's squared error."""
        return {s: TrainConfig.from_dict({
            "task": self.task(),
            "model": {"kind": "gpt-regression", "n_layers": self.n_layers, "d_model": self.d_model,
                      "n_heads": self.n_heads},
            "optim": {"lr": self.lr, "schedule": "cosine", "warmup_steps": self.warmup_steps, "grad_clip": 1.0},
            "loss": "mse", "loss_positions": "all", "steps": self.steps, "batch_size": self.batch_size, "seed": s,
            **cadence(self.steps, False)}) for s in self.seeds}

    def checkpoints(self) -> list[int]:
        """The ``k`` (pairs seen) at which the GPT is compared with least squares: d/2, d and 2d, where the prompt
        holds them."""
        return [k for k in (self.dim // 2, self.dim, 2 * self.dim) if 1 <= k <= self.points]


PRESETS = {
    # minutes on 2 cores
    "quick": Config(),
    # 4 seeds of 6000 steps (about 12 minutes each on one core of an AMD EPYC); shipped in the zoo
    "cpu": Config(steps=6000, seeds=(0, 1, 2, 3)),
}
DEMO = {"n_prompts": 1000}


class LinRegICL(TrainedFigure):
    """``linreg``: the curriculum-trained GPT and every ``linreg`` predictor, error per dimension against ``k``."""

    name, Config, presets, demo = NAME, Config, PRESETS, DEMO

    def compute(self, cfg: Config, out: Path, progress: bool = True) -> Result:
        """Every predictor's and the GPT's error per dimension at every ``k`` per seed, and the GPT's ratio to
        least squares at ``checkpoints()``."""
        from icmix.evaluate import evaluate_regression
        from icmix.predictors import Key
        from icmix.train import TrainedRegressor

        paths = trained_runs(out, cfg.runs(), cfg.jobs, progress)
        family = get_family("linreg")
        spec = family.spec(**{k: v for k, v in cfg.task().items() if k != "kind"})
        task = family.build(spec)
        tables, ratios = [], []
        for seed in cfg.seeds:
            xs, ys = task.sample(cfg.n_prompts, cfg.points + 1, stream(seed, Stream.TESTBEDS))
            preds = [TrainedRegressor.from_run(paths[seed], "GPT (curriculum)", key=Key(GPT)), *family.predictors(task)]
            table, p = evaluate_regression(xs, ys, preds, cfg.dim)
            tables.append(table.assign(family=NAME).drop(columns=["variant", "steps", "tuning", "model_kind", "depth",
                                                                  "loss"], errors="ignore").assign(seed=seed))
            err = {key.id: ((v - ys.double()) ** 2).numpy() for key, v in p.items()}
            for k in cfg.checkpoints():
                gpt, ls = err[GPT][:, k].mean() / cfg.dim, err["least_squares"][:, k].mean() / cfg.dim
                # (noiseless at k >= d least squares is exact: a ratio to its rounding error says nothing)
                ratios.append({"seed": seed, "k": k, "gpt": gpt, "least_squares": ls,
                               "ratio": gpt / ls if ls > 1e-9 else np.nan})
        return Result(pd.concat(tables, ignore_index=True), extra={"ratio": pd.DataFrame(ratios)})

    def draw(self, result: Result, cfg: Config):
        """Error per dimension against the pairs seen, every predictor and the GPT (mean over seeds, 95 % interval)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        t = result.table.groupby(["key", "label", "k"], sort=False)[["nmse", "nmse_ci"]].mean().reset_index()
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for (key, label), g in t.groupby(["key", "label"], sort=False):
            style = dict(color="black", lw=2.5) if key == GPT else dict(lw=1.2)
            ax.plot(g.k, g.nmse, label=label, **style)
            ax.fill_between(g.k, g.nmse - g.nmse_ci, g.nmse + g.nmse_ci, alpha=0.2, **({"color": "black"} if key == GPT
                                                                                       else {}))
        ax.axvline(cfg.dim, color="gray", ls=":", lw=1)
        ax.set(xlabel="in-context pairs seen (k)", ylabel="squared error / d", ylim=(0, 1.6),
               title=f"linreg: d={cfg.dim}, {cfg.x_dist} x, noise {cfg.noise_std:g}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig

    def report(self, result: Result, cfg: Config) -> str:
        """The GPT's error per dimension against least squares' at d/2, d and 2d."""
        r = result.extra["ratio"].groupby("k")[["gpt", "least_squares", "ratio"]].mean()
        return "\n".join(f"- k = {k}: GPT {row.gpt:.4f}, least squares {row.least_squares:.4f} (error / d), "
                         f"ratio {row.ratio:.3g}" for k, row in r.iterrows())


FIGURE = LinRegICL()


@FIGURE.claim("Testbed (Garg et al.)",
              "A transformer trained with a curriculum regresses in context as well as least squares",
              "error/d of the GPT minus least squares' at k = d/2 (below d least squares is Bayes-optimal "
              "when noiseless), d={cfg.dim}; holds if ≤ 0.05",
              trained=lambda tc, cfg: True)
def gpt_matches_least_squares(c: Claim, out: Path, cfg: Config) -> Claim:
    """Per seed, the GPT's excess error per dimension over least squares at k = d/2."""
    r = pd.read_csv(Path(out) / f"{NAME}-ratio.csv")
    r = r[r.k == cfg.dim // 2]
    return measured(c, r.gpt - r.least_squares, 0.05, "<=")
