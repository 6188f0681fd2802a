"""Mixtures of linear regressions (SPEC §2; Pathak et al., ICLR 2024).

A task holds ``m`` fixed components ``w_j`` in ``R^d`` with ``||w_j|| = sqrt(d)``, drawn once
from its seed.  Each prompt draws one component uniformly (indices drawn *with*
replacement, so any ``m`` works at any batch size), covariates ``x_i ~ N(0, I_d)`` and
responses ``y_i = <w, x_i> + sigma * eps_i``.

Shapes: ``xs (B, N, d)``, ``ys (B, N)``.  A predictor returns ``(B, N)``: column j predicts
``ys[:, j]`` from the pairs ``0..j-1`` and ``xs[:, j]`` (column 0 sees no pairs).
"""

from __future__ import annotations

import math

import torch

from icmix._checks import as_components, check_memory, check_nonnegative, check_positive, check_positive_int
from icmix.random import make_generator


class MixLinRegTask:
    """A mixture-of-linear-regressions task.

    Args:
        dim: d, the covariate dimension.
        n_components: m, the number of regression vectors.
        noise: sigma >= 0, the standard deviation of the response noise.
        seed: seeds the components (Gaussian directions scaled to norm ``sqrt(d)``).
        components: optional ``(m, d)`` components to use instead (taken as given).

    Example:
        >>> task = MixLinRegTask(dim=10, n_components=5, noise=0.0, seed=0)
        >>> xs, ys = task.sample(64, 21, generator=torch.Generator().manual_seed(1))
        >>> xs.shape, ys.shape
        (torch.Size([64, 21, 10]), torch.Size([64, 21]))
    """

    def __init__(self, dim: int, n_components: int, noise: float = 0.0, seed: int = 0, components=None):
        self.dim = check_positive_int("dim", dim)
        self.n_components = check_positive_int("n_components", n_components)
        self.noise = check_nonnegative("noise", noise)
        self.seed = int(seed)
        if components is None:
            check_memory(f"{self.n_components:,} components of dimension {self.dim:,}",
                         2 * 8 * self.n_components * self.dim, "choose fewer components or dimensions")
            w = torch.randn(self.n_components, self.dim, generator=make_generator(seed), dtype=torch.float64)
            components = w / w.norm(dim=1, keepdim=True) * math.sqrt(self.dim)
        self.components = as_components(components, self.dim)  # (m, d)
        if self.components.shape[0] != self.n_components:
            raise ValueError(f"got {self.components.shape[0]} components for n_components={n_components}")

    def __repr__(self) -> str:
        return f"MixLinRegTask(dim={self.dim}, n_components={self.n_components}, noise={self.noise}, seed={self.seed})"

    def sample(self, batch_size: int, n_points: int, generator: torch.Generator | int | None = None,
               covariate_scale: float = 1.0, weight_scale: float = 1.0, weight_shift: float = 0.0,
               dtype: torch.dtype = torch.float64, return_index: bool = False, active_dims: int | None = None):
        """``xs (B, N, d)`` and ``ys (B, N)``; with ``return_index`` also the component of each prompt ``(B,)``.
        All on the generator's device.

        The paper's distribution shifts: ``covariate_scale`` kappa draws ``x ~ N(0, kappa^2 I)``;
        ``weight_scale`` alpha and ``weight_shift`` eps use ``alpha w_j + eps / sqrt(d) * 1``
        in place of ``w_j``.  Oracle predictors keep the task's own components.
        ``active_dims`` (the curriculum of Garg et al.): coordinates of x past it are zero.
        """
        batch_size = check_positive_int("batch_size", batch_size)
        n_points = check_positive_int("n_points", n_points)
        kappa, alpha = check_positive("covariate_scale", covariate_scale), check_positive("weight_scale", weight_scale)
        shift = float(weight_shift)
        if not math.isfinite(shift):
            raise ValueError(f"weight_shift must be finite, got {weight_shift!r}")
        g = make_generator(generator)
        dev = g.device  # sampled where the generator lives (a CUDA generator: on the GPU)
        idx = torch.randint(self.n_components, (batch_size,), generator=g, device=dev)  # with replacement
        w = alpha * self.components.to(dev)[idx] + shift / math.sqrt(self.dim)  # (B, d)
        xs = kappa * torch.randn(batch_size, n_points, self.dim, generator=g, dtype=torch.float64, device=dev)
        if active_dims is not None and check_positive_int("active_dims", active_dims) < self.dim:
            xs[..., active_dims:] = 0
        ys = torch.einsum("bnd,bd->bn", xs, w)
        if self.noise > 0:
            ys = ys + self.noise * torch.randn(batch_size, n_points, generator=g, dtype=torch.float64, device=dev)
        out = (xs.to(dtype), ys.to(dtype))
        return (*out, idx) if return_index else out
