"""``lsa-gd``: does a layer of linear self-attention trained on linear regression compute one step
of gradient descent (von Oswald et al. 2023)?

One ``lsa`` layer per seed is trained on ``linreg`` prompts of ``points`` pairs (the loss at the
query), then compared on fresh prompts with the layer built to compute the optimal GD step
(``lsa_gd``, ``icmix.testbeds.lsa``): the ratio of their query losses, and the cosine of their
effective weights ``v ⊗ A``, which the symmetry ``A → cA, v → v/c`` of the layer leaves alone.  The
table has every ``linreg`` predictor's query loss per seed beside the trained layer's.

A figure of the ``linreg`` testbed registered through the ``icmix.figures`` entry point.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from icmix._checks import check_positive_int
from icmix.experiments.claims import Claim, judge
from icmix.experiments.common import cadence, trained_runs
from icmix.experiments.figure import Result, TrainedFigure
from icmix.families import get_family
from icmix.metrics import mean_ci
from icmix.random import Stream, stream
from icmix.train import TrainConfig

NAME = "lsa-gd"
TRAINED = "lsa/trained"


@dataclass(frozen=True)
class Config:
    """Settings of ``lsa-gd``: the ``linreg`` task (``dim``, ``points``, ``x_dist``, ``noise_std``),
    the training recipe (``steps``, ``batch_size``, ``lr``, ``warmup_steps``; Adam, cosine schedule, the
    loss at the query), one run per seed of ``seeds``, and ``n_prompts`` fresh evaluation prompts per seed."""

    dim: int = 5  # d
    points: int = 10  # n, the pairs before the query
    x_dist: str = "gaussian"  # gaussian or uniform (on [-1, 1])
    noise_std: float = 0.0  # of y
    steps: int = 2000  # training steps of each layer
    batch_size: int = 256  # prompts per training batch
    lr: float = 0.01  # Adam's peak learning rate
    warmup_steps: int = 50  # linear warm-up, then cosine decay to 0
    seeds: tuple[int, ...] = (0, 1, 2, 3)  # one trained layer per seed
    n_prompts: int = 20_000  # evaluation prompts per seed
    jobs: int = 1  # training runs at once, each in its own process

    def __post_init__(self):
        for name in ("dim", "points", "steps", "batch_size", "n_prompts", "jobs"):
            check_positive_int(name, getattr(self, name))
        if not self.seeds:
            raise ValueError("seeds must be non-empty")
        self.runs()  # the task's and the recipe's own checks

    def task(self) -> dict:
        """The ``linreg`` task spec every run learns."""
        return {"kind": "linreg", "dim": self.dim, "points": self.points, "x_dist": self.x_dist,
                "noise_std": self.noise_std}

    def runs(self) -> dict[int, TrainConfig]:
        """``seed -> TrainConfig``: one ``lsa`` layer per seed, trained on the loss at the query."""
        return {s: TrainConfig.from_dict({
            "task": self.task(), "model": {"kind": "lsa"},
            "optim": {"lr": self.lr, "schedule": "cosine", "warmup_steps": self.warmup_steps},
            "loss": "mse", "loss_positions": "last", "steps": self.steps, "batch_size": self.batch_size,
            "seed": s, **cadence(self.steps, False)}) for s in self.seeds}


PRESETS = {
    "quick": Config(steps=1000, seeds=(0, 1, 2, 3), n_prompts=10_000),
    # shipped in the zoo: 4 seeds, one layer each, 4000 steps (seconds each)
    "cpu": Config(steps=4000, seeds=(0, 1, 2, 3)),
}
DEMO = {"n_prompts": 10_000}


class LSAGD(TrainedFigure):
    """``lsa-gd``: trained linear self-attention against the layer built to take one GD step."""

    name, Config, presets, demo = NAME, Config, PRESETS, DEMO

    def compute(self, cfg: Config, out: Path, progress: bool = True) -> Result:
        """Per seed: every ``linreg`` predictor's and the trained layer's query loss on the same fresh
        prompts (``seed, predictor, loss, loss_ci``), and (``extra["layers"]``) the trained layer's loss
        ratio to ``lsa_gd`` and its weight cosine with the construction."""
        import torch

        from icmix.testbeds.linreg import gd_step_size
        from icmix.testbeds.lsa import construction, effective_weights, weight_cosine
        from icmix.train import load_run

        paths = trained_runs(out, cfg.runs(), cfg.jobs, progress)
        family = get_family("linreg")
        rows, layers = [], []
        for seed in cfg.seeds:
            spec = family.spec(**{k: v for k, v in cfg.task().items() if k != "kind"})
            task = family.build(spec)
            xs, ys = task.sample(cfg.n_prompts, cfg.points + 1, stream(seed, Stream.TESTBEDS))
            losses = {p.key.id: ((p.predict(xs, ys)[:, -1] - ys[:, -1]) ** 2).numpy() for p in family.predictors(task)}
            _, model = load_run(paths[seed])
            with torch.no_grad():
                losses[TRAINED] = ((model(xs, ys)[:, -1].double() - ys[:, -1]) ** 2).numpy()
            for name, v in losses.items():
                mean, _, ci = mean_ci(v)
                rows.append({"seed": seed, "predictor": name, "loss": mean, "loss_ci": ci, "n": v.size})
            built = construction(cfg.dim, float(gd_step_size(task, cfg.points)))
            layers.append({"seed": seed, "loss_ratio": float(losses[TRAINED].mean() / losses["lsa_gd"].mean()),
                           "weight_cosine": weight_cosine(model, built)})
            if seed == cfg.seeds[0]:  # the first seed's effective weights, for the figure: (d+1, d+1, d) flattened
                w = effective_weights(model).detach().double().numpy()
                weights = pd.DataFrame({"value": w.ravel()}).assign(shape=str(w.shape))
        return Result(pd.DataFrame(rows), extra={"layers": pd.DataFrame(layers), "weights": weights})

    def draw(self, result: Result, cfg: Config):
        """The query loss of every predictor and of the trained layers (mean over seeds, 95 % interval),
        and the effective weights of the first seed's trained layer beside the construction's."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from icmix.testbeds.linreg import LinRegTask, gd_step_size
        from icmix.testbeds.lsa import construction, effective_weights

        t = result.table
        order = list(dict.fromkeys(t.predictor))
        stats = [mean_ci(t[t.predictor == p].loss.to_numpy()) for p in order]
        fig, axes = plt.subplots(1, 3, figsize=(14, 4), gridspec_kw={"width_ratios": [1.6, 1, 1]})
        ax = axes[0]
        colors = ["tab:red" if p == TRAINED else "tab:blue" if p == "lsa_gd" else "tab:gray" for p in order]
        ax.barh(order, [s[0] for s in stats], xerr=[s[2] if np.isfinite(s[2]) else 0 for s in stats], color=colors)
        ax.invert_yaxis()
        ax.set_xlabel("squared error at the query")
        ax.set_title(f"linreg d={cfg.dim}, n={cfg.points}: trained LSA (red) vs the GD-step layer (blue)", fontsize=9)
        built = construction(cfg.dim, float(gd_step_size(LinRegTask(cfg.dim, cfg.x_dist, 1.0, 1.0, cfg.noise_std),
                                                          cfg.points)))
        # the slice that matters: v[d] * A[:d, :d] (the y-row of the value times the x-x scores)
        for ax, (title, w) in zip(axes[1:], (("built: one GD step", effective_weights(built).detach().numpy()),
                                            (f"trained (seed {cfg.seeds[0]})",
                                             result.extra["weights"].value.to_numpy().reshape(cfg.dim + 1, cfg.dim + 1,
                                                                                              cfg.dim)))):
            block = w[cfg.dim, : cfg.dim, :]
            lim = np.abs(block).max() or 1.0
            im = ax.imshow(block, cmap="RdBu_r", vmin=-lim, vmax=lim)
            ax.set_title(f"{title}: v[y] · A[x, x]", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        return fig

    def report(self, result: Result, cfg: Config) -> str:
        """The per-seed loss ratio and weight cosine, and the predictors' mean query losses."""
        layers = result.extra["layers"]
        t = result.table.groupby("predictor", sort=False).loss.mean()
        lines = [f"- seed {r.seed}: loss(trained) / loss(lsa_gd) = {r.loss_ratio:.4f}, weight cosine "
                 f"{r.weight_cosine:.4f}" for r in layers.itertuples()]
        losses = ", ".join(f"{k} {v:.4g}" for k, v in t.items())
        return "\n".join(lines) + f"\n\nMean query loss over seeds: {losses}"


FIGURE = LSAGD()


@FIGURE.claim("Testbed (von Oswald et al.)",
              "A layer of linear self-attention trained on linear regression computes one step of gradient descent",
              "loss(trained LSA) / loss(the layer built for the optimal GD step) at the query, d={cfg.dim}, n={cfg.points}, "
              "and the cosine of their effective weights v ⊗ A; holds if the ratio ≤ 1.05 and the cosine ≥ 0.95",
              bounds=(0.0, float("inf")),
              trained=lambda tc, cfg: True)
def trained_lsa_is_gd(c: Claim, out: Path, cfg: Config) -> Claim:
    """The loss ratio (≤ 1.05) and the weight cosine (≥ 0.95), each decided from its interval over seeds."""
    layers = pd.read_csv(Path(out) / f"{NAME}-layers.csv")
    c.value = (f"ratio {layers.loss_ratio.mean():.3f}, cosine {layers.weight_cosine.mean():.3f} "
               f"({len(layers)} seeds)")
    return judge(c, (layers.loss_ratio, 1.05, "<="), (layers.weight_cosine, 0.95, ">="))
