"""The ``iid`` figure: KL(true ‖ predicted) of each of the family's predictors against the prefix
length, with a ``quick`` preset only, and its claim: the Bayes predictor beats add-½."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from icmix.experiments import Figure, Result
from icmix.experiments.claims import Claim, by_key, measured, read
from icmix.families import get_family
from icmix_iid.family import BAYES, KT


@dataclass(frozen=True)
class Config:
    vocab_size: int = 3
    alpha: float = 1.0
    lengths: tuple[int, ...] = (1, 2, 4, 8, 16)
    n_sequences: int = 2000
    seeds: tuple[int, ...] = (0, 1, 2)


class IIDFigure(Figure):
    name, Config, presets = "iid", Config, {"quick": Config()}

    def compute(self, cfg: Config, out: Path, progress: bool = True) -> Result:
        family = get_family("iid")
        task = family.build(family.spec(vocab_size=cfg.vocab_size, alpha=cfg.alpha))
        tables = [family.evaluate(task, family.predictors(task), cfg.lengths, cfg.n_sequences, seed=seed).assign(seed=seed)
                  for seed in cfg.seeds]
        return Result(pd.concat(tables, ignore_index=True))

    def draw(self, result: Result, cfg: Config):
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for label, rows in result.table.groupby("estimator"):
            curve = rows.groupby("length")["kl_mean"].mean()
            ax.plot(curve.index, curve.values, marker="o", label=label)
        ax.set(xscale="log", yscale="log", xlabel="prefix length", ylabel="KL(true ‖ predicted)")
        ax.legend(fontsize=8)
        return fig


FIGURE = IIDFigure()


@FIGURE.claim("Plugin", "The Bayes predictor beats add-½ at every prefix length",
              "largest KL(Bayes) / KL(add-½) over the lengths (mean over seeds); holds if < 1")
def bayes_beats_kt(c: Claim, out: Path, cfg: Config) -> Claim:
    kl = by_key(read(out, "iid"), ["seed", "length"], "kl_mean", [BAYES, KT], "iid")
    ratio = (kl[BAYES.id] / kl[KT.id]).unstack("length").max(axis=1)  # per seed, the worst length
    return measured(c, ratio, 1, "<")
