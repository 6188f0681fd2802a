"""Attention-map panels, one per layer (the paper's Figure 4, left)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from torch import Tensor


def _panel(fig, ax, a: np.ndarray, title: str, ylabel: str | None) -> None:
    """One ``(T, T)`` causal map on ``ax``: the upper triangle masked, its own colour bar."""
    im = ax.imshow(np.ma.masked_where(np.triu(np.ones_like(a), 1) > 0, a), cmap="viridis", vmin=0,
                   vmax=max(1e-12, a.max()), interpolation="nearest")
    ax.set_title(title, fontsize=10 if len(title) < 24 else 9)
    ax.set_xlabel("key position j")
    if ylabel:
        ax.set_ylabel(ylabel)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)


def draw_attention_maps(patterns: list[Tensor], title: str = "", row_labels: str = "query position i",
                        head: int = 0, max_positions: int | None = None):
    """One panel per layer: ``patterns[l]`` is ``(H, T, T)`` (or ``(T, T)``) for one sequence."""
    fig, axes = plt.subplots(1, len(patterns), figsize=(4.2 * len(patterns), 4.0), squeeze=False)
    for layer, (ax, a) in enumerate(zip(axes[0], patterns), start=1):
        a = a.detach().double().cpu().numpy()
        a = a[head] if a.ndim == 3 else a
        if max_positions:
            a = a[:max_positions, :max_positions]
        _panel(fig, ax, a, f"layer {layer}", row_labels if layer == 1 else None)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def draw_head_maps(pattern: Tensor, title: str = "", row_labels: str = "query position i"):
    """One panel per head: ``pattern`` is one layer's ``(H, T, T)`` (a sequence's, or a batch mean)."""
    maps = pattern.detach().double().cpu().numpy()
    fig, axes = plt.subplots(1, maps.shape[0], figsize=(3.6 * maps.shape[0] + 0.6, 3.6), squeeze=False)
    for h, ax in enumerate(axes[0]):
        _panel(fig, ax, maps[h], f"head {h}", row_labels if h == 0 else None)
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
            _panel(fig, axes[row][col], a.detach().double().cpu().numpy(),
                   f"{label}: {titles[col] if titles else f'layer {col + 1}'}", "query position i" if col == 0 else None)
    fig.tight_layout()
    return fig
