"""The regression-mixture task family (SPEC §2): in-context linear regression on prompts from a
mixture of linear regressions, with the curriculum of Garg et al. (2022) and the fixed
training sets of the regression paper's Fig. 3."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from icmix._checks import check_positive_int
from icmix.predictors import Key
from icmix.families.base import Objective, RegressionFamily, register_family
from icmix.families.curriculum import Curriculum
from icmix.random import Stream, stream
from icmix.tasks import MixLinRegTask

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class MixLinRegSpec(Curriculum):
    """A mixture of linear regressions (SPEC §2) and its curriculum (Garg et al. 2022).

    Every ``curriculum_every`` steps the active dimensions grow by ``dims_step`` from
    ``dims_start`` (inactive coordinates of x are zero) and the prompt points by
    ``points_step`` from ``points_start``, up to ``dim`` and ``n_points``.
    ``curriculum_every = 0`` trains at full size from the start.

    ``n_train`` (the paper's fixed training-set size, Fig. 3, Appendix C.1): train on a fixed
    set of ``n_train`` prompts of ``n_points`` points instead of fresh ones.  Each batch draws
    prompts from it (with replacement) and presents a random ``points`` of each prompt's
    pairs in random order ("drop and shuffle").  The dimension curriculum cannot be applied
    to fixed prompts (zeroing coordinates of x would break ``y = <w, x>``), so with
    ``n_train`` only the points curriculum is allowed.
    """

    kind: str = "mixlinreg"  # the family's name, which selects this spec in a task: section
    dim: int = 20  # d, the covariate dimension (x ~ N(0, I_d)); the model's dim
    n_components: int = 5  # m, the regression vectors (norm sqrt(d)); each prompt uses one, drawn uniformly
    noise: float = 0.0  # sigma >= 0, the standard deviation of the Gaussian noise added to each y
    seed: int = 0  # seeds the components (and an n_train run's fixed prompts); the run's seed draws the batches
    n_points: int = 41  # N, (x, y) pairs per prompt at full size (evaluation, the curriculum's end); sets max_points
    curriculum_every: int = 0  # steps between curriculum stages; 0: full size (dim, n_points) from the first step
    dims_start: int | None = None  # active coordinates of x at the first stage, 1..dim (None: dim)
    points_start: int | None = None  # pairs per prompt at the first stage, 1..n_points (None: n_points)
    dims_step: int = 1  # active coordinates added at each stage (>= 0), up to dim
    points_step: int = 2  # pairs added at each stage (>= 0), up to n_points
    n_train: int | None = None  # a fixed training set of this many prompts (points curriculum only); None: fresh ones

    def __post_init__(self):
        check_positive_int("task.dim", self.dim)
        check_positive_int("task.n_components", self.n_components)
        check_positive_int("task.n_points", self.n_points)
        if not self.noise >= 0:
            raise ValueError(f"task.noise must be >= 0, got {self.noise}")
        self.check_curriculum()
        if self.n_train is not None:
            check_positive_int("task.n_train", self.n_train)
            if self.curriculum_every and self.dims_step and (self.dims_start or self.dim) < self.dim:
                raise ValueError("task.n_train (a fixed training set) allows only the points curriculum: "
                                 "set task.dims_start to task.dim (or task.dims_step to 0)")


def training_set(task: MixLinRegTask, n_prompts: int, n_points: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed training set of a ``task.n_train`` run, float64: ``xs (n, N, d)``, ``ys (n, N)``.

    A function of the task seed alone, so the EM and SA baselines of Fig. 3 can be fitted on
    exactly the prompts the transformer was trained on."""
    return task.sample(n_prompts, n_points, stream(seed, Stream.TRAINING_SET))


class RegressionObjective(Objective):
    """In-context regression: squared error of the prediction of every ``y_j`` (``loss_positions
    = all``, the paper) or of the last one, on prompts drawn at the curriculum's stage;
    evaluation at full size, always on fresh prompts, adds the normalised MSE (MSE / d) of
    the last prediction.  With ``task.n_train`` the batches come from a fixed training set
    (see ``MixLinRegSpec``)."""

    def __init__(self, task: MixLinRegTask, cfg):
        self.task, self.cfg = task, cfg
        spec = cfg.task
        self.prompts = None
        if spec.n_train is not None:
            xs, ys = training_set(task, spec.n_train, spec.n_points, spec.seed)
            self.prompts = xs.float(), ys.float()

    def batch(self, step: int, size: int, generator: torch.Generator) -> dict:
        """Float32 prompts ``xs (B, points, d)``, ``ys (B, points)`` at the curriculum's stage of
        ``step``: fresh ones with ``dims`` active coordinates, or, with ``n_train``, prompts of the fixed
        training set (with replacement), each with a random ``points`` of its pairs in random order."""
        dims, points = self.cfg.task.stage(step)
        if self.prompts is None:
            xs, ys = self.task.sample(size, points, generator, dtype=torch.float32, active_dims=dims)
            return {"xs": xs, "ys": ys}
        dev = generator.device
        if self.prompts[0].device != dev:
            self.prompts = tuple(t.to(dev) for t in self.prompts)
        xs, ys = self.prompts
        rows = torch.randint(len(ys), (size, 1), generator=generator, device=dev)  # prompts, with replacement
        keep = torch.rand(size, ys.shape[1], generator=generator, device=dev).argsort(dim=1)[:, :points]  # drop and shuffle
        return {"xs": xs[rows, keep], "ys": ys[rows, keep]}

    def eval_batch(self, size: int, generator: torch.Generator) -> dict:
        """Fresh float32 prompts ``xs (B, N, d)``, ``ys (B, N)`` at the curriculum's stage of the
        final step (``cfg.steps``), never from the fixed training set."""
        dims, points = self.cfg.task.stage(self.cfg.steps)
        xs, ys = self.task.sample(size, points, generator, dtype=torch.float32, active_dims=dims)
        return {"xs": xs, "ys": ys}

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        """Mean squared error of the model's predictions ``(B, N)`` of ``ys``: over every position,
        or at the last one only with ``loss_positions = last``."""
        ys = batch["ys"].to(device)
        err = (model(batch["xs"].to(device), ys).float() - ys) ** 2
        return err[:, -1].mean() if self.cfg.loss_positions == "last" else err.mean()

    def evaluate(self, model: nn.Module, batch: dict, device: torch.device) -> dict[str, float]:
        """Without gradients: ``eval_loss``, the training loss, and ``eval_nmse_last``, the squared
        error of the last prediction divided by ``d``."""
        with torch.no_grad():
            loss = self.loss(model, batch, device).item()
            ys = batch["ys"].to(device)
            last = ((model(batch["xs"].to(device), ys)[:, -1].float() - ys[:, -1]) ** 2).mean().item()
        return {"eval_loss": loss, "eval_nmse_last": last / self.task.dim}

    progress_metric = "eval_nmse_last"

    def optimum(self, batch: dict) -> float | None:
        """``eval_nmse_last`` of the posterior mean with the true components (Bayes-optimal)."""
        from icmix.estimators.regression import posterior_mean

        if self.cfg.family.bayes_predictor(self.task) is None:  # a family that names none: unknown
            return None
        xs, ys = batch["xs"].double(), batch["ys"].double()
        pm = posterior_mean(xs, ys, self.task.components.double(), self.task.noise)
        return ((pm[:, -1] - ys[:, -1]) ** 2).mean().item() / self.task.dim


# The regression predictors' keys (tables, figures and claims select by these).
PM_ORACLE, ARGMIN_ORACLE = Key("posterior-mean", "oracle"), Key("argmin", "oracle")
PM_EM, PM_SA = Key("posterior-mean", "em"), Key("posterior-mean", "sa")
OLS, RIDGE, CONSTRUCTED = Key("ols"), Key("ridge", "bayesian"), Key("construction", "posterior-mean")


class MixLinRegFamily(RegressionFamily):
    """Mixtures of linear regressions (SPEC §2), learned in context by the regression GPT
    (``gpt-regression``) with the MSE loss; its Bayes-optimal predictor is the posterior mean with
    the task's own components."""

    kind = "mixlinreg"
    spec = MixLinRegSpec
    models = ("gpt-regression",)
    losses = ("mse",)

    def build(self, spec: MixLinRegSpec) -> MixLinRegTask:
        """The ``MixLinRegTask`` of the spec: ``n_components`` components in ``dim`` dimensions,
        drawn from ``seed``, with response noise ``noise``."""
        return MixLinRegTask(spec.dim, spec.n_components, spec.noise, seed=spec.seed)

    def objective(self, task: MixLinRegTask, cfg) -> RegressionObjective:
        """A ``RegressionObjective``: fresh prompts, or the fixed training set of ``task.n_train``."""
        return RegressionObjective(task, cfg)

    def run_name(self, cfg) -> str:
        """``d{dim}-m{n_components}-noise{noise}``, with ``-n{n_train}`` for a fixed training set."""
        t = cfg.task
        return f"d{t.dim}-m{t.n_components}-noise{t.noise}" + (f"-n{t.n_train}" if t.n_train else "")

    def bayes_predictor(self, task: MixLinRegTask):
        """The posterior mean with the task's own components and noise (Bayes-optimal)."""
        return self.predictors(task)[0]

    def predictors(self, task: MixLinRegTask, noise: float | None = None) -> list:
        """The posterior mean and argmin with the task's own components (oracle), and OLS."""
        from functools import partial

        from icmix.estimators import regression as reg
        from icmix.predictors import RegressionPredictor

        noise = task.noise if noise is None else noise
        w = task.components
        return [RegressionPredictor(PM_ORACLE, partial(reg.posterior_mean, components=w, noise=noise),
                                    "posterior mean (oracle)"),
                RegressionPredictor(ARGMIN_ORACLE, partial(reg.argmin, components=w), "argmin (oracle)"),
                RegressionPredictor(OLS, reg.ols, "OLS")]


register_family(MixLinRegFamily())
