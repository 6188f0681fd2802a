"""MTD Figure 5: a deeper trained transformer against k-step mirror descent and Bayes.

For each seed, train disentangled transformers of each depth in ``depths`` (the paper's
5 layers, and the 3-layer model of Fig. 4 beside it) with each loss in ``losses`` (MSE, the
paper's, and cross-entropy), then measure

- KL(true || predicted) against length for every trained model, 1- to 4-step MD (step size
  tuned per length), one-step MD with one step size for all lengths (what fixed weights
  that cannot adapt to the length would give) and exact Bayes;
- which k-step MD the main model (``depth``, ``loss``) *tracks*: the mean
  ``KL(p_MD^k || p_model)`` between the predictions, per length;
- the step sizes read off each layer (``agreement.md_step_readout``): how much attention sits
  on the lagged tokens of the next token, and the k-step MD (tied, and per-step) that best
  explains how it is split, with the KL of the predictive that plugs that split in as
  ``lam`` (the layer's own prediction, comparable to the model's).

Outputs: ``mtd-fig5.csv`` (KL), ``mtd-fig5-tracking.csv``, ``mtd-fig5-readout.csv`` (the
per-layer step-size table) and ``mtd-fig5-losses.csv`` (CE vs MSE at every length).
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
from icmix._checks import check_order, check_positive_int
from icmix.estimators import mtd as est
from icmix.predictors import Key, TunedMirrorDescent
from icmix.evaluate import evaluate_mtd
from icmix.train import TrainedPredictor
from icmix.experiments import mtd_training
from icmix.experiments.common import trained_runs, family_task
from icmix.experiments.figure import Result, TrainedFigure
from icmix.experiments.mtd_fig3 import kl_pivot, kl_ratio_to_md, summarise
from icmix.families import get_family
from icmix.families.mtd import BAYES, MD_SHARED, md_key
from icmix.figures.curves import error_bars, kl_panel
from icmix.metrics import kl_divergence
from icmix.tasks import MTDTask
from icmix.train.config import LOSSES
from icmix.random import Stream, stream
from icmix.experiments.claims import Claim, measured, read, select

NAME = "mtd-fig5"


@dataclass(frozen=True)
class Config(mtd_training.Recipe):
    """Settings of ``mtd-fig5``: the ``mtd_training.Recipe``, the task's ``order`` M and training ``length``,
    ``eval_lengths`` (the prefix lengths T evaluated), the ``depths`` and ``losses`` trained, and the main model
    (``depth``, ``loss``) that the tracking and the claim read; ``md_steps``: the k of k-step MD; ``n_sequences``
    evaluation, ``n_tune`` tuning and ``n_readout`` step-size readout sequences.

    Where a field of ``mtd_training.Recipe`` means something else here:

    Args:
        steps: training steps of every run.
        seeds: one run per seed and setting; seed s draws its task's transition matrix and seeds its training
            and evaluation.
    """

    order: int = 3  # M, the number of lags of every run's task
    length: int = 32  # T, the training length (>= every eval length); the step-size readout is taken at it
    eval_lengths: tuple[int, ...] = (8, 16, 24, 32)  # prefix lengths T at which every predictor and model is evaluated
    depth: int = 5  # layers of the main model (one of depths): the one the tracking, the panels and the claim read
    depths: tuple[int, ...] = (3, 5)  # layer counts of the disentangled models trained (one head a layer)
    loss: str = "mse"  # the main model's training loss (one of losses)
    losses: tuple[str, ...] = ("mse", "ce")  # training losses: one run per seed, depth and loss (mse, ce)
    md_steps: tuple[int, ...] = (1, 2, 3, 4)  # the k of the k-step MD lines (step size tuned per length) and tracking
    n_sequences: int = 500  # evaluation sequences per seed (the KL table and the tracking)
    n_tune: int = 250  # sequences per seed on which the MD step sizes are tuned per length
    n_readout: int = 256  # sequences per seed of the per-layer step-size readout

    def __post_init__(self):
        check_order(self.order, min(self.eval_lengths))
        if max(self.eval_lengths) > self.length:
            raise ValueError(f"eval_lengths must not exceed the training length {self.length}")
        if self.depth not in self.depths or self.loss not in self.losses:
            raise ValueError("depth must be one of depths and loss one of losses")
        for loss in self.losses:
            if loss not in LOSSES:
                raise ValueError(f"losses must be among {LOSSES}, got {loss!r}")
        self.check_recipe("n_sequences", "n_tune", "n_readout")
        for k in self.md_steps:
            check_positive_int("md_steps", k)
        self.runs()  # validates the training side too

    def runs(self) -> dict[tuple[int, int, str], object]:
        """``(seed, depth, loss) -> TrainConfig``."""
        return {(s, d, loss): mtd_training.train_config(self, s, mtd_training.disentangled(d, self.order, self.positions),
                                                        self.order, self.length, loss)
                for s in self.seeds for d in self.depths for loss in self.losses}


PRESETS = {
    # MSE only, batch 64 and 3000 steps: the 5-layer model is the slowest of the quick runs.
    "quick": Config(batch_size=64, losses=("mse",), **{**mtd_training.QUICK, "steps": 3000}),
    "cpu": Config(),  # the fig4 cpu recipe at depths 3 and 5
    "long": Config(losses=("mse",), **mtd_training.LONG),  # MSE only: the claims read it
    "paper": Config(length=64, eval_lengths=(8, 16, 32, 48, 64), n_sequences=1000, n_tune=500, **mtd_training.PAPER),
}


def model_name(depth: int, loss: str) -> str:
    """The display label of the trained model of ``depth`` layers and ``loss``."""
    return f"trained {depth}-layer ({loss.upper()})"


def model_key(depth: int, loss: str) -> Key:
    """The key of the trained disentangled model of ``depth`` layers and ``loss``."""
    return Key("trained", model_kind="disentangled", depth=depth, loss=loss)




def tracking_rows(seed: int, task: MTDTask, model: TrainedPredictor, md: list[TunedMirrorDescent], cfg: Config
                  ) -> list[dict]:
    """Mean KL(p_MD^k || p_model) at each length: how close the model's predictions are to
    each k-step MD's (step size as tuned for the KL table)."""
    tokens, _ = task.sample(cfg.n_sequences, max(cfg.eval_lengths), generator=stream(seed, Stream.TRACKING))
    p_model = model.predict(tokens, task, cfg.eval_lengths)
    rows = []
    for pred in md:
        kl = kl_divergence(pred.predict(tokens, task, cfg.eval_lengths), p_model).mean(0)
        rows += [dict(seed=seed, length=L, k=pred.steps, kl_md_to_model=float(v)) for L, v in zip(cfg.eval_lengths, kl)]
    return rows


def readout_rows(seed: int, task: MTDTask, model: TrainedPredictor, tuned: TunedMirrorDescent, cfg: Config
                 ) -> tuple[list[dict], list[dict]]:
    """Per-layer step-size readout, with each layer's plug-in prediction at the training length;
    and, for each layer that attends to the lagged tokens (window mass >= 0.5), the ``beta(L)``
    of one- and two-step MD that best explains it at each evaluation length, beside one-step
    MD's tuned ``beta(L)``."""
    tokens, lam = task.sample(cfg.n_readout, cfg.length, generator=stream(seed, Stream.READOUT))
    with torch.no_grad():
        _, attn = model.model(tokens, return_attention=True)
    p_true = est.predictive(tokens, task.transition, lam)
    rows, by_length = agreement.md_step_readout(attn, tokens, task.transition, cfg.order), []
    for row, a in zip(rows, attn):
        w = agreement.lag_window(a[:, row["head"]].double(), cfg.order, 0)[:, -1]  # (B, M) at the last query
        lam_hat = w / w.sum(-1, keepdim=True).clamp_min(1e-300)
        row["plugin_kl"] = agreement.predictive_kl(p_true, est.predictive(tokens, task.transition, lam_hat))
        row.update(seed=seed, model=model.name, depth=model.key.depth, loss=model.key.loss)
        if row["window_mass"] >= 0.5:
            for k in (1, 2):
                for r in agreement.md_beta_by_length(a, tokens, task.transition, cfg.order, cfg.eval_lengths,
                                                     row["head"], steps=k):
                    by_length.append(dict(seed=seed, model=model.name, layer=row["layer"], steps=k, **r,
                                          tuned_beta=tuned.chosen_beta[r["length"]], depth=model.key.depth,
                                          loss=model.key.loss))
    return rows, by_length


def compute(cfg: Config, out: Path, progress: bool = True) -> dict[str, pd.DataFrame]:
    """Train (or reuse) the runs, then per seed: KL of Bayes, k-step MD, shared-step MD and every trained model per
    length, the main model's tracking rows, and each model's per-layer readout and beta(T) rows.  Returns the
    tables ``kl``, ``tracking``, ``readout``, ``betas`` and ``losses``."""
    runs = cfg.runs()
    paths = trained_runs(out, runs, cfg.jobs, progress)
    kl_tables, tracking, readout, betas = [], [], [], []
    for seed in cfg.seeds:
        task = family_task("mtd", vocab_size=cfg.vocab_size, order=cfg.order, seed=seed)
        trained = {(d, loss): TrainedPredictor.from_run(paths[seed, d, loss], model_name(d, loss))
                   for d in cfg.depths for loss in cfg.losses}
        md = [TunedMirrorDescent(steps=k) for k in cfg.md_steps]
        preds = [get_family("mtd").bayes_predictor(task), *md, TunedMirrorDescent(steps=1, shared=True), *trained.values()]
        table = evaluate_mtd(task, preds, cfg.eval_lengths, cfg.n_sequences, cfg.n_tune, seed=seed + Stream.EVALUATION, progress=progress)
        table.insert(0, "seed", seed)
        kl_tables.append(table)
        tracking += tracking_rows(seed, task, trained[cfg.depth, cfg.loss], md, cfg)
        for pred in trained.values():
            rows, by_length = readout_rows(seed, task, pred, md[0], cfg)
            readout, betas = readout + rows, betas + by_length
    kl = pd.concat(kl_tables, ignore_index=True)
    return {"kl": kl, "tracking": pd.DataFrame(tracking), "readout": pd.DataFrame(readout),
            "betas": pd.DataFrame(betas), "losses": loss_table(kl, cfg)}


def loss_table(kl: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """Mean KL over seeds of every trained model (depth x loss) at each length, and its ratio
    to one-step MD (tuned) at the training length."""
    summary = summarise(kl)
    md1 = summary[(summary.key == md_key(1).id) & (summary.length == cfg.length)]["kl_mean"]
    rows = []
    for d in cfg.depths:
        for loss in cfg.losses:
            g = summary[summary.key == model_key(d, loss).id].set_index("length")
            row = {"depth": d, "loss": loss, **{f"KL T={L}": g.loc[L, "kl_mean"] for L in cfg.eval_lengths}}
            row[f"ratio to MD 1-step at T={cfg.length}"] = g.loc[cfg.length, "kl_mean"] / float(md1.iloc[0])
            rows.append(row)
    return pd.DataFrame(rows)


def tracked(tracking: pd.DataFrame) -> pd.DataFrame:
    """Per length: the k whose MD predictions are closest to the model's, with every k's KL."""
    mean = tracking.groupby(["length", "k"])["kl_md_to_model"].mean().unstack("k")
    mean.columns = [f"KL(MD {k}-step || model)" for k in mean.columns]
    mean.insert(0, "tracks k", tracking.groupby(["length", "k"])["kl_md_to_model"].mean().unstack("k").idxmin(axis=1))
    return mean


def readout_summary(readout: pd.DataFrame) -> pd.DataFrame:
    """Mean over seeds per (model, layer); ``k`` and ``readable`` as the most common value."""
    g = readout.groupby(["model", "layer"], sort=False)
    agg = g[["window_mass", "gamma_mass", "beta", "fit_kl", "explained", "plugin_kl"]].mean()
    agg.insert(2, "k", g["k"].agg(lambda s: s.mode().iloc[0]))
    agg["readable"] = g["readable"].agg(lambda s: f"{int(s.sum())}/{len(s)}")
    agg["schedule (seed 0)"] = g["schedule"].first()
    return agg.reset_index()


def betas_summary(betas: pd.DataFrame) -> pd.DataFrame:
    """Mean ``beta`` and ``fit_kl`` over seeds per (model, layer, steps) at each length, with one-step MD's tuned
    beta as a last row; empty when no layer was read."""
    if betas.empty:
        return pd.DataFrame()
    g = betas.groupby(["model", "layer", "steps", "length"], sort=False)[["beta", "fit_kl"]].mean().unstack("length")
    g.columns = [f"{what} T={length}" for what, length in g.columns]
    tuned = betas.groupby("length")["tuned_beta"].mean()
    g = g[[f"{w} T={t}" for t in tuned.index for w in ("beta", "fit_kl")]]
    tuned_row = pd.DataFrame([{f"beta T={t}": b for t, b in tuned.items()}],
                             index=pd.MultiIndex.from_tuples([("one-step MD, tuned", "", 1)]))
    return pd.concat([g, tuned_row])


def draw(tables: dict[str, pd.DataFrame], cfg: Config):
    """Four panels: KL against length of the main model, k-step MD and Bayes; KL at the training length by depth and
    loss; per layer, the attention on the lags and the fraction k-step MD explains (main model, first seed); the
    one-step beta(T) of the layers MD explains, beside one-step MD's tuned beta(T)."""
    kl, readout = tables["kl"], tables["readout"]
    fig, axes = plt.subplots(1, 4, figsize=(22, 4.8))
    main = model_name(cfg.depth, cfg.loss)
    main_key = model_key(cfg.depth, cfg.loss)
    others = [model_key(d, cfg.loss) for d in cfg.depths if d != cfg.depth]
    keys = [BAYES, *[md_key(k) for k in cfg.md_steps], MD_SHARED, main_key, *others]
    summary = summarise(kl[kl.key.isin([k.id for k in keys])])
    shades = plt.cm.Blues(np.linspace(0.45, 0.95, len(cfg.md_steps)))
    styles = {BAYES.id: dict(color="black", lw=2.5), main_key.id: dict(color="tab:red", lw=2.5, marker="s"),
              MD_SHARED.id: dict(color="grey", ls=":")}
    styles.update({md_key(k).id: dict(color=c, ls="--") for k, c in zip(cfg.md_steps, shades)})
    styles.update({k.id: dict(color="tab:green", ls="-.") for k in others})
    kl_panel(axes[0], summary, f"{cfg.depth}-layer model vs k-step MD", styles)

    losses = tables["losses"]
    ax = axes[1]
    width = 0.8 / len(cfg.losses)
    spread = summarise(kl[kl.length == cfg.length]).set_index("key")
    for j, loss in enumerate(cfg.losses):
        g = losses[losses.loss == loss]
        keys_l = [model_key(d, loss).id for d in g["depth"]]
        ax.bar(np.arange(len(g)) + j * width, g[f"KL T={cfg.length}"], width,
               yerr=error_bars(spread.loc[keys_l])[0], capsize=3, label=loss.upper())
    for k in cfg.md_steps[:2]:
        ax.axhline(spread.loc[md_key(k).id, "kl_mean"], color=shades[k - 1], ls="--", lw=1, label=f"MD {k}-step")
    ax.axhline(spread.loc[BAYES.id, "kl_mean"], color="black", lw=1, label="Bayes")
    ax.set_xticks(np.arange(len(cfg.depths)) + width * (len(cfg.losses) - 1) / 2, [f"{d} layers" for d in cfg.depths])
    ax.set_ylabel(f"KL at T={cfg.length}")
    ax.set_title(f"cross-entropy vs MSE training ({error_bars(spread)[1]})", fontsize=9)
    ax.legend(fontsize=7)
    lo = min(spread["kl_mean"].min(), losses[f"KL T={cfg.length}"].min())
    ax.set_ylim(0.8 * lo, None)

    ax = axes[2]
    r = readout[(readout.depth == cfg.depth) & (readout.loss == cfg.loss) & (readout.seed == cfg.seeds[0])]
    x = r["layer"].to_numpy()
    ax.bar(x - 0.2, r["window_mass"], 0.4, label="attention on lagged tokens of y_{i+1}")
    ax.bar(x + 0.2, r["explained"].clip(lower=0), 0.4, label="fraction explained by k-step MD")
    for _, row in r.iterrows():
        if row["readable"]:
            ax.annotate(f"k={row['k']}\nβ={row['beta']:.2g}", (row["layer"], 1.02), ha="center", fontsize=7)
    ax.set_ylim(0, 1.25)
    ax.set_xticks(x)
    ax.set_xlabel("layer")
    ax.set_title(f"MD read off each layer ({main}, seed {cfg.seeds[0]})", fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    ax = axes[3]
    betas = tables["betas"]
    if not betas.empty:
        shown = [main_key, *others[-1:]]
        one = betas[(betas.steps == 1) & pd.Series(list(zip(betas.depth, betas["loss"]))).isin(
            [(k.depth, k.loss) for k in shown]).to_numpy()]
        for (name, layer), g in one.groupby(["model", "layer"], sort=False):
            if g[g.length == cfg.length]["fit_kl"].mean() > 0.05:
                continue  # this layer's attention on the lags is not an MD estimate (see the readout table)
            m = g.groupby("length")["beta"].agg(["mean", "std"])
            ax.errorbar(m.index, m["mean"], yerr=np.nan_to_num(m["std"].to_numpy()), marker="o", ms=3, capsize=2,
                        label=f"{name}, layer {layer}")
        tuned = betas.groupby("length")["tuned_beta"].mean()
        ax.plot(tuned.index, tuned.to_numpy(), "k--", lw=2, label="one-step MD, β tuned per length")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("β  (η = β / (m N))")
    ax.set_yscale("log")
    ax.set_title("one-step β(T) implemented by each layer on the lags (mean ± sd over seeds)", fontsize=9)
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, which="both")
    fig.suptitle(f"MTD Fig. 5: deeper transformers vs multi-step MD (q={cfg.vocab_size}, m={cfg.order}, "
                 f"training length {cfg.length})", fontsize=11)
    fig.tight_layout()
    return fig


def report(tables: dict[str, pd.DataFrame], cfg: Config) -> str:
    """Markdown: the KL table, which k-step MD the main model tracks, CE against MSE, the per-layer step-size
    readout and the beta(T) each attention-on-lags layer implements."""
    pivot = kl_pivot(summarise(tables["kl"]))
    return ("Mean KL(true ‖ predicted) of the next token\n\n" + pivot.to_markdown(floatfmt=".4g")
            + f"\n\nWhich k-step MD the {model_name(cfg.depth, cfg.loss)} model tracks (mean KL between predictions)\n\n"
            + tracked(tables["tracking"]).to_markdown(floatfmt=".3g")
            + "\n\nCross-entropy vs MSE (mean KL over seeds)\n\n" + tables["losses"].to_markdown(index=False, floatfmt=".4g")
            + "\n\nStep sizes read off each layer (mean over seeds)\n\n"
            + readout_summary(tables["readout"]).to_markdown(index=False, floatfmt=".3g")
            + "\n\nβ(T) of the k-step MD (k = 1, 2) each attention-on-lags layer implements at each length, "
            "beside one-step MD's tuned β(T) (mean over seeds)\n\n"
            + betas_summary(tables["betas"]).to_markdown(floatfmt=".3g"))


class Fig5(TrainedFigure):
    """``mtd-fig5``: deeper trained disentangled transformers against k-step MD and Bayes."""

    name, Config, presets = NAME, Config, PRESETS
    demo = dict(n_sequences=300, n_tune=150)

    def compute(self, cfg: Config, out: Path, progress: bool = True) -> Result:
        """The KL table, with the ``tracking``, ``readout``, ``betas`` and ``losses`` tables as extras."""
        tables = compute(cfg, out, progress)
        return Result(tables.pop("kl"), tables)

    def draw(self, result: Result, cfg: Config):
        """KL against length, CE against MSE, and the MD step sizes read off each layer."""
        return draw({"kl": result.table, **result.extra}, cfg)

    def report(self, result: Result, cfg: Config) -> str:
        """The KL, tracking, loss and step-size tables, as Markdown."""
        return report({"kl": result.table, **result.extra}, cfg)


FIGURE = Fig5()


# --- claims (``icmix.experiments.claims``) ------------------------------------------------

@FIGURE.claim("MTD",
              "A 5-layer transformer implements more than one MD step (it beats one-step MD)",
              "KL(5-layer) / KL(one-step MD, tuned η) at T={cfg.length}, and the k-step MD its predictions are "
              "closest to; holds if the ratio is below 1",
              bounds=(0.0, math.inf),
              trained=lambda tc, cfg: tc.model.params.get("n_layers") == cfg.depth and tc.loss == cfg.loss)
def deeper_is_multistep(c: Claim, out: Path, cfg) -> Claim:
    """KL of the main model (``depth``, ``loss``) over one-step MD's (tuned eta) at the training length, per seed;
    the k-step MD its predictions are closest to, in the value."""
    ratio = kl_ratio_to_md(out, "mtd-fig5", cfg.length, model_kind="disentangled", depth=cfg.depth, loss=cfg.loss)
    measured(c, ratio, 1, "<")
    track = select(read(out, "mtd-fig5-tracking"), "mtd-fig5-tracking", length=cfg.length)
    track = track.groupby("k")["kl_md_to_model"].mean()
    c.value += f"; closest to k = {int(track.idxmin())}"
    return c
