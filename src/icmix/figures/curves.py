"""KL-against-length panels shared by the MTD figures."""

from __future__ import annotations

import numpy as np
import pandas as pd


def error_bars(summary: pd.DataFrame) -> tuple[np.ndarray, str]:
    """``yerr (2, n)`` and its label: the 95% CI over seeds from 5 seeds on; with 2-4 seeds
    (where a t-interval is many times the spread) the range over seeds; with one seed the
    95% CI over sequences."""
    n = int(summary["n_seeds"].max()) if len(summary) else 1
    if 1 < n < 5:
        mean = summary["kl_mean"].to_numpy()
        err = np.stack([mean - summary["kl_min"].to_numpy(), summary["kl_max"].to_numpy() - mean])
        return np.nan_to_num(err), f"range over {n} seeds"
    ci = np.nan_to_num(summary["kl_ci"].to_numpy())
    return np.stack([ci, ci]), f"95% CI over {n} seeds" if n > 1 else "95% CI over sequences"


def kl_panel(ax, summary: pd.DataFrame, title: str = "", styles: dict | None = None, legend: bool = True) -> None:
    """Plot ``summary`` (``key, estimator, length, kl_mean, kl_ci, n_seeds``; see
    ``mtd_fig3.summarise``) as one error-bar curve per predictor ``key``, labelled with its
    display label; ``styles`` maps key ids (``Key.id``) to line styles."""
    styles = styles or {}
    for key, g in summary.groupby("key", sort=False):
        style = {"marker": "o", "ms": 3, **styles.get(key, {})}
        ax.errorbar(g["length"], g["kl_mean"], yerr=error_bars(g)[0], capsize=2, label=g["estimator"].iloc[0], **style)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("KL(true ‖ predicted)")
    spread = error_bars(summary)[1]
    ax.set_title(f"{title} ({spread})" if title else spread, fontsize=9)
    if legend:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")


def mean_band(ax, curve: pd.DataFrame, label: str, **style) -> None:
    """A mean curve with a shaded band: ``curve`` indexed by x with columns ``mean, min, max``."""
    ax.plot(curve.index, curve["mean"], label=label, **style)
    ax.fill_between(curve.index, curve["min"], curve["max"], alpha=0.15, color=style.get("color"))


def prompt_length_axis(ax, ylabel: str, title: str, log: bool = False) -> None:
    """Axes of a regression panel against the prompt length k."""
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("prompt length k (pairs seen)")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3, which="both" if log else "major")
