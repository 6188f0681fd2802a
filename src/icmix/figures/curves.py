"""KL-against-length panels shared by the MTD figures."""

from __future__ import annotations

import numpy as np
import pandas as pd


def kl_panel(ax, summary: pd.DataFrame, title: str = "", styles: dict | None = None, legend: bool = True) -> None:
    """Plot ``summary`` (``estimator, length, kl_mean, kl_ci, n_seeds``; see
    ``mtd_fig3.summarise``) as one error-bar curve per estimator, log scale."""
    styles = styles or {}
    for name, g in summary.groupby("estimator", sort=False):
        style = {"marker": "o", "ms": 3, **styles.get(name, {})}
        ax.errorbar(g["length"], g["kl_mean"], yerr=np.nan_to_num(g["kl_ci"].to_numpy()), capsize=2, label=name,
                    **style)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("KL(true ‖ predicted)")
    n_seeds = int(summary["n_seeds"].max()) if len(summary) else 1
    spread = f"95% CI over {n_seeds} seeds" if n_seeds > 1 else "95% CI over sequences"
    ax.set_title(f"{title} ({spread})" if title else spread, fontsize=9)
    if legend:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
