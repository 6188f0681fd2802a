"""MTD Figure 7: the learned layer-1 token scores ``softmax(A1^T)`` against ``pi``, per training length.

For each order and training length, train the 3-layer disentangled transformer (the runs of
fig6 at its training length are shared when written to the same ``--out``) and compare its
layer-1 token-token scores ``A1`` with the true transition matrix:

- ``row_kl``: the paper's measure, the mean over rows a of ``KL(pi[a] || softmax(A1^T)[a])``;
- ``attention_kl``: the same comparison made invariant to the per-query-token constant that
  attention cannot see (``agreement.transition_agreement``).

The claim to check: the row KL falls as the training length grows (longer sequences carry
more evidence per sequence about ``pi``).  The figure shows ``pi`` and the learned matrix
for every length (first seed), the mean row KL in each panel's title.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from icmix import agreement
from icmix._checks import check_order
from icmix.experiments import mtd_training
from icmix.experiments.common import trained_runs, family_task
from icmix.experiments.figure import Result, TrainedFigure
from icmix.metrics import mean_ci
from icmix.train import load_run
from icmix.experiments.claims import Claim, fmt, judge, read, seeds

NAME = "mtd-fig7"


@dataclass(frozen=True)
class Config(mtd_training.Recipe):
    """Settings of ``mtd-fig7``: the ``mtd_training.Recipe``, the ``orders`` M and the training ``lengths`` T; one
    3-layer disentangled run per seed, order and length.

    Where a field of ``mtd_training.Recipe`` means something else here:

    Args:
        steps: training steps of every run.
        seeds: one run per seed and setting; seed s draws its task's transition matrix and seeds its training
            and evaluation.
    """

    orders: tuple[int, ...] = (3, 5)  # the MTD orders M (each below every length)
    lengths: tuple[int, ...] = (8, 16, 32)  # training lengths T: one 3-layer disentangled run per seed, order, length

    def __post_init__(self):
        for m in self.orders:
            check_order(m, min(self.lengths))
        self.check_recipe()
        if not self.orders or not self.lengths:
            raise ValueError("orders and lengths must be non-empty")
        self.runs()

    def runs(self) -> dict[tuple[int, int, int], object]:
        """``(seed, order, length) -> TrainConfig``."""
        return {(s, m, t): mtd_training.train_config(self, s, mtd_training.disentangled(3, m, self.positions), m, t,
                                                     self.loss)
                for s in self.seeds for m in self.orders for t in self.lengths}


PRESETS = {
    "quick": Config(orders=(3,), lengths=(8, 32), **mtd_training.QUICK),
    "cpu": Config(),
    "long": Config(orders=(3,), **mtd_training.LONG),  # order 3 only: the claim reads it
    "paper": Config(lengths=(16, 32, 64, 128), **mtd_training.PAPER),
}


def learned_scores(run: Path) -> torch.Tensor:
    """``A1[query token, key token] (Q, Q)`` of a trained disentangled run."""
    _, model = load_run(run)
    tok = model.layouts[0]["token"]
    return model.attention[0].A[0, tok, tok].detach().double()


def compute(cfg: Config, out: Path, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Rows ``seed, order, length, row_kl, attention_kl`` and, for the first seed,
    ``{(order, length): softmax(A1^T)}``."""
    runs = cfg.runs()
    paths = trained_runs(out, runs, cfg.jobs, progress)
    rows, mats = [], {}
    for (seed, m, t), path in paths.items():
        scores = learned_scores(path)
        pi = family_task("mtd", vocab_size=cfg.vocab_size, order=m, seed=seed).transition
        rows.append(dict(seed=seed, order=m, length=t, **agreement.transition_agreement(scores, pi)))
        if seed == cfg.seeds[0]:
            mats[m, t] = torch.softmax(scores.T, -1).numpy()
    return pd.DataFrame(rows), mats


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per (order, length): the mean ``row_kl`` and ``attention_kl`` over seeds with their 95% half-widths (NaN with
    one seed)."""
    rows = []
    for (m, t), g in table.groupby(["order", "length"]):
        row = {"order": m, "length": t}
        for metric in ("row_kl", "attention_kl"):
            mean, _, ci = mean_ci(g[metric]) if len(g) > 1 else (g[metric].iloc[0], 0, float("nan"))
            row[metric], row[f"{metric}_ci"] = mean, ci
        rows.append(row)
    return pd.DataFrame(rows)


def draw(table: pd.DataFrame, mats: dict, cfg: Config):
    """A row per order: the true ``pi``, then the learned ``softmax(A1^T)`` at each training length (first seed),
    with the mean row KL in each title."""
    summary = summary_table(table).set_index(["order", "length"])
    cols = len(cfg.lengths) + 1
    fig, axes = plt.subplots(len(cfg.orders), cols, figsize=(3.1 * cols, 3.0 * len(cfg.orders)), squeeze=False)
    for i, m in enumerate(cfg.orders):
        pi = family_task("mtd", vocab_size=cfg.vocab_size, order=m, seed=cfg.seeds[0]).transition.numpy()
        vmax = max(pi.max(), *(mats[m, t].max() for t in cfg.lengths))
        panels = [(pi, f"m={m}: true π")] + [
            (mats[m, t], f"m={m}, T={t}: softmax(A1ᵀ)\nrow KL {summary.loc[(m, t), 'row_kl']:.3f}") for t in cfg.lengths]
        for ax, (mat, title) in zip(axes[i], panels):
            ax.imshow(mat, cmap="magma", vmin=0, vmax=vmax)
            ax.set_title(title, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    n = len(cfg.seeds)
    fig.suptitle(f"MTD Fig. 7: learned layer-1 token scores vs π by training length (panels: seed {cfg.seeds[0]}; "
                 f"row KL: mean over {n} seed{'s' * (n > 1)})", fontsize=10)
    fig.tight_layout()
    return fig


def report(table: pd.DataFrame, cfg: Config) -> str:
    """The mean row and attention KL per order and length (Markdown), and whether the row KL decreases with the
    training length at each order."""
    summary = summary_table(table)
    lines = []
    for m, g in summary.groupby("order"):
        kl = g.sort_values("length")["row_kl"].to_numpy()
        trend = "decreases" if (kl[1:] < kl[:-1]).all() else "does not decrease monotonically"
        lines.append(f"- m = {m}: mean row KL {trend} with training length ({', '.join(f'{v:.4f}' for v in kl)})")
    return ("Learned softmax(A1ᵀ) vs π (mean over seeds, 95% CI)\n\n" + summary.to_markdown(index=False, floatfmt=".4f")
            + "\n\n" + "\n".join(lines))


class Fig7(TrainedFigure):
    """``mtd-fig7``: the learned layer-1 token scores against ``pi``, by training length."""

    name, Config, presets = NAME, Config, PRESETS

    def compute(self, cfg: Config, out: Path, progress: bool = True) -> Result:
        """The row and attention KL per seed, order and length, with the first seed's ``softmax(A1^T)`` for
        ``draw``."""
        table, mats = compute(cfg, out, progress)
        return Result(table, data={"mats": mats})

    def draw(self, result: Result, cfg: Config):
        """The true ``pi`` beside the learned ``softmax(A1^T)`` at each training length, a row per order."""
        return draw(result.table, result.data["mats"], cfg)

    def report(self, result: Result, cfg: Config) -> str:
        """The KL table, and whether the row KL falls with the training length."""
        return report(result.table, cfg)


FIGURE = Fig7()


# --- claims (``icmix.experiments.claims``) ------------------------------------------------

@FIGURE.claim("MTD",
              "Layer 1's token-token scores learn the transition matrix π, better with longer training sequences",
              "mean row KL(π[a] ‖ softmax(A1ᵀ)[a]) at the longest training length, order 3; holds if below "
              "KL(π ‖ uniform) / 4 and below its value at the shortest length",
              trained=lambda tc, cfg: tc.task.order == min(cfg.orders))
def layer1_is_pi(c: Claim, out: Path, cfg) -> Claim:
    """Mean row KL(pi || softmax(A1^T)) at the longest and the shortest training length, smallest order, per seed,
    against KL(pi || uniform) / 4."""
    t = read(out, "mtd-fig7")
    m = sorted(t.order.unique())[0]
    t = t[t.order == m].pivot_table(index="seed", columns="length", values="row_kl")
    uniform = []
    for seed in t.index:
        pi = family_task("mtd", vocab_size=cfg.vocab_size, order=m, seed=int(seed)).transition.double().numpy()
        uniform.append(float((pi * np.log(pi * pi.shape[1])).sum(1).mean()))
    long_, short = t.iloc[:, -1], t.iloc[:, 0]
    c.mean, c.ci, n, _ = seeds(long_)
    ms, cs, _, _ = seeds(short)
    c.value = f"T={t.columns[-1]}: {fmt(c.mean, c.ci, n)}; T={t.columns[0]}: {fmt(ms, cs, n)}"
    c.note = f"KL(π ‖ uniform) = {np.mean(uniform):.3f}"
    return judge(c, (long_ - np.array(uniform) / 4, 0, "<"), (long_ - short, 0, "<"))  # paired per seed
