"""A 3-block transformer whose prediction is the posterior mean of a regression mixture
(Pathak et al., ICLR 2024, Theorem 1; SPEC §2), built from real layers.

The model reads the prompt as the trained ``RegressionGPT`` does, tokens ``x_1, y_1, x_2,
y_2, ...`` with ``y`` padded to width d, and answers at the token of ``x_j``.  Before the
prompt sit ``m`` *register* tokens (parameters, like prefix or memory tokens): register c
holds a one-hot ``e_c`` and the component ``w_c``.  Write ``t`` for a stream position
(registers ``0..m-1``, then ``x_j`` at ``m + 2j`` and ``y_j`` at ``m + 2j + 1``).  Every
block writes into its own named slice of the residual stream (``model.layout``); there is
no LayerNorm, and attention scores are plain ``q . k`` (no ``1/sqrt(d)``).

Positional features (a fixed embedding table): ``one``, ``t``, ``t^2``, ``count = t + 1``,
``is_y`` (a y token), ``t_is_y = t * is_y``, ``is_tok`` (a prompt token, not a register) and
``is_sink`` (position 0, a register whose prompt slots are zero).

**Block 1, attention: copy (Akyürek et al.'s copy_over).**  Two heads, ``L = SHARP``:

- head ``x``: ``score(t, s) = L is_y(t) (2 (t-1) s - s^2) + L (1 - is_y(t)) is_sink(s)``.  For a
  y query this is ``L ((t-1)^2 - (t-1-s)^2)``, largest at ``s = t - 1`` (the pair's x) and at
  least ``L`` lower elsewhere; any other query scores ``L`` on the sink and 0 elsewhere.
  ``q = (2L t_is_y - 2L is_y, -L is_y, L one - L is_y)``, ``k = (t, t^2, is_sink)``: linear
  maps of the stream.  The value is the token slot, written to ``x_prev``.
- head ``y``: the same with ``2 t s - s^2`` (the y token itself); value: the token's first
  coordinate, written to ``y_own``.

With ``L = 1000`` every other weight is ``exp(-1000)``, which is exactly 0 in float64 and
float32: at ``y_i`` the block holds ``(x_i, y_i)`` exactly, elsewhere ``(0, 0)``.

**Block 1, MLP: residuals and their squares (aff, mul).**  ``r_c = <w_c, x_prev> - y_own``
(zero off the y tokens) is the first linear map; its square goes to ``sq``:

- ``bilinear``: ``(W_a h) * (W_b h)`` with ``W_a = W_b``: exact;
- ``gelu``: ``GELU(eps r) + GELU(-eps r) = eps r erf(eps r / sqrt 2)
  = sqrt(2/pi) (eps r)^2 (1 - (eps r)^2 / 6 + ...)``, so two hidden units and the output
  weight ``1 / (sqrt(2/pi) eps^2)`` give ``r^2`` with relative error about ``(eps r)^2 / 6``
  (``eps`` is the knob; rounding limits it from below, ``~1e-16 / (eps |r|)``).

**Block 2, attention: running mean (scaled_agg).**  ``q = k = 0``: the causal softmax is
exactly uniform, so ``mean_sq_c(t) = (1/(t+1)) sum_{s <= t} r_c(s)^2`` (registers and x tokens
contribute 0).

**Block 2, MLP: the logits (mul).**  ``logit_c = -count * mean_sq_c / (2 sigma^2)
= -sum_{i<j} (<w_c, x_i> - y_i)^2 / (2 sigma^2)`` at ``x_j``: a product of two stream entries,
``ab = ((a + b)^2 - (a - b)^2) / 4`` with the squares as above (four GELU units, or one gate).

**Block 3, attention: the softmax over the components (soft).**  ``q = (logit_1..m, 1)``,
``k = (e_c, MASK is_tok)``: register c scores ``logit_c``, a prompt token scores ``MASK``.
The softmax over the registers is ``softmax_c(logit_c)``, the posterior over the components,
and the value ``w_c`` makes ``w_hat = sum_c p_c w_c``, the posterior mean of ``w``.  Exact
when ``min_c sum (<w_c, x_i> - y_i)^2 / (2 sigma^2) < |MASK| - 746`` (``MASK = -1e8``).

**Block 3, MLP: the prediction (mul).**  ``out = <w_hat, x_j>`` (the token slot): d products.
**Readout:** ``out`` at the x tokens.

Compared with the paper's proof (copy_down, copy_over, aff, mul, scaled_agg, soft, with the
softmax built from sigmoids, div and mov), registers let one attention layer compute the
softmax over the components exactly, so the whole circuit is 3 attention + 3 MLP layers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from icmix._checks import as_components, check_memory, check_positive, check_positive_int
from icmix.models.base import model_bytes
from icmix.models.hooks import AttentionHooks, BlockHooks, HookPoint

SHARP = 1000.0  # copy-attention margin: exp(-1000) == 0 in float64 and float32
MASK = -1e8  # score of the prompt tokens in the softmax-over-components layer
DEFAULT_EPS = 1e-5  # GELU squaring scale (the knob of the "gelu" variant)
MLP_KINDS = ("gelu", "bilinear")
_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)


@dataclass(frozen=True)
class Layout:
    """Named slices of the residual stream."""

    blocks: dict[str, slice]

    @classmethod
    def build(cls, sizes: dict[str, int]) -> Layout:
        """Consecutive slices from 0, one per ``name: size`` of ``sizes``, in their order."""
        blocks, start = {}, 0
        for name, size in sizes.items():
            blocks[name] = slice(start, start + size)
            start += size
        return cls(blocks)

    @property
    def width(self) -> int:
        """The stream's width: the end of the last slice."""
        return max(s.stop for s in self.blocks.values())

    def __getitem__(self, name: str) -> slice:
        return self.blocks[name]

    def index(self, name: str, i: int = 0) -> int:
        """The stream index of entry ``i`` of block ``name``."""
        return self.blocks[name].start + i


POSITION_FEATURES = ("one", "t", "t2", "count", "is_y", "t_is_y", "is_tok", "is_sink")


class Attention(nn.Module):
    """Causal multi-head softmax attention with unscaled scores ``q . k``; each head's output is
    added to the stream through ``o``."""

    def __init__(self, width: int, heads: int, head_dim: int, dtype: torch.dtype):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q, self.k, self.v = (nn.Linear(width, heads * head_dim, bias=False, dtype=dtype) for _ in range(3))
        self.o = nn.Linear(heads * head_dim, width, bias=False, dtype=dtype)
        for lin in (self.q, self.k, self.v, self.o):
            nn.init.zeros_(lin.weight)

    def forward(self, h: Tensor, hooks: AttentionHooks | None = None) -> tuple[Tensor, Tensor]:
        """``h (B, T, D)`` -> ``(o(heads' outputs) (B, T, D), weights (B, H, T, T))``, the weights
        the causal softmax of ``q . k``.  ``hooks``: the layer's hook points (``hook_q``, ``hook_k``,
        ``hook_v``, ``hook_z`` ``(B, T, H, d_head)``; ``hook_attn_scores``, ``hook_pattern``)."""
        b, t, _ = h.shape
        hook = (lambda name, x: getattr(hooks, name)(x)) if hooks is not None else (lambda name, x: x)  # noqa: E731
        split = lambda name, x: hook(name, x.view(b, t, self.heads, self.head_dim)).transpose(1, 2)  # noqa: E731
        q, k, v = split("hook_q", self.q(h)), split("hook_k", self.k(h)), split("hook_v", self.v(h))
        scores = q @ k.transpose(-1, -2)
        causal = torch.ones(t, t, dtype=torch.bool, device=h.device).tril()
        weights = hook("hook_pattern", torch.softmax(hook("hook_attn_scores", scores.masked_fill(~causal, -torch.inf)),
                                                     dim=-1))
        out = hook("hook_z", (weights @ v).transpose(1, 2)).reshape(b, t, -1)
        return self.o(out), weights


class MLP(nn.Module):
    """``out(GELU(inp(h)))`` or, for ``bilinear``, ``out(gate_a(h) * gate_b(h))``."""

    def __init__(self, width: int, hidden: int, kind: str, dtype: torch.dtype):
        super().__init__()
        self.kind = kind
        self.inp = nn.Linear(width, hidden, bias=False, dtype=dtype)
        self.gate = nn.Linear(width, hidden, bias=False, dtype=dtype) if kind == "bilinear" else None
        self.out = nn.Linear(hidden, width, bias=False, dtype=dtype)
        for lin in (self.inp, self.gate, self.out):
            if lin is not None:
                nn.init.zeros_(lin.weight)

    def forward(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """``h (B, T, D)`` -> ``(out (B, T, D), pre)``, ``pre = inp(h)`` being the first linear map
        before the GELU or the gate."""
        pre = self.inp(h)
        hidden = pre * self.gate(h) if self.kind == "bilinear" else F.gelu(pre)
        return self.out(hidden), pre


class PosteriorMeanTransformer(nn.Module):
    """The constructed model (see the module docstring).  ``model(xs (B, N, d), ys (B, N))``
    returns ``(B, N)``: column j is the posterior mean of ``y_j`` given pairs ``0..j-1`` and
    ``x_j``.  ``run_with_cache`` also returns the stream after each layer, the attention
    weights and the MLPs' first linear maps.  Hook points: ``hook_embed`` (the stream entering
    block 0: registers, read-in and positions), each block's (``blocks.{l}.hook_resid_pre``,
    ``.attn.hook_q``, ``_k``, ``_v``, ``_attn_scores``, ``_pattern``, ``_z``, ``.hook_attn_out``,
    ``.hook_resid_mid``, ``.hook_mlp_out``, ``.hook_resid_post``) and ``hook_out``."""

    def __init__(self, dim: int, n_components: int, max_points: int, mlp: str, dtype: torch.dtype):
        super().__init__()
        self.dim, self.n_components, self.max_points, self.mlp_kind = dim, n_components, max_points, mlp
        d, m = dim, n_components
        self.layout = Layout.build({
            "tok": d, "pos": len(POSITION_FEATURES), "reg_onehot": m, "reg_w": d,  # inputs
            "x_prev": d, "y_own": 1,  # block 1 attention
            "sq": m,  # block 1 MLP: squared residuals
            "mean_sq": m,  # block 2 attention
            "logit": m,  # block 2 MLP
            "w_hat": d,  # block 3 attention
            "out": 1,  # block 3 MLP
        })
        width = self.layout.width
        self.read_in = nn.Linear(d, width, bias=False, dtype=dtype)
        self.registers = nn.Parameter(torch.zeros(m, width, dtype=dtype))
        self.positions = nn.Parameter(torch.zeros(m + 2 * max_points, width, dtype=dtype))
        per_product = 1 if mlp == "bilinear" else 4  # a gate, or two squares of two GELU units
        per_square = 1 if mlp == "bilinear" else 2
        self.attn = nn.ModuleList([Attention(width, 2, max(d, 3), dtype), Attention(width, 1, m, dtype),
                                   Attention(width, 1, max(m + 1, d), dtype)])
        self.mlps = nn.ModuleList([MLP(width, per_square * m, mlp, dtype), MLP(width, per_product * m, mlp, dtype),
                                   MLP(width, per_product * d, mlp, dtype)])
        self.readout = nn.Linear(width, 1, bias=False, dtype=dtype)
        self.hook_embed = HookPoint()
        names = ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z")
        self.blocks = nn.ModuleList(BlockHooks(mlp=True, attn_names=names) for _ in self.attn)
        self.hook_out = HookPoint()
        nn.init.zeros_(self.read_in.weight)
        nn.init.zeros_(self.readout.weight)

    def run_with_cache(self, xs: Tensor, ys: Tensor) -> tuple[Tensor, dict]:
        """Predictions ``(B, N)`` read at the x tokens, and a cache: ``stream`` (``(B, m + 2N, D)``
        at the input and after each of the six layers), ``attention`` (each attention layer's
        ``(B, H, m + 2N, m + 2N)`` weights) and ``mlp_pre`` (each MLP's first linear map)."""
        b, n, d = xs.shape
        if d != self.dim or ys.shape != (b, n):
            raise ValueError(f"expected xs (B, N, {self.dim}) and ys (B, N), got {tuple(xs.shape)} and {tuple(ys.shape)}")
        if n > self.max_points:
            raise ValueError(f"{n} points exceed the model's max_points {self.max_points}")
        dtype = self.read_in.weight.dtype
        y_tokens = F.pad(ys.to(dtype)[..., None], (0, d - 1))
        tokens = torch.stack([xs.to(dtype), y_tokens], dim=2).reshape(b, 2 * n, d)
        m = self.n_components
        h = self.hook_embed(torch.cat([self.registers.expand(b, -1, -1), self.read_in(tokens)], dim=1)
                            + self.positions[: m + 2 * n])
        cache = {"stream": [h], "attention": [], "mlp_pre": []}
        for attn, mlp, hooks in zip(self.attn, self.mlps, self.blocks):
            h = hooks.hook_resid_pre(h)
            a, weights = attn(h, hooks.attn)
            h = hooks.hook_resid_mid(h + hooks.hook_attn_out(a))
            cache["attention"].append(weights)
            cache["stream"].append(h)
            u, pre = mlp(h)
            h = hooks.hook_resid_post(h + hooks.hook_mlp_out(u))
            cache["mlp_pre"].append(pre)
            cache["stream"].append(h)
        out = self.hook_out(self.readout(h[:, m::2]).squeeze(-1))
        return out, cache

    def forward(self, xs: Tensor, ys: Tensor) -> Tensor:
        """``(B, N)``: column j is the posterior mean of ``y_j`` given the pairs ``0..j-1`` and ``x_j``."""
        return self.run_with_cache(xs, ys)[0]

    def size(self) -> dict[str, int]:
        """``layers`` (attention layers: 3), the stream's ``width`` and the number of ``parameters``."""
        return {"layers": len(self.attn), "width": self.layout.width,
                "parameters": sum(p.numel() for p in self.parameters())}


def posterior_mean_transformer(components, noise: float, max_points: int, mlp: str = "gelu",
                               eps: float = DEFAULT_EPS, dtype: torch.dtype = torch.float64) -> PosteriorMeanTransformer:
    """Build the transformer computing the posterior mean of a regression mixture.

    Args:
        components: ``(m, d)`` regression vectors (uniform prior over them).
        noise: sigma > 0 of the responses.
        max_points: the longest prompt (pairs plus query) the model accepts.
        mlp: ``"gelu"`` (squares and products from GELU units, error set by ``eps``) or
            ``"bilinear"`` (gated MLPs: exact up to rounding).
        eps: the GELU variant's input scale: relative error of a square ``~(eps r)^2 / 6``.
        dtype: parameter dtype (weights are computed in float64, then cast).

    Raises:
        ValueError: bad components, ``noise <= 0``, ``max_points < 1``, an unknown ``mlp``
        or ``eps <= 0``.
    """
    w = as_components(components)
    m, d = w.shape
    sigma = check_positive("noise", noise)
    max_points = check_positive_int("max_points", max_points)
    if mlp not in MLP_KINDS:
        raise ValueError(f"mlp must be one of {MLP_KINDS}, got {mlp!r}")
    eps = check_positive("eps", eps)
    check_memory(f"the posterior-mean construction (d = {d}, m = {m}, {max_points:,} points)",
                 model_bytes(lambda: PosteriorMeanTransformer(d, m, max_points, mlp, torch.float64)),
                 "choose fewer points, components or dimensions")
    model = PosteriorMeanTransformer(d, m, max_points, mlp, torch.float64)
    lay = model.layout
    with torch.no_grad():
        _inputs(model, w)
        _copy_block(model)
        _square_residuals(model, w, eps)
        _running_mean(model)
        _logits(model, sigma, eps)
        _softmax_over_components(model)
        _prediction(model, eps)
        model.readout.weight[0, lay.index("out")] = 1.0
    return model.to(dtype).eval()


def _inputs(model: PosteriorMeanTransformer, w: Tensor) -> None:
    """Read-in: the token into ``tok``.  Registers: ``e_c`` and ``w_c``.  Positions: the features."""
    lay, (m, d) = model.layout, w.shape
    model.read_in.weight[lay["tok"], :] = torch.eye(d, dtype=torch.float64)
    model.registers[:, lay["reg_onehot"]] = torch.eye(m, dtype=torch.float64)
    model.registers[:, lay["reg_w"]] = w
    t = torch.arange(model.positions.shape[0], dtype=torch.float64)
    is_y = ((t >= m) & ((t - m) % 2 == 1)).to(torch.float64)
    feats = {"one": torch.ones_like(t), "t": t, "t2": t**2, "count": t + 1, "is_y": is_y, "t_is_y": t * is_y,
             "is_tok": (t >= m).to(torch.float64), "is_sink": (t == 0).to(torch.float64)}
    for i, name in enumerate(POSITION_FEATURES):
        model.positions[:, lay.index("pos", i)] = feats[name]


def _pos(model: PosteriorMeanTransformer, name: str) -> int:
    return model.layout.index("pos", POSITION_FEATURES.index(name))


def _copy_block(model: PosteriorMeanTransformer) -> None:
    """Block 1 attention: head 0 copies the previous token's slot (x_i at y_i) into ``x_prev``,
    head 1 the token's own first coordinate (y_i at y_i) into ``y_own``; other queries read the
    sink (zeros)."""
    attn, lay, d = model.attn[0], model.layout, model.dim
    hd = attn.head_dim
    p = lambda name: _pos(model, name)  # noqa: E731
    for head, lag in ((0, 1), (1, 0)):
        rows = slice(head * hd, head * hd + 3)
        q = torch.zeros(3, lay.width, dtype=torch.float64)
        # score = L is_y(t) (2 (t - lag) s - s^2) + L (1 - is_y(t)) is_sink(s)
        q[0, p("t_is_y")], q[0, p("is_y")] = 2 * SHARP, -2 * lag * SHARP
        q[1, p("is_y")] = -SHARP
        q[2, p("one")], q[2, p("is_y")] = SHARP, -SHARP
        k = torch.zeros(3, lay.width, dtype=torch.float64)
        k[0, p("t")], k[1, p("t2")], k[2, p("is_sink")] = 1.0, 1.0, 1.0
        attn.q.weight[rows] = q
        attn.k.weight[rows] = k
    attn.v.weight[:d, lay["tok"]] = torch.eye(d, dtype=torch.float64)  # head 0 carries the token
    attn.o.weight[lay["x_prev"], :d] = torch.eye(d, dtype=torch.float64)
    attn.v.weight[hd, lay.index("tok")] = 1.0  # head 1 carries its first coordinate
    attn.o.weight[lay.index("y_own"), hd] = 1.0


def _square_into(mlp: MLP, rows: slice, inp: Tensor, out_col: Tensor, eps: float, sign: float = 1.0) -> None:
    """Hidden units ``rows`` compute ``sign * (inp . h)^2`` and add it to the stream along
    ``out_col`` (a unit vector of the stream): one gate (bilinear) or two GELU units."""
    if mlp.kind == "bilinear":
        mlp.inp.weight[rows.start] = inp
        mlp.gate.weight[rows.start] = inp
        mlp.out.weight[:, rows.start] += sign * out_col
        return
    mlp.inp.weight[rows.start] = eps * inp
    mlp.inp.weight[rows.start + 1] = -eps * inp
    scale = sign / (_SQRT_2_OVER_PI * eps**2)
    mlp.out.weight[:, rows.start] += scale * out_col
    mlp.out.weight[:, rows.start + 1] += scale * out_col


def _unit(model: PosteriorMeanTransformer, index: int) -> Tensor:
    e = torch.zeros(model.layout.width, dtype=torch.float64)
    e[index] = 1.0
    return e


def _square_residuals(model: PosteriorMeanTransformer, w: Tensor, eps: float) -> None:
    """Block 1 MLP: ``sq_c = (<w_c, x_prev> - y_own)^2``."""
    mlp, lay = model.mlps[0], model.layout
    per = 1 if mlp.kind == "bilinear" else 2
    for c in range(w.shape[0]):
        r = torch.zeros(lay.width, dtype=torch.float64)
        r[lay["x_prev"]] = w[c]
        r[lay.index("y_own")] = -1.0
        _square_into(mlp, slice(c * per, (c + 1) * per), r, _unit(model, lay.index("sq", c)), eps)


def _running_mean(model: PosteriorMeanTransformer) -> None:
    """Block 2 attention: uniform causal weights (``q = k = 0``); values ``sq`` into ``mean_sq``."""
    attn, lay, m = model.attn[1], model.layout, model.n_components
    attn.v.weight[:m, lay["sq"]] = torch.eye(m, dtype=torch.float64)
    attn.o.weight[lay["mean_sq"], :m] = torch.eye(m, dtype=torch.float64)


def _product_into(model: PosteriorMeanTransformer, mlp: MLP, rows: slice, a: Tensor, b: Tensor, out_col: Tensor,
                  scale: float, eps: float) -> None:
    """Hidden units ``rows`` add ``scale * (a . h) (b . h)`` along ``out_col``: one gate
    (bilinear), or ``((a + b)^2 - (a - b)^2) / 4`` from two GELU squares."""
    if mlp.kind == "bilinear":
        mlp.inp.weight[rows.start] = a
        mlp.gate.weight[rows.start] = b
        mlp.out.weight[:, rows.start] += scale * out_col
        return
    _square_into(mlp, slice(rows.start, rows.start + 2), a + b, out_col * scale / 4, eps)
    _square_into(mlp, slice(rows.start + 2, rows.start + 4), a - b, out_col * scale / 4, eps, sign=-1.0)


def _logits(model: PosteriorMeanTransformer, sigma: float, eps: float) -> None:
    """Block 2 MLP: ``logit_c = -count * mean_sq_c / (2 sigma^2)``."""
    mlp, lay = model.mlps[1], model.layout
    per = 1 if mlp.kind == "bilinear" else 4
    count = _unit(model, _pos(model, "count"))
    for c in range(model.n_components):
        _product_into(model, mlp, slice(c * per, (c + 1) * per), count, _unit(model, lay.index("mean_sq", c)),
                      _unit(model, lay.index("logit", c)), -1 / (2 * sigma**2), eps)


def _softmax_over_components(model: PosteriorMeanTransformer) -> None:
    """Block 3 attention: register c scores ``logit_c``, prompt tokens ``MASK``; values ``w_c``."""
    attn, lay, m, d = model.attn[2], model.layout, model.n_components, model.dim
    attn.q.weight[:m, lay["logit"]] = torch.eye(m, dtype=torch.float64)
    attn.k.weight[:m, lay["reg_onehot"]] = torch.eye(m, dtype=torch.float64)
    attn.q.weight[m, _pos(model, "one")] = 1.0
    attn.k.weight[m, _pos(model, "is_tok")] = MASK
    attn.v.weight[:d, lay["reg_w"]] = torch.eye(d, dtype=torch.float64)
    attn.o.weight[lay["w_hat"], :d] = torch.eye(d, dtype=torch.float64)


def _prediction(model: PosteriorMeanTransformer, eps: float) -> None:
    """Block 3 MLP: ``out = <w_hat, tok>`` (``tok`` is ``x_j`` at the x tokens)."""
    mlp, lay = model.mlps[2], model.layout
    per = 1 if mlp.kind == "bilinear" else 4
    out = _unit(model, lay.index("out"))
    for i in range(model.dim):
        _product_into(model, mlp, slice(i * per, (i + 1) * per), _unit(model, lay.index("w_hat", i)),
                      _unit(model, lay.index("tok", i)), out, 1.0, eps)
