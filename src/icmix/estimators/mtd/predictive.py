"""Next-token predictive of an MTD model given lag weights."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from icmix._checks import as_lengths, as_tokens, as_transitions


def predictive(tokens, transition, lam, lengths: Sequence[int] | str | None = None) -> Tensor:
    """``p(y_{L+1} = j) = sum_g lam_g pi_g[y_{L+1-g}, j]`` after the prefix ``tokens[:, :L]``.

    Args:
        tokens: int ``(B, T)``; transition ``(Q, Q)`` shared by every lag (``pi_g = pi``), or
            ``(M, Q, Q)``, one per lag (``pi_g = transition[g - 1]``, MTDg).
        lam: ``(B, M)`` for the full sequence (``lengths=None``), or ``(B, P, M)`` with one
            row per prefix length in ``lengths``.

    Returns:
        ``(B, Q)`` or ``(B, P, Q)`` next-token distributions.
    """
    lam = torch.as_tensor(lam)
    m = lam.shape[-1]  # the order, read off lam's last axis
    if torch.as_tensor(transition).ndim == 3 and torch.as_tensor(transition).shape[0] != m:
        raise ValueError(f"lam has {m} lag weights per row but transition holds {torch.as_tensor(transition).shape[0]} "
                         "matrices (one per lag): they must agree")
    pi = as_transitions(transition, m)
    lam = lam.to(pi.dtype)
    tokens = as_tokens(tokens, pi.shape[-1], m, predict_only=True)
    lens = as_lengths(lengths, tokens.shape[1], m, predict_only=True)
    lam3 = lam[:, None] if lengths is None else lam
    if lam3.ndim != 3 or lam3.shape[:2] != (tokens.shape[0], len(lens)):
        want = f"({tokens.shape[0]}, {m})" if lengths is None else f"({tokens.shape[0]}, {len(lens)}, {m})"
        raise ValueError(f"lam must have shape {want}, got {tuple(lam.shape)}")
    lags = torch.arange(1, m + 1)
    idx = torch.tensor(lens)[:, None] - lags[None, :]  # (P, M) positions y_{L+1-g} (0-based L-g)
    src = tokens[:, idx]  # (B, P, M)
    rows = pi[lags - 1, src] if pi.ndim == 3 else pi[src]  # (B, P, M, Q): pi_g[y_{L+1-g}, :]
    probs = torch.einsum("bpm,bpmq->bpq", lam3, rows)
    return probs[:, 0] if lengths is None else probs
