"""Circuit scores that work on any icmix model with ``blocks.{l}.attn.hook_pattern`` hook points.

Shapes: B batch, L layers, H heads, T length.  Scores are averaged over the batch and over the
query rows where they are defined, per layer and head.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from icmix.agreement import attention_agreement
from icmix.interp.hooks import hooks, run_with_cache


def attention_patterns(model: nn.Module, *inputs, **kwargs) -> list[Tensor]:
    """Each layer's attention pattern ``(B, H, T, T)`` on ``inputs`` (from ``blocks.{l}.attn.hook_pattern``)."""
    _, cache = run_with_cache(model, *inputs, names=lambda n: n.endswith("attn.hook_pattern"), **kwargs)
    return [cache[n] for n in cache.layers("attn.hook_pattern")]


def offset_mass(pattern: Tensor, offsets: Sequence[int], start: int | None = None) -> Tensor:
    """Per head ``(H,)``: the mean attention mass query ``i`` puts on the keys ``i - o``, ``o`` in
    ``offsets``, over query rows ``i >= start`` (default: the largest offset, where every key
    exists).  ``pattern``: ``(B, H, T, T)``."""
    t = pattern.shape[-1]
    start = max(offsets) if start is None else start
    if not 0 <= start < t or min(offsets) < 0:
        raise ValueError(f"offsets {list(offsets)} and start {start} do not fit length {t}")
    i = torch.arange(start, t, device=pattern.device)
    mass = sum(pattern[:, :, i, (i - o).clamp_min(0)] * (i >= o) for o in offsets)
    return mass.double().mean(dim=(0, 2))


def offset_profile(pattern: Tensor, max_offset: int, start: int | None = None) -> Tensor:
    """``(H, max_offset + 1)``: the mean mass on each offset ``0..max_offset`` (query rows
    ``i >= start``, default ``max_offset``)."""
    start = max_offset if start is None else start
    return torch.stack([offset_mass(pattern, [o], start) for o in range(max_offset + 1)], dim=-1)


def previous_token_score(pattern: Tensor) -> Tensor:
    """Per head ``(H,)``: the mean attention on the token just before the query (offset 1)."""
    return offset_mass(pattern, [1], start=1)


def repeated_sequences(vocab_size: int, period: int, batch: int, generator: torch.Generator | None = None) -> Tensor:
    """``(B, 2 * period)`` tokens: a random sequence of ``period`` tokens, then itself again: the
    standard probe for induction heads.  The first copy draws without replacement where the
    vocabulary allows (so each token's earlier occurrence is unique), uniformly otherwise."""
    if vocab_size >= period:
        first = torch.rand(batch, vocab_size, generator=generator).argsort(-1)[:, :period]
    else:
        first = torch.randint(vocab_size, (batch, period), generator=generator)
    return torch.cat([first, first], dim=1)


def induction_score(pattern: Tensor, tokens: Tensor, start: int = 1) -> Tensor:
    """Per head ``(H,)``: the mean attention mass query ``i`` puts on the keys ``j`` whose
    *previous* token equals its own (``tokens[j - 1] == tokens[i]``, ``1 <= j <= i``): the tokens
    that followed the current token before, which an induction head copies (Olsson et al. 2022;
    on a Markov chain, the "statistical induction head" of Edelman et al. 2024).  The query's own
    key is left out (``j < i``), so a head that attends to itself never counts.  Averaged over
    queries ``i >= start`` that have at least one such key.  On a repeated sequence of distinct
    tokens with period ``P`` the only such key is ``i - P + 1``, the classic induction target.
    ``pattern``: ``(B, H, T, T)``; ``tokens``: ``(B, T)``."""
    b, h, t, _ = pattern.shape
    if tokens.shape != (b, t):
        raise ValueError(f"tokens {tuple(tokens.shape)} do not match the pattern's (B, T) = ({b}, {t})")
    if not 0 <= start < t:
        raise ValueError(f"start must be in 0..{t - 1}, got {start}")
    targets = torch.zeros(b, t, t, dtype=torch.bool, device=pattern.device)
    targets[:, :, 1:] = tokens[:, None, :-1] == tokens[:, :, None]  # [b, i, j]: tokens[j - 1] == tokens[i]
    targets &= torch.ones(t, t, dtype=torch.bool, device=pattern.device).tril(-1)
    targets[:, :start] = False
    rows = targets.any(-1)  # (B, T): queries with a target
    if not rows.any():
        raise ValueError("no query has an earlier occurrence of its token")
    mass = (pattern.double() * targets[:, None]).sum(-1)  # (B, H, T)
    return (mass * rows[:, None]).sum(dim=(0, 2)) / rows.sum()


def head_scores(model: nn.Module, vocab_size: int, period: int = 16, batch: int = 64, lags: int | None = None,
                seed: int = 0) -> pd.DataFrame:
    """One row per layer (from 0) and head of a token model: ``previous_token`` and ``induction``
    (in the second copy) on repeated random sequences of ``period`` tokens, and with ``lags`` the ``lag_mass`` on offsets
    ``1..lags`` (the MTD lags) on the same sequences' first copy."""
    g = torch.Generator().manual_seed(seed)
    tokens = repeated_sequences(vocab_size, period, batch, g)
    with torch.no_grad():
        patterns = attention_patterns(model, tokens)
    rows = []
    for layer, p in enumerate(patterns):
        prev, ind = previous_token_score(p), induction_score(p, tokens, start=period)
        lag = offset_mass(p[..., :period, :period], range(1, lags + 1)) if lags else None
        for h in range(p.shape[1]):
            row = {"layer": layer, "head": h, "previous_token": prev[h].item(), "induction": ind[h].item()}
            if lags:
                row["lag_mass"] = lag[h].item()
            rows.append(row)
    return pd.DataFrame(rows)


def construction_agreement(patterns: Sequence[Tensor], reference: Sequence[Tensor], start: int) -> pd.DataFrame:
    """Layer by layer, each trained layer's pattern ``(B, H, T, T)`` against the construction's
    ``(B, 1, T, T)`` (or ``(B, T, T)``), over query rows ``i >= start``: the best head's mean row
    cosine and its mass on the construction's support (``agreement.attention_agreement``)."""
    rows = []
    for layer, (p, r) in enumerate(zip(patterns, reference)):
        r = r[:, 0] if r.ndim == 4 else r
        rows.append({"layer": layer, **attention_agreement(p, r, start)})
    return pd.DataFrame(rows)


def _position_dim(name: str) -> int:
    """The sequence (query) dimension of the activation at hook point ``name``."""
    return 2 if name.endswith(("hook_pattern", "hook_attn_scores")) else 1


def activation_patching(model: nn.Module, clean: Sequence, corrupt: Sequence, metric: Callable[[object], Tensor],
                        names=None, position: int | None = None, **kwargs) -> pd.DataFrame:
    """Patch each hook point's clean activation into the corrupt run, one at a time, and measure.

    ``clean`` and ``corrupt`` are the model's inputs (tuples) for two runs of the same shapes;
    ``metric(output) -> scalar``.  ``position``: patch only that sequence position (the query
    position of scores and patterns), e.g. ``-1``; default, the whole activation.  The hook
    points must then agree on the sequence's length (``ValueError`` otherwise: the regression GPT's
    ``hook_out`` holds N predictions, its stream 2N tokens).  For each hook
    point ``names`` picks (default: all; one whose clean and corrupt shapes differ is skipped),
    one row: ``metric`` of the patched run, ``effect`` (that minus the corrupt run's metric) and
    ``fraction``, the effect over the clean run's metric minus the corrupt run's (1: the hook point
    carries all the difference the metric sees; 0: none of it).
    """
    with torch.no_grad():
        clean_out, clean_cache = run_with_cache(model, *clean, names=names, **kwargs)
        corrupt_out, corrupt_cache = run_with_cache(model, *corrupt, names=list(clean_cache), **kwargs)
        m_clean, m_corrupt = float(metric(clean_out)), float(metric(corrupt_out))
        if position is not None:  # one position must mean one token at every hook point
            lengths = {n: t.shape[_position_dim(n)] for n, t in clean_cache.items() if t.ndim > 1}
            if len(set(lengths.values())) > 1:
                by_length = {}
                for n, length in lengths.items():
                    by_length.setdefault(length, n)
                raise ValueError(f"position={position} is ambiguous: the hook points' sequences differ in length "
                                 f"({', '.join(f'{n}: {k}' for k, n in by_length.items())}); pick hook points "
                                 "of one length with names")
        rows = []
        for name, patched in clean_cache.items():
            if patched.shape != corrupt_cache[name].shape:
                continue
            if position is None:
                hook = (lambda t, n, patched=patched: patched)
            else:
                dim = _position_dim(name)

                def hook(t, n, patched=patched, dim=dim):
                    out = t.clone()
                    out.select(dim, position).copy_(patched.select(dim, position))
                    return out
            with hooks(model, [(name, hook)]):
                out = model(*corrupt, **kwargs)
            m = float(metric(out))
            gap = m_clean - m_corrupt
            rows.append({"hook": name, "metric": m, "effect": m - m_corrupt,
                         "fraction": (m - m_corrupt) / gap if gap else float("nan")})
    return pd.DataFrame(rows)
