"""The disentangled transformer (Nichani, Damian & Lee 2024), as used by the MTD paper (SPEC §1).

Each layer has attention matrices ``A`` (query-key merged), no value or output projection
(the value is the stream itself) and **concatenates** its output to the residual stream,
so the stream grows layer by layer and every block keeps a name.  Relative positions
enter the scores (``R_A``: one vector per offset, read by the query, so a plain per-offset
bias is the special case that reads the one-hot token block) and the values (``R_V``: a
one-hot of the offset appended to what is copied).

Shapes: B batch, T length, Q vocabulary, H heads, D stream width, K value offsets.

Stream blocks are named by path: the input is ``token`` (Q) and ``position`` (one-hot
absolute position, or a single ``warmup`` marker ``1[pos < warmup]``); head h of layer l
writes ``attn{l}.{h}/<every block of its input>`` followed by ``attn{l}.{h}/offset`` (K), and
an optional MLP writes ``mlp{l}``.  So ``attn2.0/attn1.0/offset`` is layer 2's average of
layer 1's offset block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from icmix._checks import check_model_tokens, check_positive_int
from icmix.models.base import Pretrained, config_from_dict
from icmix.models.hooks import AttentionHooks, BlockHooks, HookPoint

POSITIONS = ("onehot", "warmup", "none")


@dataclass(frozen=True)
class DisentangledConfig:
    """Configuration of a ``DisentangledTransformer``.

    Args:
        vocab_size: Q.
        n_layers: number of attention layers.
        n_heads: heads per layer (an int for every layer, or one per layer).
        max_length: longest input; sizes the relative-position tables.
        value_offsets: K, offsets ``0..K-1`` get a one-hot slot in the values (``R_V``);
            ``None`` means ``max_length``.
        positions: absolute positions in the input: ``"onehot"`` (width ``max_length``),
            ``"warmup"`` (one feature ``1[pos < warmup]``) or ``"none"``.
        warmup: the marker's threshold for ``positions="warmup"`` (the MTD order).
        mlp_width: 0 for none; otherwise each layer appends a GELU MLP block of this width.
    """

    vocab_size: int
    n_layers: int = 3
    n_heads: tuple[int, ...] | int = 1
    max_length: int = 64
    value_offsets: int | None = None
    positions: str = "onehot"
    warmup: int = 0
    mlp_width: int = 0

    def __post_init__(self):
        check_positive_int("vocab_size", self.vocab_size, minimum=2)
        check_positive_int("n_layers", self.n_layers)
        check_positive_int("max_length", self.max_length)
        heads = (self.n_heads,) * self.n_layers if isinstance(self.n_heads, int) else tuple(self.n_heads)
        if len(heads) != self.n_layers:
            raise ValueError(f"n_heads has {len(heads)} entries for {self.n_layers} layers")
        for h in heads:
            check_positive_int("n_heads", h)
        object.__setattr__(self, "n_heads", heads)
        if self.value_offsets is None:
            object.__setattr__(self, "value_offsets", self.max_length)
        check_positive_int("value_offsets", self.value_offsets)
        if self.positions not in POSITIONS:
            raise ValueError(f"positions must be one of {POSITIONS}, got {self.positions!r}")
        check_positive_int("warmup", self.warmup, minimum=0)
        check_positive_int("mlp_width", self.mlp_width, minimum=0)

    @classmethod
    def from_dict(cls, d: dict) -> DisentangledConfig:
        """The config from a dict (as ``config.json`` holds it), refusing unknown keys by name."""
        return config_from_dict(cls, d)


class StreamLayout:
    """Names and slices of the blocks of a residual stream, in order."""

    def __init__(self, blocks: list[tuple[str, int]]):
        self.blocks = blocks
        self._slices, start = {}, 0
        for name, width in blocks:
            self._slices[name] = slice(start, start + width)
            start += width
        self.width = start

    def __getitem__(self, name: str) -> slice:
        try:
            return self._slices[name]
        except KeyError:
            raise KeyError(f"no stream block {name!r}; blocks: {list(self._slices)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._slices

    def names(self) -> list[str]:
        """The block names, in stream order."""
        return [n for n, _ in self.blocks]

    def __repr__(self) -> str:
        return "StreamLayout(" + ", ".join(f"{n}[{s.start}:{s.stop}]" for n, s in self._slices.items()) + ")"


def offset_table(t: int, device=None) -> tuple[Tensor, Tensor]:
    """``offset[i, j] = i - j`` clamped at 0, and the causal mask ``j <= i``, both ``(T, T)``."""
    ar = torch.arange(t, device=device)
    diff = ar[:, None] - ar[None, :]
    return diff.clamp_min(0), diff >= 0


class DisentangledAttention(nn.Module):
    """One disentangled attention layer with H heads.

    Head h scores key j for query i as ``h_i^T A_h h_j + h_i^T R_A[h, i - j]`` (causal),
    and writes ``[sum_j a_ij h_j ; sum_j a_ij e_{i-j}]`` (the second part over K offsets).
    """

    def __init__(self, d_in: int, n_heads: int, max_length: int, value_offsets: int):
        super().__init__()
        self.n_heads, self.value_offsets = n_heads, value_offsets
        self.A = nn.Parameter(torch.zeros(n_heads, d_in, d_in))
        self.R_A = nn.Parameter(torch.zeros(n_heads, max_length, d_in))
        nn.init.normal_(self.A, std=0.02)
        nn.init.normal_(self.R_A, std=0.02)

    @property
    def d_out(self) -> int:
        """Width of the layer's output, ``H * (D + K)``: each head's average of its input and its offset block."""
        return self.n_heads * (self.A.shape[-1] + self.value_offsets)

    def forward(self, h: Tensor, hooks: AttentionHooks | None = None) -> tuple[Tensor, Tensor]:
        """``h (B, T, D)`` -> ``(out (B, T, H*(D+K)), attention (B, H, T, T))``.  ``hooks``: the
        layer's hook points, called on the masked scores (``hook_attn_scores``), the pattern
        (``hook_pattern``) and each head's output ``(B, T, H, D+K)`` (``hook_z``)."""
        b, t, _ = h.shape
        offset, causal = offset_table(t, h.device)
        scores = torch.einsum("bid,hde,bje->bhij", h, self.A, h)
        by_offset = torch.einsum("bid,hod->bhio", h, self.R_A[:, :t])  # (B, H, T, T offsets)
        scores = scores + torch.gather(by_offset, -1, offset.expand(b, self.n_heads, t, t))
        scores = scores.masked_fill(~causal, float("-inf"))
        if hooks is not None:
            scores = hooks.hook_attn_scores(scores)
        attn = torch.softmax(scores, dim=-1)
        if hooks is not None:
            attn = hooks.hook_pattern(attn)
        copied = attn @ h[:, None]  # (B, H, T, D)
        k = min(self.value_offsets, t)
        ar = torch.arange(t, device=h.device)
        key = ar[:, None] - torch.arange(k, device=h.device)[None, :]  # (T, K): key j = i - o
        valid = (key >= 0).to(attn.dtype)
        by_off = torch.gather(attn, -1, key.clamp_min(0).expand(b, self.n_heads, t, k)) * valid
        if k < self.value_offsets:
            by_off = nn.functional.pad(by_off, (0, self.value_offsets - k))
        out = torch.cat([copied, by_off], dim=-1).transpose(1, 2)  # (B, T, H, D + K)
        if hooks is not None:
            out = hooks.hook_z(out)
        return out.reshape(b, t, -1), attn


class DisentangledTransformer(Pretrained):
    """Disentangled transformer: one-hot input, concatenating attention layers, linear readout.

    ``model(tokens (B, T))`` returns the readout ``(B, T, Q)`` at every position (position
    i sees tokens ``0..i``).  ``model.run_with_cache(tokens)`` also returns the final stream
    and each layer's attention; ``model.layouts[l]`` names the blocks of the stream after
    layer l (``layouts[0]`` is the input).

    Hook points (``icmix.models.hooks``; ``icmix.interp.hook_names`` lists them): ``hook_embed``
    (the input stream), per block ``l`` (0-based) ``blocks.{l}.hook_resid_pre``,
    ``blocks.{l}.attn.hook_attn_scores``, ``.hook_pattern``, ``.hook_z`` (each head's output,
    ``(B, T, H, D + K)``), ``blocks.{l}.hook_attn_out``, ``.hook_resid_mid``, ``.hook_mlp_out``
    (with an MLP), ``.hook_resid_post``, and ``hook_out`` (the readout).  Queries, keys and values
    have no hook: the query-key product is one matrix ``A`` and the value is the stream itself.
    The blocks' hook points hold no weights (the parameters stay under ``attention`` and ``mlps``).

    Example:
        >>> model = DisentangledTransformer(DisentangledConfig(vocab_size=10, max_length=64))
        >>> out, cache = model.run_with_cache(tokens)
        >>> cache["attention"][0].shape  # (B, H, T, T)
    """

    config_class = DisentangledConfig
    model_type = "disentangled"

    def __init__(self, config: DisentangledConfig):
        super().__init__()
        self.config = config
        self.hook_embed = HookPoint()
        blocks = [("token", config.vocab_size)]
        if config.positions == "onehot":
            blocks.append(("position", config.max_length))
        elif config.positions == "warmup":
            blocks.append(("warmup", 1))
        self.layouts = [StreamLayout(blocks)]
        self.attention = nn.ModuleList()
        self.mlps = nn.ModuleList()
        for layer, heads in enumerate(config.n_heads, start=1):
            prev = self.layouts[-1]
            attn = DisentangledAttention(prev.width, heads, config.max_length, config.value_offsets)
            self.attention.append(attn)
            for h in range(heads):
                blocks = blocks + [(f"attn{layer}.{h}/{n}", w) for n, w in prev.blocks] + [
                    (f"attn{layer}.{h}/offset", config.value_offsets)]
            if config.mlp_width:
                d = prev.width + attn.d_out
                self.mlps.append(nn.Sequential(nn.Linear(d, 4 * config.mlp_width), nn.GELU(),
                                               nn.Linear(4 * config.mlp_width, config.mlp_width)))
                blocks = blocks + [(f"mlp{layer}", config.mlp_width)]
            self.layouts.append(StreamLayout(blocks))
        self.blocks = nn.ModuleList(BlockHooks(mlp=bool(config.mlp_width)) for _ in config.n_heads)
        self.readout = nn.Linear(self.layouts[-1].width, config.vocab_size, bias=False)
        self.hook_out = HookPoint()
        # Zero readout: the output starts at 0 instead of a random read of every block,
        # so early gradients are not spent undoing initialisation noise.
        nn.init.zeros_(self.readout.weight)

    @property
    def layout(self) -> StreamLayout:
        """Blocks of the final stream, the one the readout reads."""
        return self.layouts[-1]

    def embed(self, tokens: Tensor) -> Tensor:
        """``(B, T) -> (B, T, D_0)``: one-hot tokens, then the absolute-position block."""
        dtype = self.readout.weight.dtype
        b, t = tokens.shape
        parts = [nn.functional.one_hot(tokens, self.config.vocab_size).to(dtype)]
        ar = torch.arange(t, device=tokens.device)
        if self.config.positions == "onehot":
            parts.append(nn.functional.one_hot(ar, self.config.max_length).to(dtype).expand(b, t, -1))
        elif self.config.positions == "warmup":
            parts.append((ar < self.config.warmup).to(dtype)[None, :, None].expand(b, t, 1))
        return torch.cat(parts, dim=-1)

    def run_with_cache(self, tokens: Tensor) -> tuple[Tensor, dict]:
        """Readout ``(B, T, Q)`` and a cache with ``stream`` (final, ``(B, T, D)``) and
        ``attention`` (one ``(B, H, T, T)`` per layer).  For every activation by its hook name,
        use ``icmix.interp.run_with_cache(model, tokens)``."""
        h = self.hook_embed(self.embed(check_model_tokens(tokens, self.config.vocab_size, self.config.max_length)))
        patterns = []
        for layer, (attn, hooks) in enumerate(zip(self.attention, self.blocks)):
            h = hooks.hook_resid_pre(h)
            out, a = attn(h, hooks.attn)
            patterns.append(a)
            h = hooks.hook_resid_mid(torch.cat([h, hooks.hook_attn_out(out)], dim=-1))
            if self.config.mlp_width:
                h = torch.cat([h, hooks.hook_mlp_out(self.mlps[layer](h))], dim=-1)
            h = hooks.hook_resid_post(h)
        return self.hook_out(self.readout(h)), {"stream": h, "attention": patterns}

    @torch.no_grad()
    def restrict_offsets(self, layer: int, keep, penalty: float = 1e4) -> "DisentangledTransformer":
        """Intervention: layer ``layer`` (1-based) attends only to keys at offsets ``i - j`` in
        ``keep``.  Every other offset's ``R_A`` row loses ``penalty`` on the input token block;
        a one-hot token block sums to 1, so each of its scores drops by exactly ``penalty``.
        In place; returns the model."""
        attn = self.attention[layer - 1]
        drop = [o for o in range(attn.R_A.shape[1]) if o not in set(keep)]
        attn.R_A[:, drop, self.layouts[0]["token"]] -= penalty
        return self

    def forward(self, tokens: Tensor, return_attention: bool = False):
        """The readout ``(B, T, Q)`` at every position; with ``return_attention`` also each layer's
        ``(B, H, T, T)`` pattern."""
        out, cache = self.run_with_cache(tokens)
        return (out, cache["attention"]) if return_attention else out
