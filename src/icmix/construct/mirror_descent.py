"""A 3-layer disentangled transformer whose output is *exactly* one mirror-descent step (SPEC §1).

Model: ``DisentangledTransformer`` with one head per layer, a ``warmup`` marker
``w_j = 1[j < M]`` as its absolute-position input, and value offsets ``0..M``.  Position i
(0-based, ``i >= M``) sees the prefix ``y_0..y_i``, which has ``N = i + 1 - M``
lag-complete transitions ``t = M..i``; write ``gamma_t(g) = pi[y_{t-g}, y_t] / sum_h pi[y_{t-h}, y_t]``.

**Layer 1 — responsibilities.**  ``A[token, token] = (log pi)^T``, so the score of key j
for query i is ``log pi[y_j, y_i]``.  ``R_A[o]`` puts ``MASK`` on the token block for every
offset outside ``1..M``; since a one-hot token block sums to 1, that adds exactly ``MASK``
to those scores and 0 to offsets ``1..M``.  The softmax over the M visible keys is
``pi[y_{i-g}, y_i] / sum_h pi[y_{i-h}, y_i] = gamma_i(g)``.  ``R_V`` writes the weight of
offset o to slot o of ``attn1.0/offset``, so slot g holds ``gamma_i(g)`` exactly (up to
float rounding of one softmax).

**Layer 2 — running mean.**  ``A[token (query), warmup (key)] = MASK``: a key with full lag
history (``w_j = 0``) scores exactly 0, a warm-up key scores ``MASK``.  The softmax is
exactly uniform over keys ``j = M..i``, so slot g of ``attn2.0/attn1.0/offset`` holds
``avg_g = (1/N) sum_{t=M}^{i} gamma_t(g)``.

**Layer 3 — the MD step.**  ``A = 0``; ``R_A[o]`` for ``o = 0..M-1`` reads slot ``o+1`` of
that block with weight ``beta`` (lag ``g = o + 1`` is the key at offset o, which holds
``y_{i+1-g}``) and puts ``MASK`` on the token block for every other offset.  The softmax is
``softmax_g(beta avg_g) = softmax_g(eta M sum_t gamma_t(g))`` with ``eta = beta / (M N)``:
one MD step from ``1/M``.  The values carry each key's one-hot token, so
``attn3.0/token`` holds ``sum_g lam_g e_{y_{i+1-g}}``.

**Readout.**  ``W_O = pi^T`` on ``attn3.0/token`` gives ``sum_g lam_g pi[y_{i+1-g}, :]``, the
one-step-MD predictive of ``y_{i+1}``.

**Masks and zeros (exactness).**  A masked score sits at least 746 below every visible
score, so its ``exp`` underflows to exactly 0 in float64 (and float32).  Zeros of ``pi``
give ``log 0 = -inf``; the construction clamps ``log pi`` at ``LOG_ZERO = -2000``.  Every
positive float64 has ``log >= -745``, so a zero entry again gets weight exactly 0 whenever
some lag has a positive entry.  If every lag's entry is zero (a token impossible under
every lag) the M clamped scores tie and ``gamma`` is uniform, which is the convention of
``icmix.estimators.mtd.evidence`` (such rows carry no information).  ``MASK = -(1e4 +
|beta|)`` in layer 3 keeps its visible scores (in ``[0, beta]``) far above the mask.
Positions ``i < M`` have no lag-complete transition; their outputs are not MD outputs.
"""

from __future__ import annotations

import math

import torch

from icmix._checks import as_transition, check_memory, check_order
from icmix.models import DisentangledConfig, DisentangledTransformer
from icmix.models.base import model_bytes

LOG_ZERO = -2000.0
MASK = -1e4


def mirror_descent_transformer(
    transition, order: int, beta: float, max_length: int, dtype: torch.dtype = torch.float64
) -> DisentangledTransformer:
    """Build the 3-layer disentangled transformer computing one MD step at every position.

    Args:
        transition: ``(Q, Q)`` row-stochastic ``pi`` (zeros allowed).
        order: M.
        beta: inverse temperature of layer 3; position i uses ``eta = beta / (M (i + 1 - M))``.
        max_length: longest input the model accepts.
        dtype: parameter dtype (weights are computed in float64, then cast).

    Returns:
        A ``DisentangledTransformer``; ``model(tokens)[:, i]`` is the one-step-MD predictive
        of ``y_{i+1}`` for every ``i >= M``.

    Raises:
        ValueError: bad transition matrix, ``order >= max_length``, or a non-finite or
        negative ``beta``.
    """
    pi = as_transition(transition, dtype=torch.float64)
    q = pi.shape[0]
    m = check_order(order, max_length)
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be finite and >= 0, got {beta!r}")
    cfg = DisentangledConfig(vocab_size=q, n_layers=3, n_heads=1, max_length=max_length,
                             value_offsets=m + 1, positions="warmup", warmup=m)
    # float32 parameters, then their float64 copy (and a cast to ``dtype``): refused up front if too large.
    check_memory(f"the construction with max_length {max_length:,}",
                 3 * model_bytes(lambda: DisentangledTransformer(cfg)), "choose a smaller max length")
    model = DisentangledTransformer(cfg).to(torch.float64)
    in1, in2, in3 = model.layouts[0], model.layouts[1], model.layouts[2]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        # Layer 1: responsibilities gamma_i(g) over offsets 1..M.
        layer1 = model.attention[0]
        layer1.A[0, in1["token"], in1["token"]] = pi.log().clamp_min(LOG_ZERO).T
        layer1.R_A[0, :, in1["token"]] = MASK
        layer1.R_A[0, 1 : m + 1, in1["token"]] = 0.0
        # Layer 2: uniform average over keys with a full lag history.
        layer2 = model.attention[1]
        layer2.A[0, in2["token"], in2["warmup"]] = MASK
        # Layer 3: softmax(beta * avg) over offsets 0..M-1 (lag g = offset + 1).
        layer3 = model.attention[2]
        avg = in3["attn2.0/attn1.0/offset"]
        layer3.R_A[0, :, in3["token"]] = -(1e4 + abs(beta))
        for o in range(m):
            layer3.R_A[0, o, in3["token"]] = 0.0
            layer3.R_A[0, o, avg.start + o + 1] = beta
        # Readout: W_O = pi^T on the tokens copied by layer 3.
        model.readout.weight[:, model.layout["attn3.0/token"]] = pi.T
    return model.to(dtype)


def md_eta(beta: float, order: int, prefix_length) -> float:
    """The MD step size the construction uses after a prefix of ``prefix_length`` tokens."""
    return beta / (order * (prefix_length - order))
