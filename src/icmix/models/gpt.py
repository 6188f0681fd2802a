"""A standard GPT-style decoder (pre-LayerNorm, Q/K/V attention, GELU MLP), with the
attention patterns exposed.  Used on MTD tokens here (the reviewers' "standard
transformer") and, with a linear read-in, on regression prompts.

Shapes: B batch, T length, C model width, H heads, Q vocabulary.

Positions are ``"learned"`` (absolute embeddings added to the input) or ``"relative"``
(a learned bias per head and offset added to the attention scores, T5/ALiBi-style).
Attention runs through ``scaled_dot_product_attention``; when the patterns are asked
for, the same maths is computed explicitly (a test checks both paths agree).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from icmix._checks import check_model_tokens, check_positive_int
from icmix.models.base import Pretrained, config_from_dict
from icmix.models.hooks import HookPoint, any_watched, call_and_compare

GPT_POSITIONS = ("learned", "relative")


@dataclass(frozen=True)
class GPTConfig:
    """Configuration of a ``GPTTransformer``: ``vocab_size`` Q, ``n_layers``, ``n_heads``,
    ``d_model`` C, ``max_length``, ``positions`` (learned | relative), ``mlp_ratio``, ``dropout``,
    and ``attn_only`` (blocks without MLPs, the interpretability literature's attention-only
    transformers)."""

    vocab_size: int  # Q, the token values (set by the task)
    n_layers: int = 3  # transformer blocks, each attention then a GELU MLP (pre-LayerNorm; attention alone with attn_only)
    n_heads: int = 4  # attention heads per layer; must divide d_model
    d_model: int = 64  # C, the width of the residual stream
    max_length: int = 64  # longest input in tokens (set by the task's length)
    # learned: absolute position embeddings added to the input; relative: a learned bias per head and
    # offset added to the attention scores
    positions: str = "learned"
    mlp_ratio: int = 4  # the MLP's hidden width is mlp_ratio * d_model
    dropout: float = 0.0  # dropout probability in [0, 1) on the input, attention weights and each block's outputs
    attn_only: bool = False  # blocks of attention alone: no MLP (nor its LayerNorm and hook points)

    def __post_init__(self):
        check_positive_int("vocab_size", self.vocab_size, minimum=1)
        if not isinstance(self.attn_only, bool):
            raise ValueError(f"attn_only must be true or false, got {self.attn_only!r}")
        for name in ("n_layers", "n_heads", "d_model", "max_length", "mlp_ratio"):
            check_positive_int(name, getattr(self, name))
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.positions not in GPT_POSITIONS:
            raise ValueError(f"positions must be one of {GPT_POSITIONS}, got {self.positions!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, d: dict) -> GPTConfig:
        """The config from a dict (as ``config.json`` holds it), refusing unknown keys by name."""
        return config_from_dict(cls, d)


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention: a fused Q/K/V projection, scores scaled by ``1/sqrt(C/H)``
    plus an optional additive ``bias (H, T, T)`` (relative positions, a window), an output
    projection, and dropout on the weights and the output.

    Hook points (``icmix.models.hooks``): ``hook_q``, ``hook_k``, ``hook_v`` and ``hook_z``
    ``(B, T, H, d_head)``; ``hook_attn_scores`` and ``hook_pattern`` ``(B, H, T, T)``.  The
    pattern is made explicit only when it is asked for or one of these two is watched; the
    output then still comes from the fused kernel unless a hook changed a value of the scores or
    pattern (compared with a copy), so a hook that only reads leaves the output bit-identical."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        for name in ("hook_q", "hook_k", "hook_v", "hook_attn_scores", "hook_pattern", "hook_z"):
            self.add_module(name, HookPoint())

    def forward(self, x: Tensor, bias: Tensor | None, need_weights: bool,
                queries: slice | None = None) -> tuple[Tensor, Tensor | None]:
        """``x (B, T, C)`` -> ``(B, T', C)``: every position, or only the query positions
        ``queries`` (a slice of ``0..T-1``; keys and values stay every position)."""
        b, t, c = x.shape
        p = self.dropout if self.training else 0.0
        if queries is not None:
            return self._some_queries(x, bias, queries, p), None
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, c // self.n_heads).unbind(2)  # each (B, T, H, c/H)
        q, k, v = (hook(a).transpose(1, 2) for hook, a in ((self.hook_q, q), (self.hook_k, k), (self.hook_v, v)))
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        attn, explicit = None, need_weights
        if need_weights or self.hook_attn_scores.watched or self.hook_pattern.watched:
            scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
            if bias is not None:
                scores = scores + bias
            scores, changed = call_and_compare(self.hook_attn_scores, scores.masked_fill(~causal, float("-inf")))
            attn, edited = call_and_compare(self.hook_pattern, torch.softmax(scores, dim=-1))
            explicit = explicit or changed or edited
        if explicit:
            y = F.dropout(attn, p, self.training) @ v
        else:
            if bias is None:
                y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
            else:
                mask = bias.masked_fill(~causal, float("-inf")).to(q.dtype)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = self.hook_z(y.transpose(1, 2)).reshape(b, t, c)
        return F.dropout(self.proj(y), p, self.training), attn if need_weights else None

    def _some_queries(self, x: Tensor, bias: Tensor | None, queries: slice, p: float) -> Tensor:
        """Attention output at the positions ``queries`` only: the query projection and the
        scores are computed there alone (the same numbers as the full pass, fewer FLOPs)."""
        b, t, c = x.shape
        pos = torch.arange(t, device=x.device)[queries]
        w, w_b = self.qkv.weight, self.qkv.bias
        q = F.linear(x[:, queries], w[:c], w_b[:c])
        k, v = F.linear(x, w[c:], w_b[c:]).view(b, t, 2, self.n_heads, c // self.n_heads).permute(2, 0, 3, 1, 4)
        q = q.view(b, len(pos), self.n_heads, c // self.n_heads).transpose(1, 2)
        visible = pos[:, None] >= torch.arange(t, device=x.device)[None, :]  # (T', T)
        if bias is None:
            mask = visible
        else:
            mask = bias[:, queries].masked_fill(~visible, float("-inf")).to(q.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return F.dropout(self.proj(y.transpose(1, 2).reshape(b, len(pos), c)), p, self.training)


class Block(nn.Module):
    """Pre-LN transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``.  Hook points:
    ``hook_resid_pre``, ``hook_attn_out``, ``hook_resid_mid``, ``hook_mlp_out``, ``hook_resid_post``;
    attention-only (``attn_only``): ``x + attn(ln(x))`` with ``hook_resid_pre``, ``hook_attn_out``
    and ``hook_resid_post``, as TransformerLens names an attention-only block's."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attn_only = cfg.attn_only
        self.ln1 = nn.LayerNorm(cfg.d_model)
        if not cfg.attn_only:
            self.ln2 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        if not cfg.attn_only:
            self.mlp = nn.Sequential(nn.Linear(cfg.d_model, cfg.mlp_ratio * cfg.d_model), nn.GELU(),
                                     nn.Linear(cfg.mlp_ratio * cfg.d_model, cfg.d_model), nn.Dropout(cfg.dropout))
        names = ("hook_resid_pre", "hook_attn_out", "hook_resid_post") if cfg.attn_only else \
            ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post")
        for name in names:
            self.add_module(name, HookPoint())

    def forward(self, x: Tensor, bias: Tensor | None, need_weights: bool,
                queries: slice | None = None) -> tuple[Tensor, Tensor | None]:
        """``x (B, T, C)`` -> ``(B, T', C)`` and the layer's pattern (``None`` unless
        ``need_weights``); with ``queries`` only those positions are computed."""
        x = self.hook_resid_pre(x)
        a, attn = self.attn(self.ln1(x), bias, need_weights, queries)
        x = (x if queries is None else x[:, queries]) + self.hook_attn_out(a)
        if self.attn_only:
            return self.hook_resid_post(x), attn
        x = self.hook_resid_mid(x)
        return self.hook_resid_post(x + self.hook_mlp_out(self.mlp(self.ln2(x)))), attn


class GPTBackbone(nn.Module):
    """Positions + blocks + final LayerNorm on input embeddings ``(B, T, C)``.  Hook points:
    ``hook_pos_embed`` (learned positions, ``(B, T, C)``), each block's, and ``hook_resid_final``
    (after the final LayerNorm)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.positions == "learned":
            self.pos = nn.Parameter(torch.zeros(cfg.max_length, cfg.d_model))
            nn.init.normal_(self.pos, std=0.02)
            self.hook_pos_embed = HookPoint()
        else:
            self.rel = nn.Parameter(torch.zeros(cfg.n_heads, cfg.max_length))  # bias per head and offset
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.hook_resid_final = HookPoint()
        self.drop = nn.Dropout(cfg.dropout)
        self.window: int | None = None  # an intervention: attend only to offsets < window (``attention_window``)

    def forward(self, x: Tensor, need_weights: bool = False,
                outputs: slice | None = None) -> tuple[Tensor, list[Tensor]]:
        """``x (B, T, C)`` -> the final stream ``(B, T, C)`` and each layer's pattern (``None``
        unless ``need_weights``).  ``outputs``: the positions whose outputs are read (a slice);
        the last block then computes its queries, MLP and final LayerNorm there alone and the
        stream is ``(B, T', C)``.  With ``need_weights``, or a watched hook point in the last
        block, every position is computed (each pattern and activation is whole) and the
        stream is sliced at the end."""
        t = x.shape[1]
        if t > self.cfg.max_length:
            raise ValueError(f"input length {t} exceeds the model's max_length {self.cfg.max_length}")
        bias = None
        if self.cfg.positions == "learned":
            x = x + self.hook_pos_embed(self.pos[:t].expand(x.shape[0], -1, -1))
        else:
            ar = torch.arange(t, device=x.device)
            bias = self.rel[:, (ar[:, None] - ar[None, :]).clamp_min(0)]  # (H, T, T)
        if self.window is not None:
            ar = torch.arange(t, device=x.device)
            far = (ar[:, None] - ar[None, :]) >= self.window
            if bias is None:
                bias = torch.zeros(self.cfg.n_heads, t, t, dtype=x.dtype, device=x.device)
            bias = bias.masked_fill(far, float("-inf"))
        x = self.drop(x)
        patterns = []
        last = len(self.blocks) - 1
        whole = need_weights or outputs is None or any_watched(self.blocks[last])
        for i, block in enumerate(self.blocks):
            x, attn = block(x, bias, need_weights, None if whole or i < last else outputs)
            patterns.append(attn)
        if whole and outputs is not None:
            x = x[:, outputs]
        return self.hook_resid_final(self.ln_f(x)), patterns


def init_gpt_weights(module: nn.Module) -> None:
    """GPT-2 initialisation: normal(0, 0.02) weights, zero biases."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


class GPTTransformer(Pretrained):
    """GPT-style decoder over tokens: embedding -> blocks -> linear readout to Q outputs.

    ``model(tokens (B, T))`` returns ``(B, T, Q)``; ``return_attention=True`` also returns one
    ``(B, H, T, T)`` pattern per layer.  Hook points: ``hook_embed``, the backbone's (prefixed
    ``backbone.``) and ``hook_out`` (the logits); ``icmix.interp.hook_names`` lists them.
    """

    config_class = GPTConfig
    model_type = "gpt"

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.hook_embed = HookPoint()
        self.backbone = GPTBackbone(config)
        self.readout = nn.Linear(config.d_model, config.vocab_size)
        self.hook_out = HookPoint()
        self.apply(init_gpt_weights)

    @contextlib.contextmanager
    def attention_window(self, window: int):
        """Within the block, every layer attends only to the last ``window`` positions (offsets
        ``0..window-1``, itself included): the context the model may use shrinks to
        ``n_layers (window - 1) + 1`` tokens.  An intervention for measuring how much of its
        prediction comes from far context."""
        check_positive_int("window", window)
        before, self.backbone.window = self.backbone.window, window
        try:
            yield self
        finally:
            self.backbone.window = before

    def forward(self, tokens: Tensor, return_attention: bool = False):
        """``(B, T, Q)`` outputs at every position; with ``return_attention`` also each layer's
        ``(B, H, T, T)`` pattern."""
        tokens = check_model_tokens(tokens, self.config.vocab_size, self.config.max_length)
        h, patterns = self.backbone(self.hook_embed(self.embed(tokens)), need_weights=return_attention)
        out = self.hook_out(self.readout(h))
        return (out, patterns) if return_attention else out


@dataclass(frozen=True)
class RegressionGPTConfig:
    """Configuration of a ``RegressionGPT``: covariate ``dim`` d, ``max_points`` N (the model
    reads 2N tokens), and the decoder's ``n_layers``, ``n_heads``, ``d_model``, ``positions``,
    ``mlp_ratio``, ``dropout`` (the paper: 12 layers, width 256, 8 heads)."""

    dim: int  # d, the covariate dimension of the linear read-in (set by the task's dim)
    max_points: int = 41  # N, the most (x, y) pairs a prompt may hold: 2N tokens (set by the task's n_points)
    n_layers: int = 12  # decoder blocks, each attention then a GELU MLP (pre-LayerNorm)
    n_heads: int = 8  # attention heads per layer; must divide d_model
    d_model: int = 256  # C, the width of the residual stream
    positions: str = "learned"  # learned absolute embeddings, or relative: a learned bias per head and offset
    mlp_ratio: int = 4  # the MLP's hidden width is mlp_ratio * d_model
    dropout: float = 0.0  # dropout probability in [0, 1) on the input, attention weights and each block's outputs

    def __post_init__(self):
        check_positive_int("dim", self.dim)
        check_positive_int("max_points", self.max_points)
        self.backbone_config()  # the decoder's own checks

    def backbone_config(self) -> GPTConfig:
        """The decoder's ``GPTConfig``: ``max_length = 2 * max_points`` tokens and a placeholder
        ``vocab_size`` of 1 (the read-in is linear)."""
        return GPTConfig(vocab_size=1, n_layers=self.n_layers, n_heads=self.n_heads, d_model=self.d_model,
                         max_length=2 * self.max_points, positions=self.positions, mlp_ratio=self.mlp_ratio,
                         dropout=self.dropout)

    @classmethod
    def from_dict(cls, d: dict) -> RegressionGPTConfig:
        """The config from a dict (as ``config.json`` holds it), refusing unknown keys by name."""
        return config_from_dict(cls, d)


class RegressionGPT(Pretrained):
    """GPT-style decoder over regression prompts (Garg et al. 2022; Pathak et al. 2024).

    The prompt is read as tokens ``x_1, y_1, x_2, y_2, ...``, ``y`` padded with zeros to width
    d, through one linear read-in; the prediction for ``y_j`` is read at the token of ``x_j``,
    which sees the pairs before it and ``x_j`` alone.

    ``model(xs (B, N, d), ys (B, N))`` returns ``(B, N)``; ``return_attention=True`` also
    returns one ``(B, H, 2N, 2N)`` pattern per layer.  Hook points: ``hook_embed`` (the read-in,
    ``(B, 2N, C)``), the backbone's (prefixed ``backbone.``) and ``hook_out`` (``(B, N)``).
    """

    config_class = RegressionGPTConfig
    model_type = "gpt-regression"

    def __init__(self, config: RegressionGPTConfig):
        super().__init__()
        self.config = config
        self.read_in = nn.Linear(config.dim, config.d_model)
        self.hook_embed = HookPoint()
        self.backbone = GPTBackbone(config.backbone_config())
        self.readout = nn.Linear(config.d_model, 1)
        self.hook_out = HookPoint()
        self.apply(init_gpt_weights)

    def forward(self, xs: Tensor, ys: Tensor, return_attention: bool = False):
        """``(B, N)``: the prediction of ``y_j`` read at the token of ``x_j``; with
        ``return_attention`` also each layer's ``(B, H, 2N, 2N)`` pattern."""
        b, n, d = xs.shape
        if d != self.config.dim or ys.shape != (b, n):
            raise ValueError(f"expected xs (B, N, {self.config.dim}) and ys (B, N), got {tuple(xs.shape)} "
                             f"and {tuple(ys.shape)}")
        if n > self.config.max_points:
            raise ValueError(f"{n} points exceed the model's max_points {self.config.max_points}")
        dtype = self.read_in.weight.dtype
        y_tokens = F.pad(ys.to(dtype)[..., None], (0, d - 1))  # (B, N, d): y in the first coordinate
        tokens = torch.stack([xs.to(dtype), y_tokens], dim=2).reshape(b, 2 * n, d)
        h, patterns = self.backbone(self.hook_embed(self.read_in(tokens)), need_weights=return_attention,
                                    outputs=slice(0, None, 2))
        out = self.hook_out(self.readout(h).squeeze(-1))  # at the x tokens
        return (out, patterns) if return_attention else out
