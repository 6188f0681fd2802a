"""A transformer whose output is *exactly* one mirror-descent step under MTDg (SPEC §3).

**Why the paper's architecture cannot.**  Its layer 1 must put the responsibilities
``gamma_i(g) ∝ pi_g[y_{i-g}, y_i]`` on the offsets ``g = 1..M`` with one softmax, so its
scores must equal ``log pi_g[y_{i-g}, y_i]`` up to a shift that may depend on the query
alone.  A single head scores ``h_i^T A h_j + h_i^T R_A[i - j]`` on a stream of one-hot
tokens and positions: a sum of terms each of which reads at most two of (query token, key
token, offset), given the query's position.  So it is exact for every sequence only if
``log pi_g[a, b] = u(a, b) + v(g, a) + w(g, b)``: the table ``log pi_g[a, b]`` has no
three-way (lag × source × target) interaction.  MTD (``pi_g = pi``) has none; a generic
MTDg has one (``three_way_interaction`` measures it), so no weights of that architecture
compute the MD step, however many layers follow.

**What suffices.**  Two ReLU MLPs around the paper's three attention layers, one head each:

0. **Token–phase features** (``mlp_in``).  With the phase ``r_i = i mod M`` (linear in the
   one-hot position), ``f_i[(a, r)] = relu(1[y_i = a] + 1[r_i = r] - 1) = 1[y_i = a, r_i =
   r]``, a one-hot of width ``Q M``, exact in floating point.  The offset of two positions
   is determined mod M by their phases, and that is all a lag in ``1..M`` needs.
1. **Responsibilities.**  ``A[f (query) (b, r), f (key) (a, s)] = log pi_g[a, b]`` with
   ``g = ((r - s - 1) mod M) + 1``, the lag whose offset has that phase difference; ``R_A``
   masks every offset outside ``1..M`` as in the paper.  The softmax is ``gamma_i(g)`` and
   ``R_V`` writes it to slot g.
2. **Running mean** over the keys with a full lag history (the ``warmup`` marker, also
   linear in the position), exactly as in the paper.
3. **The MD step.**  ``softmax_g(beta avg_g)`` over offsets ``0..M-1``; the values copy each
   key's token–phase feature, so the block ``o_i = sum_g lam_g f_{i+1-g}``.
4. **Lag gating** (``mlp_out``).  The readout needs ``sum_g lam_g pi_g[y_{i+1-g}, :]``, which
   pairs each weight with its own lag's matrix: the lag of the key with phase s is
   ``g = ((r_i - s) mod M) + 1``, which depends on the *query's* phase.  Hidden units
   ``relu(o_i[(a, s)] - 1[r_i != r])`` equal ``o_i[(a, s)]`` exactly when ``r = r_i`` and 0
   otherwise (``0 <= o <= 1``); the output layer maps unit ``(r, a, s)`` to
   ``pi_g[a, :]``.  A linear readout cannot do this: the product of the query's phase and
   the attended block is needed.

So: 3 attention layers with one head each (the paper's), plus a ReLU MLP of width ``Q M``
before them and one of hidden width ``Q M^2`` after them.  With ``M = 1`` the phases are all
0 and it reduces to the paper's construction.  Masks and zeros of ``pi_g`` are handled as
in ``icmix.construct.mirror_descent`` (``LOG_ZERO``, ``MASK``); positions ``i < M`` are not
MD outputs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from icmix._checks import as_transitions, check_memory, check_model_tokens, check_order
from icmix.construct.mirror_descent import LOG_ZERO, MASK
from icmix.models.disentangled import DisentangledAttention, StreamLayout
from icmix.models.hooks import BlockHooks, HookPoint


def three_way_interaction(transition: Tensor) -> float:
    """The largest absolute three-way interaction of ``L[g, a, b] = log pi_g[a, b]`` (``(M, Q, Q)``): the
    part of ``L`` no sum ``u(a, b) + v(g, a) + w(g, b)`` explains (the ANOVA interaction
    term, its least-squares residual).  Zero iff the paper's single-head layer 1 can score
    lags exactly; ``nan`` if some entry is zero."""
    log = transition.double().log()
    if not torch.isfinite(log).all():
        return math.nan
    resid = (log - log.mean(0, keepdim=True) - log.mean(1, keepdim=True) - log.mean(2, keepdim=True)
             + log.mean((0, 1), keepdim=True) + log.mean((0, 2), keepdim=True) + log.mean((1, 2), keepdim=True)
             - log.mean())
    return resid.abs().max().item()


class PerLagMirrorDescentTransformer(nn.Module):
    """The MTDg construction above: ``model(tokens (B, T)) -> (B, T, Q)``, the one-step-MD
    predictive of ``y_{i+1}`` at every position ``i >= M``.  ``run_with_cache`` also returns
    each attention layer's pattern ``(B, 1, T, T)`` and the final stream; ``layouts[l]``
    names the stream's blocks before attention layer ``l + 1``.  Hook points: ``hook_embed``
    (one-hot tokens and positions), ``hook_features`` (the ``mlp_in`` features), the three
    blocks' (``blocks.{l}.hook_resid_pre``, ``.attn.hook_attn_scores``, ``.attn.hook_pattern``,
    ``.attn.hook_z``, ``.hook_attn_out``, ``.hook_resid_mid``, ``.hook_resid_post``), ``hook_gate``
    (the gating units) and ``hook_out``."""

    def __init__(self, q: int, m: int, max_length: int):
        super().__init__()
        self.q, self.m, self.max_length = q, m, max_length
        blocks = [("token", q), ("position", max_length)]
        self.hook_embed, self.hook_features = HookPoint(), HookPoint()
        self.mlp_in = nn.Linear(q + max_length, q * m + 1)  # token-phase features and the warmup marker
        blocks += [("token_phase", q * m), ("warmup", 1)]
        self.layouts = [StreamLayout(blocks)]
        self.attention = nn.ModuleList()
        for layer in (1, 2, 3):
            prev = self.layouts[-1]
            self.attention.append(DisentangledAttention(prev.width, 1, max_length, m + 1))
            blocks = blocks + [(f"attn{layer}.0/{n}", w) for n, w in prev.blocks] + [(f"attn{layer}.0/offset", m + 1)]
            self.layouts.append(StreamLayout(blocks))
        self.blocks = nn.ModuleList(BlockHooks(mlp=False) for _ in range(3))
        self.gate = nn.Linear(self.layouts[-1].width, m * q * m)  # hidden unit (r, a, s)
        self.hook_gate = HookPoint()
        self.readout = nn.Linear(m * q * m, q, bias=False)
        self.hook_out = HookPoint()

    @property
    def layout(self) -> StreamLayout:
        """Blocks of the final stream (after attention layer 3), the one the gating MLP ``gate`` reads."""
        return self.layouts[-1]

    def run_with_cache(self, tokens: Tensor) -> tuple[Tensor, dict]:
        """Output ``(B, T, Q)`` and a cache with ``stream`` (the final ``(B, T, D)``: one-hot tokens
        and positions, the ``mlp_in`` features, then each attention layer's output) and
        ``attention`` (three ``(B, 1, T, T)`` patterns)."""
        tokens = check_model_tokens(tokens, self.q, self.max_length)
        b, t = tokens.shape
        dtype = self.readout.weight.dtype
        x = torch.cat([nn.functional.one_hot(tokens, self.q).to(dtype),
                       nn.functional.one_hot(torch.arange(t, device=tokens.device), self.max_length)
                       .to(dtype).expand(b, t, -1)], dim=-1)
        x = self.hook_embed(x)
        h = torch.cat([x, self.hook_features(torch.relu(self.mlp_in(x)))], dim=-1)
        patterns = []
        for attn, hooks in zip(self.attention, self.blocks):
            h = hooks.hook_resid_pre(h)
            out, a = attn(h, hooks.attn)
            patterns.append(a)
            h = hooks.hook_resid_post(hooks.hook_resid_mid(torch.cat([h, hooks.hook_attn_out(out)], dim=-1)))
        return self.hook_out(self.readout(self.hook_gate(torch.relu(self.gate(h))))), {"stream": h, "attention": patterns}

    def forward(self, tokens: Tensor, return_attention: bool = False):
        """``(B, T, Q)``: the one-step-MD predictive of ``y_{i+1}`` at every position ``i >= M``;
        with ``return_attention`` also the three ``(B, 1, T, T)`` attention patterns."""
        out, cache = self.run_with_cache(tokens)
        return (out, cache["attention"]) if return_attention else out


def per_lag_mirror_descent_transformer(transition, order: int, beta: float, max_length: int,
                                       dtype: torch.dtype = torch.float64) -> PerLagMirrorDescentTransformer:
    """Build the MTDg construction (module docstring) for ``transition (M, Q, Q)``: its output
    at position i is ``sum_g lam_g pi_g[y_{i+1-g}, :]`` with ``lam`` one MD step from 1/M at
    ``eta = beta / (M (i + 1 - M))``, for every ``i >= M``.

    Raises:
        ValueError: not ``M`` valid matrices, ``order >= max_length``, or a non-finite or
        negative ``beta``.
    """
    m = check_order(order, max_length)
    pis = as_transitions(transition, m, dtype=torch.float64)
    if pis.ndim != 3:
        pis = pis.expand(m, -1, -1)  # one shared matrix: every lag uses it
    q = pis.shape[-1]
    if not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be finite and >= 0, got {beta!r}")
    width = 4 * (q + max_length + q * m + 1 + 2 * (m + 1)) + m * q * m
    check_memory(f"the MTDg construction with max_length {max_length:,}", 8 * 3 * width**2,
                 "choose a smaller max length")
    model = PerLagMirrorDescentTransformer(q, m, max_length).to(torch.float64)
    logs = pis.log().clamp_min(LOG_ZERO)  # (M, Q, Q)
    phase = torch.arange(max_length) % m
    tp = lambda a, r: a * m + r  # noqa: E731  index of feature (token a, phase r)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        s0 = model.layouts[0]
        # 0. f[(a, r)] = relu(1[y = a] + 1[phase = r] - 1); warmup = relu(1[position < M]).
        w, feats = model.mlp_in.weight, torch.arange(q * m)
        w[feats, feats // m] = 1.0  # the token part (columns 0..Q-1 of the input)
        w[:q * m, q:] = (phase[None, :] == (feats % m)[:, None]).double()
        model.mlp_in.bias[:q * m] = -1.0
        w[q * m, q:q + m] = 1.0
        # 1. Responsibilities: score of key j (phase s) for query i (phase r) = log pi_g[y_j, y_i].
        layer1, f = model.attention[0], s0["token_phase"]
        a_, r_, b_, s_ = torch.meshgrid(*(torch.arange(n) for n in (q, m, q, m)), indexing="ij")
        lag = (r_ - s_ - 1) % m  # 0-based lag index g - 1
        block = torch.zeros(q * m, q * m, dtype=torch.float64)
        block[tp(b_, r_).flatten(), tp(a_, s_).flatten()] = logs[lag.flatten(), a_.flatten(), b_.flatten()]
        layer1.A[0, f, f] = block
        layer1.R_A[0, :, s0["token"]] = MASK
        layer1.R_A[0, 1:m + 1, s0["token"]] = 0.0
        # 2. Uniform average over keys with a full lag history.
        s1 = model.layouts[1]
        model.attention[1].A[0, s1["token"], s1["warmup"]] = MASK
        # 3. softmax(beta * avg) over offsets 0..M-1 (lag g = offset + 1).
        s2, layer3 = model.layouts[2], model.attention[2]
        avg = s2["attn2.0/attn1.0/offset"]
        layer3.R_A[0, :, s2["token"]] = -(1e4 + abs(beta))
        for o in range(m):
            layer3.R_A[0, o, s2["token"]] = 0.0
            layer3.R_A[0, o, avg.start + o + 1] = beta
        # 4. Lag gating: unit (r, a, s) = relu(o[(a, s)] - 1[phase != r]) -> pi_g[a, :], g = ((r - s) mod M) + 1
        #    (o - 0 when the phase matches: no rounding of o, however small).
        s3 = model.layouts[3]
        o, pos = s3["attn3.0/token_phase"], s3["position"]
        r3, a3, s3_ = torch.meshgrid(*(torch.arange(n) for n in (m, q, m)), indexing="ij")
        unit = ((r3 * q + a3) * m + s3_).flatten()
        model.gate.weight[unit, o.start + tp(a3, s3_).flatten()] = 1.0
        model.gate.weight[unit, pos] = -(phase[None, :] != r3.flatten()[:, None]).double()
        model.readout.weight[:, unit] = pis[((r3 - s3_) % m).flatten(), a3.flatten()].T
    return model.to(dtype)
