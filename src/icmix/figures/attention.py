"""Attention-map panels, one per layer (the paper's Figure 4, left)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor


def draw_attention_maps(patterns: list[Tensor], title: str = "", row_labels: str = "query position i",
                        head: int = 0, max_positions: int | None = None):
    """One panel per layer: ``patterns[l]`` is ``(H, T, T)`` (or ``(T, T)``) for one sequence."""
    fig, axes = plt.subplots(1, len(patterns), figsize=(4.2 * len(patterns), 4.0), squeeze=False)
    for layer, (ax, a) in enumerate(zip(axes[0], patterns), start=1):
        a = a.detach().double().cpu().numpy()
        a = a[head] if a.ndim == 3 else a
        if max_positions:
            a = a[:max_positions, :max_positions]
        im = ax.imshow(np.ma.masked_where(np.triu(np.ones_like(a), 1) > 0, a), cmap="viridis", vmin=0, vmax=max(1e-12, a.max()),
                       interpolation="nearest")
        ax.set_title(f"layer {layer}", fontsize=10)
        ax.set_xlabel("key position j")
        if layer == 1:
            ax.set_ylabel(row_labels)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def draw_head_maps(pattern: Tensor, title: str = "", row_labels: str = "query position i"):
    """One panel per head: ``pattern`` is one layer's ``(H, T, T)`` (a sequence's, or a batch mean)."""
    a_all = pattern.detach().double().cpu().numpy()
    heads = a_all.shape[0]
    fig, axes = plt.subplots(1, heads, figsize=(3.6 * heads + 0.6, 3.6), squeeze=False)
    for h, ax in enumerate(axes[0]):
        a = a_all[h]
        im = ax.imshow(np.ma.masked_where(np.triu(np.ones_like(a), 1) > 0, a), cmap="viridis", vmin=0,
                       vmax=max(1e-12, a.max()), interpolation="nearest")
        ax.set_title(f"head {h}", fontsize=10)
        ax.set_xlabel("key position j")
        if h == 0:
            ax.set_ylabel(row_labels)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def draw_pattern_comparison(trained: list[Tensor], reference: list[Tensor], labels: tuple[str, str],
                            titles: list[str] | None = None):
    """Two rows of ``(T, T)`` panels, one column per layer: ``trained[l]`` above ``reference[l]``,
    each row labelled by ``labels``."""
    n = len(trained)
    fig, axes = plt.subplots(2, n, figsize=(3.8 * n, 7.2), squeeze=False)
    for row, (maps, label) in enumerate(zip((trained, reference), labels)):
        for col, a in enumerate(maps):
            a = a.detach().double().cpu().numpy()
            ax = axes[row][col]
            im = ax.imshow(np.ma.masked_where(np.triu(np.ones_like(a), 1) > 0, a), cmap="viridis", vmin=0,
                           vmax=max(1e-12, a.max()), interpolation="nearest")
            ax.set_title(f"{label}: {titles[col] if titles else f'layer {col + 1}'}", fontsize=9)
            ax.set_xlabel("key position j")
            if col == 0:
                ax.set_ylabel("query position i")
            fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig
