"""The per-transition lag evidence ``c[b, t, g-1] = pi_g[y_{t-g}, y_t]`` shared by every MTD estimator.

All MTD estimators of the lag weights see a sequence only through ``c`` (SPEC §1): the
log-likelihood is ``l(lam) = sum_t log(sum_g lam_g c_tg)``.  With one transition matrix
shared by every lag (MTD) ``pi_g = pi``; with one per lag (MTDg, SPEC §3) ``pi_g =
transition[g - 1]``.  Only ``c`` changes between the two, so every estimator serves both.  ``LagEvidence`` holds ``c``
for a batch together with the prefix lengths to estimate at, so that every estimator is
vectorised over the batch *and* over prefixes with one code path.

Shapes: B batch, T length, N = T - M transitions, M lags, P prefix lengths.

Convention for impossible transitions: if ``pi[y_{t-g}, y_t] = 0`` for *every* lag g, the
token is impossible under every lag weight and the row carries no information about
``lam`` (the likelihood factor is 0 for all ``lam``).  Such rows are replaced by ones, a
constant factor, which leaves the posterior, the MLE and mirror descent unchanged and
keeps every estimator finite.  Data sampled from the model never has such rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from icmix._checks import as_lengths, as_tokens, as_transitions

# Elements per temporary (B, P, N) block when prefixes are expanded; bounds memory.
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class LagEvidence:
    """Lag evidence of a batch, with the prefix lengths at which to estimate.

    Attributes:
        c: ``(B, N, M)`` evidence rows, ``N = max(lengths) - M``.
        lengths: prefix lengths (number of tokens), each ``> M``.
    """

    c: Tensor
    lengths: tuple[int, ...]

    @property
    def order(self) -> int:
        """M, the number of lags (the last axis of ``c``)."""
        return self.c.shape[-1]

    @property
    def n_rows(self) -> Tensor:
        """``(P,)`` number of evidence rows seen by each prefix, ``L_p - M``."""
        return torch.tensor(self.lengths, device=self.c.device) - self.order

    @property
    def mask(self) -> Tensor:
        """``(P, N)`` float mask: row t belongs to prefix p."""
        n = self.c.shape[1]
        return (torch.arange(n, device=self.c.device)[None, :] < self.n_rows[:, None]).to(self.c.dtype)

    def responsibility_sums(self) -> Tensor:
        """``(B, P, M)``: ``sum_{t in prefix} gamma_t(g)``, responsibilities at uniform ``lam``.

        One cumulative sum serves every prefix.
        """
        gamma = self.c / self.c.sum(-1, keepdim=True)
        # Sum the segments between consecutive requested prefix ends, then accumulate:
        # one pass over the rows however many prefixes are asked for.
        ends = sorted(set(self.n_rows.tolist()))
        starts = [0] + ends[:-1]
        seg = torch.stack([gamma[:, a:b].sum(1) for a, b in zip(starts, ends)], dim=1)  # (B, S, M)
        csum = seg.cumsum(1)
        return csum[:, [ends.index(n) for n in self.n_rows.tolist()]]

    def _chunks(self, n_prefix: int):
        b, n, _ = self.c.shape
        step = max(1, _CHUNK_ELEMENTS // max(1, n_prefix * n))
        for start in range(0, b, step):
            yield slice(start, min(b, start + step))

    def mixture(self, lam: Tensor, rows: slice) -> Tensor:
        """``s[b, p, t] = sum_g lam[b, p, g] c[b, t, g]`` for a batch slice, floored at the
        smallest normal float so that ``c / s`` stays finite."""
        s = torch.einsum("bpm,btm->bpt", lam[rows], self.c[rows])
        return s.clamp_min(torch.finfo(s.dtype).tiny)

    def gradient(self, lam: Tensor) -> Tensor:
        """``(B, P, M)``: ``grad_g l(lam) = sum_{t in prefix} c_tg / s_t`` at ``lam (B, P, M)``."""
        out = torch.empty_like(lam)
        mask = self.mask
        for rows in self._chunks(lam.shape[1]):
            w = mask / self.mixture(lam, rows)
            out[rows] = torch.einsum("bpt,btm->bpm", w, self.c[rows])
        big = torch.finfo(out.dtype).max / 16
        return torch.nan_to_num(out, posinf=big)

    def log_likelihood(self, lam: Tensor) -> Tensor:
        """``(B, P)``: ``l(lam) = sum_{t in prefix} log s_t``."""
        out = torch.empty(lam.shape[:2], dtype=lam.dtype, device=lam.device)
        mask = self.mask
        for rows in self._chunks(lam.shape[1]):
            out[rows] = (self.mixture(lam, rows).log() * mask).sum(-1)
        return out


def lag_evidence(tokens, transition, order: int, lengths: Sequence[int] | str | None = None) -> LagEvidence:
    """Validate inputs and build the lag evidence.

    Args:
        tokens: int ``(B, T)``.
        transition: ``(Q, Q)`` row-stochastic, shared by every lag, or ``(M, Q, Q)``, one per lag.
        order: M.
        lengths: ``None`` (the full sequence), ``"all"`` (prefixes ``M+1 .. T``) or a list.
    """
    pi = as_transitions(transition, order)
    q = pi.shape[-1]
    tokens = as_tokens(tokens, q, order)
    lens = as_lengths(lengths, tokens.shape[1], order)
    t_max = max(lens)
    scaled = tokens[:, :t_max] * q
    # Flat index of pi_g[y_{t-g}, y_t]: lag g's matrix starts at (g - 1) Q^2 in a stack.
    first = [(g - 1) * q * q if pi.ndim == 3 else 0 for g in range(1, order + 1)]
    flat = torch.stack([scaled[:, order - g : t_max - g] + first[g - 1] for g in range(1, order + 1)], dim=-1)
    flat += tokens[:, order:t_max, None]  # (B, N, M)
    c = torch.take(pi, flat)  # a flat gather is much faster than pi[i, j]
    impossible = c.sum(-1) == 0
    if impossible.any():
        c[impossible] = 1.0
    return LagEvidence(c=c, lengths=tuple(lens))


def squeeze_prefixes(x: Tensor, lengths) -> Tensor:
    """Drop the prefix axis ``(B, 1, ...) -> (B, ...)`` when the caller asked for the full sequence."""
    return x[:, 0] if lengths is None else x
