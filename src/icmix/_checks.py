"""Input validation shared by tasks, estimators and the CLI.

Every public entry point validates its inputs here, once, so that a bad input gets the
same clear ``ValueError`` wherever it comes in.  Shapes glossary: B batch, T length,
Q vocabulary, M lags (order), P prefix lengths.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

ROW_SUM_ATOL = 1e-6


def as_transition(transition, dtype: torch.dtype | None = None) -> Tensor:
    """Validate a transition matrix and return it as a float tensor ``(Q, Q)``.

    Raises ``ValueError`` if it is not square, has NaN or negative entries, or a row does
    not sum to 1 (within ``1e-6``).  Integer inputs are promoted to float64.
    """
    pi = torch.as_tensor(np.asarray(transition) if not isinstance(transition, Tensor) else transition)
    if pi.ndim != 2 or pi.shape[0] != pi.shape[1]:
        raise ValueError(f"transition matrix must be square (Q, Q), got shape {tuple(pi.shape)}")
    if pi.shape[0] < 2:
        raise ValueError(f"transition matrix needs a vocabulary of at least 2, got {pi.shape[0]}")
    if dtype is None:
        dtype = pi.dtype if pi.is_floating_point() else torch.float64
    pi = pi.to(dtype)
    if torch.isnan(pi).any() or torch.isinf(pi).any():
        raise ValueError("transition matrix has NaN or infinite entries")
    if (pi < 0).any():
        i, j = (pi < 0).nonzero()[0].tolist()
        raise ValueError(f"transition matrix has a negative entry: pi[{i}, {j}] = {pi[i, j].item():.3g}")
    row_sums = pi.sum(dim=1)
    bad = (row_sums - 1).abs() > ROW_SUM_ATOL
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"transition matrix is not row-stochastic: row {i} sums to {row_sums[i].item():.6g} "
            f"(every row must sum to 1 within {ROW_SUM_ATOL})"
        )
    return pi


def as_transitions(transition, order: int, dtype: torch.dtype | None = None) -> Tensor:
    """Validate the transition matrices of an MTD model: one shared ``(Q, Q)`` matrix (MTD), or
    one per lag, ``(M, Q, Q)`` with lag g in ``transition[g - 1]`` (MTDg, SPEC §3).

    Each matrix is checked as ``as_transition`` checks one; a stack whose first axis is not
    the order M raises ``ValueError``.
    """
    pi = transition if isinstance(transition, Tensor) else torch.as_tensor(np.asarray(transition))
    if pi.ndim not in (2, 3):
        raise ValueError(f"transition must be (Q, Q), one matrix shared by every lag, or (M, Q, Q), one per lag; "
                         f"got shape {tuple(pi.shape)}")
    if pi.ndim == 2:
        return as_transition(pi, dtype)
    if pi.shape[0] != order:
        raise ValueError(
            f"one transition matrix per lag needs {order} matrices for order {order}, got {pi.shape[0]} "
            f"(shape {tuple(pi.shape)}); give (Q, Q) for one matrix shared by every lag")
    out = []
    for g in range(order):
        try:
            out.append(as_transition(pi[g], dtype))
        except ValueError as err:
            raise ValueError(f"transition[{g}] (lag {g + 1}): {err}") from None
    return torch.stack(out)


def check_order(order: int, length: int | None = None) -> int:
    """Validate the MTD order ``m`` (number of lags), and ``m < length`` if a length is given."""
    if isinstance(order, bool) or not isinstance(order, (int, np.integer)):
        raise ValueError(f"order must be an integer, got {order!r}")
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    if length is not None and order >= length:
        raise ValueError(
            f"order must be smaller than the sequence length: order={order} >= length={length} "
            "(the first `order` tokens have no full lag history, so nothing can be estimated)"
        )
    return int(order)


def as_tokens(tokens, vocab_size: int, order: int, predict_only: bool = False) -> Tensor:
    """Validate a token batch and return it as int64 ``(B, T)``.

    Raises ``ValueError`` for a shape other than ``(B, T)``, non-integer values, tokens
    outside ``[0, vocab_size)``, or ``order >= T``.  With ``predict_only`` (forming a
    predictive from given lag weights), ``T = order`` is allowed.
    """
    t = tokens if isinstance(tokens, Tensor) else torch.as_tensor(np.asarray(tokens))
    if t.ndim != 2:
        raise ValueError(
            f"tokens must have shape (B, T), got {tuple(t.shape)}; wrap a single sequence as tokens[None]"
        )
    if t.is_floating_point():
        if not torch.equal(t, t.round()):
            raise ValueError("tokens must be integers")
    elif t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"tokens must be integers, got dtype {t.dtype}")
    t = t.to(torch.int64)
    if t.shape[0] == 0:
        raise ValueError("tokens has an empty batch")
    check_order(order, t.shape[1] + int(predict_only))
    lo, hi = int(t.min()), int(t.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"tokens must lie in [0, {vocab_size}) for this transition matrix, found range [{lo}, {hi}]")
    return t


def _integers(lengths) -> list[int]:
    """The prefix lengths as ints (integral floats and one-element tensors accepted); ``ValueError``
    for another value or none at all."""
    out = []
    for x in lengths:
        if isinstance(x, Tensor) and x.numel() == 1:
            x = x.item()
        if isinstance(x, bool) or not (isinstance(x, (int, np.integer)) or (isinstance(x, (float, np.floating)) and float(x).is_integer())):
            raise ValueError(f"prefix lengths must be integers, got {x!r}")
        out.append(int(x))
    if not out:
        raise ValueError("lengths is empty")
    return out


def prefix_lengths(lengths: Sequence[int], length: int) -> Tensor:
    """The prefix lengths ``lengths`` of sequences of ``length`` tokens, as an int64 tensor: each an
    integer from 1 to ``length`` (``ValueError`` otherwise).  The check of every predictor that
    reads a prefix's last token."""
    out = _integers(lengths)
    if min(out) < 1 or max(out) > length:
        raise ValueError(f"lengths must be between 1 and the sequences' length {length}, got {out}")
    return torch.tensor(out, dtype=torch.int64)


def as_lengths(lengths: Sequence[int] | str | None, length: int, order: int, predict_only: bool = False) -> list[int]:
    """Resolve the prefix lengths to evaluate: ``None`` (the full sequence), ``"all"``
    (every prefix with at least one lag-complete transition, ``order+1 .. T``) or a list."""
    if lengths is None:
        return [length]
    if isinstance(lengths, str):
        if lengths != "all":
            raise ValueError(f"lengths must be None, 'all' or a list of ints, got {lengths!r}")
        return list(range(order + 1, length + 1))
    out = _integers(lengths)
    for x in out:
        if x > length:
            raise ValueError(f"prefix length {x} exceeds the sequence length {length}")
        check_order(order, x + int(predict_only))
    return out


def check_positive(name: str, value: float) -> float:
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_model_tokens(tokens, vocab_size: int, max_length: int | None = None):
    """Validate a model input: an integer tensor ``(B, T)`` with values in ``[0, vocab_size)``
    and ``T <= max_length`` (values are not checked on the ``meta`` device)."""
    if not isinstance(tokens, Tensor) or tokens.ndim != 2 or tokens.dtype.is_floating_point:
        raise ValueError(f"tokens must be an integer tensor of shape (B, T), got {getattr(tokens, 'shape', type(tokens))}")
    if max_length is not None and tokens.shape[1] > max_length:
        raise ValueError(f"input length {tokens.shape[1]} exceeds the model's max_length {max_length}")
    # (values are unknown on the meta device, where memory estimates run the model)
    if tokens.numel() and not tokens.is_meta and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"tokens must lie in [0, {vocab_size}), found [{int(tokens.min())}, {int(tokens.max())}]")
    return tokens


def check_nonnegative(name: str, value: float) -> float:
    if isinstance(value, bool) or not np.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def as_prompts(xs, ys) -> tuple[Tensor, Tensor]:
    """Validate regression prompts: ``xs (B, N, d)`` and ``ys (B, N)``, finite, ``N >= 1``.
    Returns float64 copies (views where possible)."""
    xs, ys = torch.as_tensor(xs), torch.as_tensor(ys)
    if xs.ndim != 3:
        raise ValueError(f"xs must have shape (B, N, d), got {tuple(xs.shape)}")
    if ys.shape != xs.shape[:2]:
        raise ValueError(f"ys must have shape (B, N) = {tuple(xs.shape[:2])} to match xs, got {tuple(ys.shape)}")
    if xs.shape[0] < 1 or xs.shape[1] < 1 or xs.shape[2] < 1:
        raise ValueError(f"prompts need B >= 1, N >= 1 points and d >= 1, got xs of shape {tuple(xs.shape)}")
    xs, ys = xs.to(torch.float64), ys.to(torch.float64)
    if not (torch.isfinite(xs).all() and torch.isfinite(ys).all()):
        raise ValueError("xs and ys must be finite")
    return xs, ys


def as_components(components, dim: int | None = None) -> Tensor:
    """Validate mixture components ``(m, d)``, ``m >= 1``, finite; ``d`` must equal ``dim``."""
    w = torch.as_tensor(components).to(torch.float64)
    if w.ndim != 2 or w.shape[0] < 1 or w.shape[1] < 1:
        raise ValueError(f"components must have shape (m, d) with m >= 1, got {tuple(w.shape)}")
    if dim is not None and w.shape[1] != dim:
        raise ValueError(f"components have dimension {w.shape[1]} but the prompts have d = {dim}")
    if not torch.isfinite(w).all():
        raise ValueError("components must be finite")
    return w


def available_memory() -> int:
    """Bytes of memory this process can still use: ``MemAvailable`` on Linux (the smaller of
    it and a cgroup limit, if one is set), else the physical memory."""
    avail = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            return 1 << 62
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            avail = min(avail, int(text))
    return avail


def format_bytes(n: float) -> str:
    """``56.4 GB``: decimal units, as disks and ``free -H`` count."""
    if abs(n) < 1000:
        return f"{n:.0f} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if abs(n) < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} PB"


def check_memory(what: str, nbytes: float, hint: str = "", available: int | None = None) -> None:
    """Refuse, before allocating, a size that comes from the user and does not fit in memory
    (``available`` bytes, default ``available_memory()``): ``ValueError`` with the estimate
    (``would need 44.1 GB``) and what is available."""
    avail = available_memory() if available is None else available
    if nbytes > avail:
        raise ValueError(f"{what} would need {format_bytes(nbytes)} of memory, more than the "
                         f"{format_bytes(avail)} available{'; ' + hint if hint else ''}")
