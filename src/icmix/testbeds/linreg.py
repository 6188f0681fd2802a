"""The ``linreg`` task family: linear regression in context (Garg et al. 2022).

A prompt is ``(x_1, y_1, …, x_n, y_n, x_q)``: every prompt draws its own ``w ~ N(0, w_std² I_d)``,
its points ``x_i`` i.i.d. from ``x_dist`` (``gaussian``: ``N(0, I_d)``; ``uniform``: each
coordinate uniform on ``[−x_range, x_range]``) and ``y_i = w·x_i + ε_i``, ``ε_i ~ N(0, noise_std²)``.
Prompts are tensors ``xs (B, N, d)``, ``ys (B, N)`` as for ``mixlinreg``; column ``j`` of a
predictor's ``(B, N)`` output predicts ``y_j`` from the ``j`` pairs before it and ``x_j``, so
the query of a prompt of ``n`` pairs is column ``n`` of ``n + 1`` points.

Predictors (keys as named here):

- ``least_squares``: minimum-norm least squares on the pairs, ``pinv(X) y``;
- ``posterior_mean``: the posterior mean of ``w`` (ridge at ``λ = noise_std² / w_std²``), the
  Bayes-optimal predictor under squared error for either ``x_dist`` (``w`` is Gaussian and
  ``y`` linear in it given the ``x``'s); noiseless, it is ``least_squares``;
- ``averaging``: ``ŵ = (1/n) Σ y_i x_i``;
- ``knn``: the mean ``y`` of the 3 nearest ``x_i`` (all of them while there are fewer);
- ``gd_step``: one step of gradient descent from ``w = 0`` on ``½ (1/n) Σ (w·x_i − y_i)²``,
  ``ŵ = η_n (1/n) Σ y_i x_i``, with the step size ``η_n`` that minimises the expected loss
  (``gd_step_size``, derived in ``docs/testbeds/linreg.md``);
- ``zero``: ``ŷ = 0``;
- ``lsa_gd``: one layer of linear self-attention with the weights of von Oswald et al. that
  compute ``gd_step`` (``icmix.testbeds.lsa``).

With ``s² = E[x_k²]`` and ``μ₄ = E[x_k⁴]`` (Gaussian: 1 and 3; uniform on ``[−r, r]``: ``r²/3``
and ``r⁴/5``), the expected squared error of ``ŵ = η (1/n) Σ y_i x_i`` at the query is

    s² [w_std² (d − 2η d s² + η² d (μ₄ + (d + n − 2) s⁴) / n) + η² noise_std² d s² / n] + noise_std²,

minimised at ``η_n = n w_std² s² / (w_std² (μ₄ + (d + n − 2) s⁴) + noise_std² s²)``; at ``η = 1``
(averaging), Gaussian and noiseless, the error per dimension is ``w_std² (d + 1) / n``.

The model is the regression GPT (``gpt-regression``) trained with the curriculum of Garg et
al.: the active dimensions and the points grow by ``dims_step`` and ``points_step`` every
``curriculum_every`` steps (inactive coordinates of ``x`` are zero).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from icmix._checks import as_prompts, check_nonnegative, check_positive, check_positive_int
from icmix.estimators import regression as reg
from icmix.families.base import RegressionFamily, register_family
from icmix.families.curriculum import Curriculum
from icmix.families.mixlinreg import RegressionObjective
from icmix.predictors import Key, RegressionPredictor
from icmix.random import make_generator
from icmix.testbeds.lsa import lsa_gd

X_DISTS = ("gaussian", "uniform")
KNN_NEIGHBOURS = 3

LEAST_SQUARES, POSTERIOR_MEAN, AVERAGING = Key("least_squares"), Key("posterior_mean"), Key("averaging")
KNN, GD_STEP, ZERO, LSA_GD = Key("knn"), Key("gd_step"), Key("zero"), Key("lsa_gd")


@dataclass(frozen=True)
class LinRegSpec(Curriculum):
    """A ``linreg`` task (see the module docstring) and its curriculum.

    ``points`` (n) is the number of in-context pairs before the query, so a prompt holds
    ``n + 1`` points.  Every ``curriculum_every`` steps the active dimensions grow by
    ``dims_step`` from ``dims_start`` and the points by ``points_step`` from ``points_start``,
    up to ``dim`` and ``points + 1``; ``curriculum_every = 0`` trains at full size."""

    kind: str = "linreg"
    dim: int = 20  # d
    points: int = 40  # n, in-context pairs before the query (a prompt holds n + 1 points)
    x_dist: str = "gaussian"  # gaussian: N(0, I_d); uniform: each coordinate on [-x_range, x_range]
    x_range: float = 1.0  # the uniform distribution's half-width
    w_std: float = 1.0  # w ~ N(0, w_std^2 I_d), drawn afresh for every prompt
    noise_std: float = 0.0  # y = w.x + N(0, noise_std^2)
    curriculum_every: int = 0  # steps between curriculum stages; 0: full size from the first step
    dims_start: int | None = None  # active coordinates at the first stage (None: dim)
    points_start: int | None = None  # points per prompt at the first stage, query included (None: points + 1)
    dims_step: int = 1
    points_step: int = 2

    def __post_init__(self):
        check_positive_int("task.dim", self.dim)
        check_positive_int("task.points", self.points)
        if self.x_dist not in X_DISTS:
            raise ValueError(f"task.x_dist must be one of {', '.join(X_DISTS)}, got {self.x_dist!r}")
        check_positive("task.x_range", self.x_range)
        check_positive("task.w_std", self.w_std)
        check_nonnegative("task.noise_std", self.noise_std)
        self.check_curriculum()

    @property
    def n_points(self) -> int:
        """Points per prompt at full size: the ``points`` pairs and the query."""
        return self.points + 1


@dataclass(frozen=True)
class LinRegTask:
    """The sampler of a ``LinRegSpec``: prompts with a fresh ``w`` each."""

    dim: int
    x_dist: str = "gaussian"
    x_range: float = 1.0
    w_std: float = 1.0
    noise_std: float = 0.0

    @property
    def noise(self) -> float:
        """The response noise's standard deviation (the name ``mixlinreg``'s objective reads)."""
        return self.noise_std

    @property
    def moments(self) -> tuple[float, float]:
        """``(s², μ₄)``: the second and fourth moments of one coordinate of ``x``."""
        if self.x_dist == "gaussian":
            return 1.0, 3.0
        return self.x_range**2 / 3, self.x_range**4 / 5

    def sample(self, batch_size: int, n_points: int, generator: torch.Generator | int | None = None,
               dtype: torch.dtype = torch.float64, active_dims: int | None = None, return_weights: bool = False):
        """``xs (B, N, d)`` and ``ys (B, N)`` (with ``return_weights`` also ``w (B, d)``), on the
        generator's device; coordinates of ``x`` past ``active_dims`` are zero (the curriculum)."""
        b, n = check_positive_int("batch_size", batch_size), check_positive_int("n_points", n_points)
        g = make_generator(generator)
        dev = g.device
        w = self.w_std * torch.randn(b, self.dim, generator=g, dtype=torch.float64, device=dev)
        if self.x_dist == "gaussian":
            xs = torch.randn(b, n, self.dim, generator=g, dtype=torch.float64, device=dev)
        else:
            xs = self.x_range * (2 * torch.rand(b, n, self.dim, generator=g, dtype=torch.float64, device=dev) - 1)
        if active_dims is not None and check_positive_int("active_dims", active_dims) < self.dim:
            xs[..., active_dims:] = 0
        ys = torch.einsum("bnd,bd->bn", xs, w)
        if self.noise_std > 0:
            ys = ys + self.noise_std * torch.randn(b, n, generator=g, dtype=torch.float64, device=dev)
        out = (xs.to(dtype), ys.to(dtype))
        return (*out, w.to(dtype)) if return_weights else out


def gd_step_size(task: LinRegTask, n) -> Tensor:
    """``η_n``, the step size of one gradient step from ``w = 0`` on ``½ (1/n) Σ (w·x_i − y_i)²``
    that minimises the expected squared error at the query, for each ``n`` (pairs seen; 0 gives
    0): ``n w² s² / (w² (μ₄ + (d + n − 2) s⁴) + σ² s²)`` with ``w = w_std``, ``σ = noise_std``."""
    n = torch.as_tensor(n, dtype=torch.float64)
    s2, mu4 = task.moments
    tau2, sigma2 = task.w_std**2, task.noise_std**2
    return n * tau2 * s2 / (tau2 * (mu4 + (task.dim + n - 2) * s2**2) + sigma2 * s2)


def gd_step_loss(task: LinRegTask, n: int, eta: float) -> float:
    """The expected squared error at the query of ``ŵ = η (1/n) Σ y_i x_i`` after ``n ≥ 1`` pairs
    (the closed form ``gd_step_size`` minimises)."""
    n = check_positive_int("n", n)
    s2, mu4 = task.moments
    d, tau2, sigma2 = task.dim, task.w_std**2, task.noise_std**2
    return s2 * (tau2 * (d - 2 * eta * d * s2 + eta**2 * d * (mu4 + (d + n - 2) * s2**2) / n)
                 + eta**2 * sigma2 * d * s2 / n) + sigma2


def _mean_moment(xs: Tensor, ys: Tensor) -> tuple[Tensor, Tensor]:
    """``(1/j) Σ_{i<j} y_i x_i`` for every column ``j`` (zero at ``j = 0``) and ``j`` itself, ``(B, N, d)`` and ``(N,)``."""
    moment = torch.cumsum(xs * ys[..., None], dim=1) - xs * ys[..., None]  # exclusive: the pairs before j
    count = torch.arange(xs.shape[1], dtype=torch.float64, device=xs.device)
    return moment / count.clamp(min=1)[:, None], count


def averaging(xs, ys) -> Tensor:
    """``ŵ = (1/j) Σ_{i<j} y_i x_i`` at every column ``j``, evaluated at ``x_j``; 0 at ``j = 0``."""
    xs, ys = as_prompts(xs, ys)
    w, _ = _mean_moment(xs, ys)
    return (w * xs).sum(-1)


def gd_step(xs, ys, task: LinRegTask) -> Tensor:
    """One optimal gradient step from ``w = 0`` at every column ``j``: ``η_j (1/j) Σ_{i<j} y_i x_i · x_j``."""
    xs, ys = as_prompts(xs, ys)
    w, count = _mean_moment(xs, ys)
    return gd_step_size(task, count) * (w * xs).sum(-1)


def knn(xs, ys, k: int = KNN_NEIGHBOURS) -> Tensor:
    """The mean ``y`` of the ``k`` pairs before column ``j`` whose ``x`` is nearest ``x_j`` (all of
    them while ``j < k``); 0 at ``j = 0``."""
    k = check_positive_int("k", k)
    xs, ys = as_prompts(xs, ys)
    n = xs.shape[1]
    dist = torch.cdist(xs, xs)  # (B, N, N): row j, column i
    before = torch.ones(n, n, dtype=torch.bool, device=xs.device).tril(-1)  # i < j
    dist = dist.masked_fill(~before, math.inf)
    k = min(k, max(n - 1, 1))
    near, idx = dist.topk(k, dim=-1, largest=False)  # (B, N, k)
    picked = torch.gather(ys[:, None, :].expand(-1, n, -1), 2, idx)
    valid = torch.isfinite(near)
    return (picked * valid).sum(-1) / valid.sum(-1).clamp(min=1)


def zero(xs, ys) -> Tensor:
    """``ŷ = 0`` everywhere."""
    xs, ys = as_prompts(xs, ys)
    return torch.zeros_like(ys)


class LinRegObjective(RegressionObjective):
    """``mixlinreg``'s objective on ``linreg`` prompts (fresh ones, at the curriculum's stage):
    squared error of every prediction, evaluated by ``eval_nmse_last``, whose optimum is the
    posterior mean's."""

    def __init__(self, task: LinRegTask, cfg):
        self.task, self.cfg, self.prompts = task, cfg, None  # (always fresh prompts: no fixed training set)

    def optimum(self, batch: dict) -> float | None:
        """``eval_nmse_last`` of the posterior mean (Bayes-optimal) on ``batch``."""
        xs, ys = batch["xs"].double(), batch["ys"].double()
        pm = posterior_mean(xs, ys, self.task)
        return ((pm[:, -1] - ys[:, -1]) ** 2).mean().item() / self.task.dim


def posterior_mean(xs, ys, task: LinRegTask) -> Tensor:
    """The posterior mean of ``w`` given the pairs before each column, at ``x_j``: ridge at
    ``noise_std² / w_std²`` (least squares when noiseless)."""
    return reg.ridge(xs, ys, noise=task.noise_std, prior_var=task.w_std**2)


class LinRegFamily(RegressionFamily):
    """Linear regression in context (Garg et al. 2022), learned by the regression GPT
    (``gpt-regression``) or by one layer of linear self-attention (``lsa``, von Oswald et al.)."""

    kind = "linreg"
    spec = LinRegSpec
    models = ("gpt-regression", "lsa")
    losses = ("mse",)

    def build(self, spec: LinRegSpec) -> LinRegTask:
        """The ``LinRegTask`` of the spec."""
        return LinRegTask(spec.dim, spec.x_dist, spec.x_range, spec.w_std, spec.noise_std)

    def objective(self, task: LinRegTask, cfg) -> LinRegObjective:
        """Fresh prompts at the curriculum's stage (``LinRegObjective``)."""
        return LinRegObjective(task, cfg)

    def run_name(self, cfg) -> str:
        """``d{dim}-n{points}-{x_dist}[-noise{noise_std}]``."""
        t = cfg.task
        return f"d{t.dim}-n{t.points}-{t.x_dist}" + (f"-noise{t.noise_std:g}" if t.noise_std else "")

    def bayes_predictor(self, task: LinRegTask):
        """The posterior mean (Bayes-optimal under squared error)."""
        return RegressionPredictor(POSTERIOR_MEAN, partial(posterior_mean, task=task), "posterior mean")

    def predictors(self, task: LinRegTask) -> list:
        """``least_squares``, ``posterior_mean``, ``averaging``, ``knn``, ``gd_step``, ``zero`` and
        ``lsa_gd``, the linear self-attention layer built to compute ``gd_step`` (``icmix.testbeds.lsa``)."""
        return [RegressionPredictor(LEAST_SQUARES, reg.ols, "least squares"),
                self.bayes_predictor(task),
                RegressionPredictor(AVERAGING, averaging, "averaging"),
                RegressionPredictor(KNN, knn, f"{KNN_NEIGHBOURS}-nearest neighbours"),
                RegressionPredictor(GD_STEP, partial(gd_step, task=task), "one GD step (optimal η)"),
                RegressionPredictor(ZERO, zero, "zero"),
                RegressionPredictor(LSA_GD, partial(lsa_gd, step_size=partial(gd_step_size, task)),
                                    "linear self-attention (built: one GD step)")]

    def query_points(self, spec: LinRegSpec) -> int:
        """Points of a prompt whose last is the query: ``points + 1``."""
        return spec.points + 1


register_family(LinRegFamily())
