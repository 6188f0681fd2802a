"""MTD Figures 6 and 8: trained transformers against the construction at orders m = 3 and 5.

Both figures share one set of runs (per seed and order: the 3-layer disentangled
transformer and the standard GPT-style transformer, trained as in Fig. 4's quick preset),
so ``icmix reproduce mtd-fig6`` and ``mtd-fig8`` with the same ``--out`` train them once.

- **fig6** (Fig. 4's KL panel at each order): KL(true || predicted) against length for both
  trained models, the construction and one-step MD (step sizes tuned per length) and
  exact Bayes, with error bars over seeds.
- **fig8** (attention-map grids): layer-by-layer attention of one sequence at the training
  length, trained disentangled / trained standard / constructed, at each order; and the
  numbers behind the picture: per layer, the cosine of the attention rows with the
  construction's, their mass on its support, the layer-1 mass on lags 1..m and the split over
  the lags (TV to the responsibilities), mean over seeds and 256 sequences.
"""

from __future__ import annotations

import math
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
from icmix.construct import mirror_descent_transformer
from icmix.predictors import ConstructedMirrorDescent, TunedMirrorDescent
from icmix.evaluate import evaluate_mtd
from icmix.train import TrainedPredictor
from icmix.experiments import mtd_training
from icmix.experiments.common import trained_runs, family_task
from icmix.experiments.figure import Result, TrainedFigure
from icmix.experiments.mtd_fig3 import kl_pivot, kl_ratio_to_md, summarise
from icmix.families import get_family
from icmix.families.mtd import BAYES, CONSTRUCTION, MD1
from icmix.figures.curves import kl_panel
from icmix.tasks import MTDTask
from icmix.random import Stream, stream
from icmix.experiments.claims import Claim, measured

KINDS = {"disentangled": "trained disentangled (3-layer)", "gpt": "trained standard (GPT)"}


@dataclass(frozen=True)
class Config(mtd_training.Recipe):
    """Settings of ``mtd-fig6`` and ``mtd-fig8`` (one set of runs): the ``mtd_training.Recipe``, the ``orders`` M,
    the training ``length`` and ``eval_lengths`` (the prefix lengths T evaluated); the GPT: ``gpt_steps``,
    ``gpt_layers``, ``gpt_width``, ``gpt_heads``; ``n_sequences`` evaluation and ``n_tune`` tuning sequences;
    ``n_attention``: sequences for fig8's attention agreement.

    Where a field of ``mtd_training.Recipe`` means something else here:

    Args:
        steps: training steps of every run (the disentangled model's; the GPT's: ``gpt_steps``).
        seeds: one run per seed and setting; seed s draws its task's transition matrix and seeds its training
            and evaluation.
    """

    orders: tuple[int, ...] = (3, 5)  # the MTD orders M: a disentangled and a GPT run per seed and order
    length: int = 32  # T, the training length of every run; fig8's attention is read at it
    eval_lengths: tuple[int, ...] = (8, 16, 24, 32)  # prefix lengths T at which fig6 evaluates every predictor
    # the GPT's training steps (the default is the disentangled runs' steps: the GPT claim compares equal budgets)
    gpt_steps: int = 10_000
    gpt_layers: int = 3  # the GPT's blocks
    gpt_width: int = 32  # the GPT's d_model
    gpt_heads: int = 4  # the GPT's attention heads per layer
    n_sequences: int = 500  # evaluation sequences per seed and order (fig6's KL table)
    n_tune: int = 250  # sequences that tune the MD and construction step sizes per length (and fig8's beta)
    n_attention: int = 256  # sequences per seed and order on which fig8 compares attention with the construction's

    def __post_init__(self):
        for m in self.orders:
            check_order(m, min(self.eval_lengths))
        if max(self.eval_lengths) > self.length:
            raise ValueError(f"eval_lengths must not exceed the training length {self.length}")
        self.check_recipe("gpt_steps", "n_sequences", "n_tune", "n_attention")
        if not self.orders:
            raise ValueError("orders must be non-empty")
        self.runs()

    def runs(self) -> dict[tuple[int, int, str], object]:
        """``(seed, order, kind) -> TrainConfig``."""
        out = {}
        for s in self.seeds:
            for m in self.orders:
                out[s, m, "disentangled"] = mtd_training.train_config(
                    self, s, mtd_training.disentangled(3, m, self.positions), m, self.length, self.loss)
                out[s, m, "gpt"] = mtd_training.train_config(self, s, mtd_training.gpt(self), m, self.length, self.loss,
                                                             steps=self.gpt_steps)
        return out


PRESETS = {
    "quick": Config(gpt_steps=600, **mtd_training.QUICK),
    "cpu": Config(),
    "long": Config(gpt_steps=mtd_training.LONG["steps"], **mtd_training.LONG),
    "paper": Config(length=64, eval_lengths=(8, 16, 32, 48, 64), gpt_steps=500_000, gpt_width=64, n_sequences=1000,
                    n_tune=500, **mtd_training.PAPER),
}


def order_runs(cfg: Config, out: Path, progress: bool) -> dict[tuple[int, int, str], Path]:
    """Train (or reuse) both models at every seed and order: ``(seed, order, kind) -> run directory``."""
    runs = cfg.runs()
    return trained_runs(out, runs, cfg.jobs, progress)


def compute_kl(cfg: Config, out: Path, progress: bool = True) -> pd.DataFrame:
    """KL table with columns ``seed, order, estimator, length, ...``."""
    paths = order_runs(cfg, out, progress)
    tables = []
    for seed in cfg.seeds:
        for m in cfg.orders:
            task = family_task("mtd", vocab_size=cfg.vocab_size, order=m, seed=seed)
            preds = [get_family("mtd").bayes_predictor(task), TunedMirrorDescent(steps=1), ConstructedMirrorDescent(),
                     *[TrainedPredictor.from_run(paths[seed, m, k], name) for k, name in KINDS.items()]]
            table = evaluate_mtd(task, preds, cfg.eval_lengths, cfg.n_sequences, cfg.n_tune, seed=seed + Stream.EVALUATION,
                                 progress=progress)
            table.insert(0, "order", m)
            table.insert(0, "seed", seed)
            tables.append(table)
    return pd.concat(tables, ignore_index=True)


def construction_beta(task: MTDTask, cfg: Config, seed: int) -> float:
    """The construction's beta at the training length, tuned on a separate batch as in the KL table."""
    cons = ConstructedMirrorDescent()
    tokens, lam = task.sample(cfg.n_tune, cfg.length, generator=stream(seed, Stream.CONSTRUCTION_TUNE))
    cons.tune(tokens, lam, task, [cfg.length])
    return cons.chosen_beta[cfg.length]


def compute_attention(cfg: Config, out: Path, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Per-layer agreement rows (``seed, order, model, layer, metric, value``) and, for the first
    seed, the head-averaged attention maps of one sequence: ``{order: {model: [map per layer]}}``."""
    paths = order_runs(cfg, out, progress)
    rows, maps = [], {}
    for seed in cfg.seeds:
        for m in cfg.orders:
            task = family_task("mtd", vocab_size=cfg.vocab_size, order=m, seed=seed)
            cons = mirror_descent_transformer(task.transition, m, construction_beta(task, cfg, seed), max_length=cfg.length)
            tokens, _ = task.sample(cfg.n_attention, cfg.length, generator=stream(seed, Stream.ATTENTION))
            with torch.no_grad():
                _, ref = cons(tokens, return_attention=True)
            if seed == cfg.seeds[0]:
                maps[m] = {}
            for kind, name in KINDS.items():
                model = TrainedPredictor.from_run(paths[seed, m, kind]).model
                with torch.no_grad():
                    _, attn = model(tokens, return_attention=True)
                add = lambda layer, metric, value, kind=kind, name=name: rows.append(
                    dict(seed=seed, order=m, model=name, layer=layer, metric_label=METRICS[metric], value=value,
                         model_kind=kind, metric=metric))
                for layer, (a, r) in enumerate(zip(attn, ref), start=1):
                    sim = agreement.attention_agreement(a, r[:, 0], m)
                    add(layer, "attention_cosine", sim["cosine"])
                    add(layer, "attention_support_mass", sim["support_mass"])
                add(1, "lag_mass", agreement.lag_offset_mass(attn[0], m))
                add(1, "lag_tv", agreement.lag_attention_tv(attn[0], ref[0][:, 0], m))
                if seed == cfg.seeds[0]:
                    maps[m][kind] = [a[0].mean(0).double().numpy() for a in attn]
            if seed == cfg.seeds[0]:
                maps[m]["construction"] = [r[0, 0].numpy() for r in ref]
    return pd.DataFrame(rows), maps


# The agreement metrics of Fig. 8: key -> label.
METRICS = {"attention_cosine": "cosine vs construction", "attention_support_mass": "mass on construction support",
           "lag_mass": "mass on lags 1..m", "lag_tv": "split over lags: TV to responsibilities"}


def draw_fig6(kl: pd.DataFrame, cfg: Config):
    """A panel per order: KL against length of both trained models, the construction, one-step MD and Bayes."""
    fig, axes = plt.subplots(1, len(cfg.orders), figsize=(6.5 * len(cfg.orders), 4.6), squeeze=False)
    styles = {BAYES.id: dict(color="black", lw=2.5),
              CONSTRUCTION.id: dict(color="tab:orange", ls="none", marker="x", ms=8, mew=2)}
    for ax, m in zip(axes[0], cfg.orders):
        kl_panel(ax, summarise(kl[kl.order == m]), f"m = {m}", styles)
    fig.suptitle(f"MTD Fig. 6: trained vs constructed transformers at orders {', '.join(map(str, cfg.orders))} "
                 f"(q={cfg.vocab_size}, training length {cfg.length})", fontsize=11)
    fig.tight_layout()
    return fig


def draw_fig8(agree: pd.DataFrame, maps: dict, cfg: Config):
    """Attention maps of one sequence (first seed): per order, a row each for the trained disentangled model, the
    trained GPT and the construction, a column per layer; the trained models' panels titled with their mean
    cosine and support mass."""
    names = {**KINDS, "construction": "construction"}
    rows = len(cfg.orders) * len(names)
    fig, axes = plt.subplots(rows, 3, figsize=(10, 3.1 * rows), squeeze=False)
    mean = agree.groupby(["order", "model_kind", "layer", "metric"])["value"].mean()
    for i, m in enumerate(cfg.orders):
        for j, (kind, name) in enumerate(names.items()):
            for layer in range(3):
                ax = axes[i * len(names) + j, layer]
                a = maps[m][kind][layer]
                ax.imshow(np.ma.masked_where(np.triu(np.ones_like(a), 1) > 0, a), cmap="viridis", vmin=0,
                          interpolation="nearest")
                title = f"m={m}, {name}: layer {layer + 1}"
                if kind in KINDS:
                    title += f"\ncos {mean[m, kind, layer + 1, 'attention_cosine']:.2f}, " \
                             f"support mass {mean[m, kind, layer + 1, 'attention_support_mass']:.2f}"
                ax.set_title(title, fontsize=7)
                ax.set_xticks([])
                ax.set_yticks([])
    fig.suptitle(f"MTD Fig. 8: attention maps, trained vs constructed (one sequence of length {cfg.length}; "
                 "numbers: mean over seeds)", fontsize=10)
    fig.tight_layout()
    return fig


def report_fig6(kl: pd.DataFrame, cfg: Config) -> str:
    """Per order, the mean KL table and each trained model's KL over one-step MD's (tuned eta) at the training
    length, as Markdown."""
    parts = []
    for m in cfg.orders:
        summary = summarise(kl[kl.order == m])
        pivot = kl_pivot(summary)
        at_t = summary[summary.length == cfg.length].set_index("key")
        md = at_t.loc[MD1.id, "kl_mean"]
        ratios = "\n".join(f"- {row.estimator}: KL / KL(one-step MD, tuned η) at T={cfg.length} = {row.kl_mean / md:.3f}"
                           for row in at_t[at_t.predictor == "trained"].itertuples())
        parts.append(f"Order m = {m}: mean KL(true ‖ predicted)\n\n{pivot.to_markdown(floatfmt='.4g')}\n\n{ratios}")
    return "\n\n".join(parts)


def report_fig8(agree: pd.DataFrame) -> str:
    """The mean agreement per order, model, layer and metric, as Markdown."""
    table = agree.groupby(["order", "model", "layer", "metric_label"], sort=False)["value"].mean().unstack("metric_label")
    return "Attention agreement with the construction (mean over seeds)\n\n" + table.to_markdown(floatfmt=".3f")


class Fig6(TrainedFigure):
    """KL against length at each order."""

    name, Config, presets = "mtd-fig6", Config, PRESETS
    demo = dict(n_sequences=300, n_tune=150)

    def compute(self, cfg: Config, out: Path, progress: bool = True) -> Result:
        """KL per seed, order, estimator and length."""
        return Result(compute_kl(cfg, out, progress))

    def draw(self, result: Result, cfg: Config):
        """KL against length, a panel per order."""
        return draw_fig6(result.table, cfg)

    def report(self, result: Result, cfg: Config) -> str:
        """The KL tables per order, and the trained models over one-step MD at the training length."""
        return report_fig6(result.table, cfg)


class Fig8(TrainedFigure):
    """Attention maps and their agreement with the construction at each order."""

    name, Config, presets = "mtd-fig8", Config, PRESETS
    demo = dict(n_sequences=300, n_tune=150)

    def compute(self, cfg: Config, out: Path, progress: bool = True) -> Result:
        """The agreement rows per seed, order, model and layer, with the first seed's attention maps for ``draw``."""
        agree, maps = compute_attention(cfg, out, progress)
        return Result(agree, data={"maps": maps})

    def draw(self, result: Result, cfg: Config):
        """The grid of attention maps, trained against constructed, at each order."""
        return draw_fig8(result.table, result.data["maps"], cfg)

    def report(self, result: Result, cfg: Config) -> str:
        """The mean agreement with the construction, as Markdown."""
        return report_fig8(result.table)


fig6, fig8 = Fig6(), Fig8()


# --- claims (``icmix.experiments.claims``) ------------------------------------------------

@fig6.claim("MTD (beyond)",
            "A standard GPT-style transformer also learns in context, at both orders",
            "KL(trained GPT) / KL(one-step MD, tuned η) at T={cfg.length}, worst order; holds if ≤ 1.25",
            bounds=(0.0, math.inf),
            trained=lambda tc, cfg: tc.model.kind == "gpt")
def standard_transformer(c: Claim, out: Path, cfg) -> Claim:
    """KL of the trained GPT over one-step MD's (tuned eta) at the training length, worst order per seed."""
    ratio = kl_ratio_to_md(out, "mtd-fig6", cfg.length, ("seed", "order"), model_kind="gpt").groupby("seed").max()
    return measured(c, ratio, 1.25, "<=")
