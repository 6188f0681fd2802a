"""Linear self-attention that performs one step of gradient descent (von Oswald et al. 2023).

A prompt's pairs are the tokens ``e_i = (x_i, y_i) ∈ R^{d+1}`` and its query ``e_q = (x_q, 0)``.
One layer of linear self-attention (no softmax) adds to the query

    Δe_q = P W_V (1/n) Σ_i e_i (e_iᵀ W_Kᵀ W_Q e_q),

and the prediction is the last coordinate of ``e_q + Δe_q``.  With

    W_K = W_Q = [[I_d, 0], [0, 0]],   W_V = [[0, 0], [0, η]],   P = I_{d+1},

``e_iᵀ W_Kᵀ W_Q e_q = x_i·x_q`` and ``P W_V e_i = (0, η y_i)``, so the prediction is
``η (1/n) Σ_i y_i x_i·x_q``: exactly one gradient step from ``w = 0`` on ``½ (1/n) Σ (w·x_i −
y_i)²`` with step size ``η``, the ``linreg`` family's ``gd_step`` at ``η = η_n*``
(``construction``).  ``LinearSelfAttention`` is the layer with free weights; applied to a prompt
``xs (B, N, d)``, ``ys (B, N)`` it predicts every ``y_j`` from the ``j`` pairs before it (the
query ``(x_j, 0)`` attends to them, normalised by ``j``), the regression predictors' contract.

The function depends on the weights only through ``v = (P W_V)[d]`` (the row that writes the
prediction) and ``A = W_Kᵀ W_Q`` restricted to the query's ``x`` columns: ``ŷ = (1/n) Σ_i (v·e_i)
(e_iᵀ A x_q)``.  Their outer product ``v ⊗ A`` (``effective_weights``) is what a trained layer
and the construction can be compared by: it is unchanged by the symmetry ``A → c A``,
``v → v / c`` that leaves the function alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from icmix._checks import as_prompts, check_nonnegative, check_positive_int
from icmix.models import register_model
from icmix.models.base import Pretrained, config_from_dict
from icmix.models.hooks import HookPoint


@dataclass(frozen=True)
class LSAConfig:
    """A ``LinearSelfAttention`` layer (model kind ``lsa``): the covariate ``dim`` and the longest
    prompt ``max_points`` (both set by a ``linreg`` task), and the random initialisation's ``init_std``."""

    dim: int
    max_points: int = 41
    init_std: float = 0.1  # (the loss is quartic in the weights: from 0.02, some seeds sit at the origin's saddle for hundreds of steps)

    def __post_init__(self):
        check_positive_int("dim", self.dim)
        check_positive_int("max_points", self.max_points)
        check_nonnegative("init_std", self.init_std)

    @classmethod
    def from_dict(cls, d: dict) -> LSAConfig:
        """The config from a dict (as ``config.json`` holds it), refusing unknown keys by name."""
        return config_from_dict(cls, d)


class LinearSelfAttention(Pretrained):
    """One layer of linear self-attention on ``(x, y)`` tokens of width ``dim + 1``: ``W_K``, ``W_Q``,
    ``W_V`` and the projection ``P``, each ``(dim + 1, dim + 1)``, initialised from ``N(0,
    init_std²)`` (with ``generator``, or torch's) or set by ``construction``.  ``dtype``: the
    weights' (float32 to train, float64 for the construction).

    Hook points (``icmix.interp``): ``hook_attn_scores`` ``(B, N, N)`` (query ``j``'s score on the pair
    ``i < j``, zero elsewhere), ``hook_update`` ``(B, N, d + 1)`` (what the layer adds to each query)
    and ``hook_out`` ``(B, N)``."""

    config_class = LSAConfig
    model_type = "lsa"

    def __init__(self, config: LSAConfig | int, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32):
        super().__init__()
        self.config = config if isinstance(config, LSAConfig) else LSAConfig(dim=config)
        self.dim = self.config.dim
        width = self.dim + 1

        def weight():
            return nn.Parameter(self.config.init_std * torch.randn(width, width, generator=generator, dtype=dtype))

        self.w_k, self.w_q, self.w_v, self.proj = weight(), weight(), weight(), weight()
        self.hook_attn_scores, self.hook_update, self.hook_out = HookPoint(), HookPoint(), HookPoint()

    def tokens(self, xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
        """The pairs' tokens ``(x_i, y_i)`` and the queries ``(x_j, 0)``, each ``(B, N, d + 1)``."""
        zeros = torch.zeros_like(ys)[..., None]
        return torch.cat([xs, ys[..., None]], -1), torch.cat([xs, zeros], -1)

    def forward(self, xs: Tensor, ys: Tensor) -> Tensor:
        """``(B, N)``: column ``j`` predicts ``y_j`` from the ``j`` pairs before it (0 at ``j = 0``)."""
        if xs.ndim != 3 or xs.shape[-1] != self.dim or ys.shape != xs.shape[:2]:
            raise ValueError(f"expected xs (B, N, {self.dim}) and ys (B, N), got {tuple(xs.shape)} and {tuple(ys.shape)}")
        if xs.shape[1] > self.config.max_points:
            raise ValueError(f"a prompt of {xs.shape[1]} points is longer than max_points = {self.config.max_points}")
        xs, ys = xs.to(self.w_k.dtype), ys.to(self.w_k.dtype)
        pairs, queries = self.tokens(xs, ys)
        keys, values = pairs @ self.w_k.T, pairs @ self.w_v.T  # (B, N, d+1)
        n = xs.shape[1]
        before = torch.ones(n, n, dtype=torch.bool, device=xs.device).tril(-1)
        scores = self.hook_attn_scores((queries @ self.w_q.T @ keys.transpose(1, 2)) * before)  # (B, N queries, N pairs)
        count = torch.arange(n, device=xs.device).clamp(min=1).to(scores.dtype)
        update = self.hook_update(scores @ values / count[:, None] @ self.proj.T)  # (B, N, d+1)
        return self.hook_out((queries + update)[..., -1])


def construction(dim: int, eta: float, max_points: int = 41) -> LinearSelfAttention:
    """The layer whose prediction is one gradient step of size ``eta`` from ``w = 0`` (von Oswald
    et al.), in float64: ``W_K = W_Q = diag(I_d, 0)``, ``W_V = diag(0, …, 0, eta)``, ``P = I``."""
    layer = LinearSelfAttention(LSAConfig(dim, max_points, init_std=0.0), dtype=torch.float64)
    with torch.no_grad():
        eye = torch.eye(dim + 1, dtype=torch.float64)
        x_block = eye.clone()
        x_block[dim, dim] = 0
        layer.w_k.copy_(x_block)
        layer.w_q.copy_(x_block)
        layer.w_v.zero_()
        layer.w_v[dim, dim] = float(eta)
        layer.proj.copy_(eye)
    return layer


def effective_weights(layer: LinearSelfAttention) -> Tensor:
    """``v ⊗ A``, ``(d + 1, d + 1, d)``: the outer product of the row of ``P W_V`` that writes the
    prediction with ``W_Kᵀ W_Q``'s columns that read the query's ``x`` (all the function depends on)."""
    d = layer.dim
    v = (layer.proj @ layer.w_v)[d]
    a = (layer.w_k.T @ layer.w_q)[:, :d]
    return v[:, None, None] * a[None]


def weight_cosine(a: LinearSelfAttention, b: LinearSelfAttention) -> float:
    """The cosine of two layers' ``effective_weights``: 1 when they compute the same function up to scale."""
    with torch.no_grad():
        u, v = effective_weights(a).double().flatten(), effective_weights(b).double().flatten()
        return float(u @ v / (u.norm() * v.norm()))


def lsa_gd(xs, ys, step_size) -> Tensor:
    """The construction's prediction at every column ``j``, with the step size ``step_size(j)``
    (the ``linreg`` family passes its ``gd_step_size``, so ``lsa_gd`` is its ``gd_step`` computed by
    attention): column ``j`` of ``construction(d, step_size(j))`` applied to the prompt."""
    xs, ys = as_prompts(xs, ys)
    n = xs.shape[1]
    etas = step_size(torch.arange(n))
    out = torch.zeros_like(ys)
    with torch.no_grad():
        for j in range(1, n):
            out[:, j] = construction(xs.shape[-1], float(etas[j]), n)(xs[:, : j + 1], ys[:, : j + 1])[:, j]
    return out


register_model("lsa", LSAConfig, LinearSelfAttention)
