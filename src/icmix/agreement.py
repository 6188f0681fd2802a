"""Numeric (not visual) agreement between a trained model and the construction / the algorithm.

Shapes: B batch, H heads, T length, Q vocabulary, M lags.
"""

from __future__ import annotations

import torch
from torch import Tensor

from icmix.metrics import kl_divergence


def attention_agreement(trained: Tensor, reference: Tensor, start: int) -> dict[str, float]:
    """Compare a trained layer's attention ``(B, H, T, T)`` with the construction's ``(B, T, T)``.

    Over query rows ``i >= start``, for the best-matching head: the mean cosine similarity
    of the rows, and the mean attention mass the trained head puts on the construction's
    support (keys where the construction's weight exceeds 1e-9).
    """
    tr = trained[:, :, start:].double()
    ref = reference[:, None, start:].double()
    cos = torch.nn.functional.cosine_similarity(tr, ref, dim=-1).mean(dim=(0, 2))  # (H,)
    support = (ref > 1e-9).to(tr.dtype)
    mass = (tr * support).sum(-1).mean(dim=(0, 2))  # (H,)
    h = int(cos.argmax())
    return {"cosine": cos[h].item(), "support_mass": mass[h].item(), "head": h}


def lag_offset_mass(attention: Tensor, order: int) -> float:
    """Mean attention mass on offsets ``1..M`` (the keys holding the M lagged tokens), over
    query rows ``i >= M`` and the best head.  ``attention``: ``(B, H, T, T)``."""
    t = attention.shape[-1]
    i = torch.arange(order, t)
    mass = sum(attention[:, :, i, i - g] for g in range(1, order + 1))  # (B, H, N)
    return mass.double().mean(dim=(0, 2)).max().item()


def lag_attention_tv(attention: Tensor, reference: Tensor, order: int) -> float:
    """Total variation between the trained layer-1 attention over the lag keys ``i-1..i-M``,
    renormalised to sum to 1, and the construction's (the responsibilities ``gamma_i``).

    This compares *how* attention is split among the lags, whatever mass sits elsewhere.
    Mean over query rows ``i >= M``; the best head.  ``attention (B, H, T, T)``,
    ``reference (B, T, T)``.
    """
    t = attention.shape[-1]
    i = torch.arange(order, t)
    lags = torch.stack([attention[:, :, i, i - g] for g in range(1, order + 1)], -1).double()  # (B, H, N, M)
    ref = torch.stack([reference[:, i, i - g] for g in range(1, order + 1)], -1).double()[:, None]
    lags = lags / lags.sum(-1, keepdim=True).clamp_min(1e-300)
    ref = ref / ref.sum(-1, keepdim=True)
    return (0.5 * (lags - ref).abs().sum(-1)).mean(dim=(0, 2)).min().item()


def transition_agreement(scores: Tensor, transition: Tensor) -> dict[str, float]:
    """Compare layer-1 token scores ``A[query token, key token] (Q, Q)`` with ``pi``.

    The construction has ``A = (log pi)^T``.  ``row_kl`` is the paper's measure: the mean
    over rows a of ``KL(pi[a] || softmax(A^T)[a])``.  Because attention is unchanged when a
    constant is added to a row of A (one per query token), only ``softmax_b A[a, b]`` is
    identified; ``attention_kl`` compares it with the normalised column ``pi[:, a]``, a
    measure that does not depend on that gauge.
    """
    pi = transition.double()
    a = scores.double()
    row_kl = kl_divergence(pi, torch.softmax(a.T, dim=-1)).mean().item()
    col = pi.T / pi.T.sum(-1, keepdim=True)  # row a: pi[:, a] normalised
    attention_kl = kl_divergence(col, torch.softmax(a, dim=-1)).mean().item()
    return {"row_kl": row_kl, "attention_kl": attention_kl}


def readout_agreement(weight: Tensor, transition: Tensor) -> dict[str, float]:
    """Compare a readout block ``(Q, Q)`` with ``pi^T``: cosine of the flattened matrices and
    the relative Frobenius error ``||W - pi^T|| / ||pi^T||``."""
    w, target = weight.double().flatten(), transition.double().T.flatten()
    return {"cosine": torch.nn.functional.cosine_similarity(w, target, dim=0).item(),
            "relative_error": ((w - target).norm() / target.norm()).item()}


def predictive_kl(p: Tensor, q: Tensor) -> float:
    """Mean ``KL(p || q)`` over a batch of next-token distributions."""
    return kl_divergence(p.double(), q.double()).mean().item()
