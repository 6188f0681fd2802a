"""The task-family contract and its registry.

A *task family* is the unit of extension: one registered object that knows

- ``kind``: the name configs use (``task: {kind: mtd, ...}``);
- ``spec``: its frozen config dataclass (the ``task:`` section), whose ``model_fields()``
  gives the model config fields the task sets (vocabulary, length, dimension);
- ``models``: the model kinds (``icmix.models.MODELS``) that can learn it;
- ``losses``: the training losses it allows;
- ``build(spec) -> task``: the sampler;
- ``objective(task, cfg) -> Objective``: training batches, loss and evaluation metrics;
- ``predictors(task, **options) -> list``: its standard predictors (each with a stable ``key``);
- ``run_name(cfg) -> str``: the part of a run's directory name that says what it learns;
- ``bayes_predictor(task)``: its Bayes-optimal predictor (or the best it has), or ``None``;
  a run's convergence is judged against it, and is ``unknown`` without it.

``cfg`` is always the run's ``icmix.train.TrainConfig``: training sits above the families in
the layers, so a family reads the config it is given and never imports ``icmix.train``.

``train``, ``evaluate``, run naming and the CLI look families up here; none of them branches
on a kind.  Register your own with ``register_family(MyFamily())`` (see the README's
"Extending icmix"); the built-in families (``mtd``, ``mtdg``, ``mixlinreg``, ``text``,
``mtdg-text``) register on first lookup, and so do the families an installed package names in
the ``icmix.families`` entry-point group (``[project.entry-points."icmix.families"] markov =
"mypackage.markov"``), so a run of a plugin family loads in any process (``icmix train``,
``load_run``).
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

from icmix.plugins import how_to_register, load_entry_point, load_from_environment

if TYPE_CHECKING:
    import torch
    from torch import nn


# The built-in families, imported (and so registered) the first time the registry is asked,
# then the modules installed packages name in this entry-point group.
BUILTIN = ("icmix.families.mtd", "icmix.families.mixlinreg", "icmix.families.text")
ENTRY_POINTS = "icmix.families"

_FAMILIES: dict[str, TaskFamily] = {}
_builtins_loaded = False
_plugins_loaded = False


class Objective(ABC):
    """What training needs from a task: batches, a differentiable loss and evaluation metrics.

    ``batch(step, size, generator)`` may depend on the step (a curriculum); ``eval_batch`` is
    drawn once per run from a fixed generator; ``evaluate`` returns ``{"eval_loss": ..., other
    metrics}``, logged to ``metrics.jsonl`` and shown on the progress bar.

    A run's convergence (``icmix.train.convergence``) is judged by ``progress_metric`` (a key of
    ``evaluate``) in excess of ``optimum(eval_batch)``, the best value any predictor can reach
    on that batch where the family knows it; ``None`` (the default) makes it ``unknown``."""

    progress_metric: str = "eval_loss"

    def optimum(self, batch: dict) -> float | None:
        """The Bayes-optimal value of ``progress_metric`` on ``batch``, or ``None`` if unknown."""
        return None

    @abstractmethod
    def batch(self, step: int, size: int, generator: torch.Generator) -> dict:
        """One training batch of ``size`` examples for step ``step`` (a curriculum may grow the
        examples with it), drawn with ``generator``: the dict ``loss`` reads."""
        ...

    @abstractmethod
    def eval_batch(self, size: int, generator: torch.Generator) -> dict:
        """The evaluation batch of ``size`` examples, drawn once per run from the fixed ``generator``."""
        ...

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        """The scalar, differentiable training loss of ``model`` on ``batch``, computed on ``device``."""
        ...

    @abstractmethod
    def evaluate(self, model: nn.Module, batch: dict, device: torch.device) -> dict[str, float]:
        """The metrics of ``model`` on ``batch`` as floats: ``{"eval_loss": ..., other metrics}``."""
        ...


class TaskFamily(ABC):
    """One registered task family (see the module docstring for what each member means)."""

    kind: ClassVar[str]
    spec: ClassVar[type]
    models: ClassVar[tuple[str, ...]]
    losses: ClassVar[tuple[str, ...]] = ("mse", "ce")
    # key ids of predictors too slow for `icmix baselines` to score unless named (--predictors)
    slow_predictors: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def build(self, spec) -> Any:
        """The task (a sampler that knows its ground truth) a spec describes."""

    @abstractmethod
    def objective(self, task, cfg) -> Objective:
        """The training objective of ``task`` under the training config ``cfg``."""

    @abstractmethod
    def run_name(self, cfg) -> str:
        """What a run learns, for its directory name (``m3-T32-mse``)."""

    def predictors(self, task, **options) -> list:
        """The family's standard predictors of ``task`` (reference and baselines), each with a ``key``."""
        return []

    def bayes_predictor(self, task):
        """The Bayes-optimal predictor of ``task`` (or the best one the family has), with a
        ``key``; ``None`` where the family has none.  Training judges a run's convergence by its
        excess over this predictor's loss (``Objective.optimum``); without one the convergence
        of the family's runs is ``unknown``."""
        return None

    def baseline_losses(self, task, spec, predictors, n: int, generator: torch.Generator) -> dict:
        """Each predictor's loss on the same ``n`` fresh examples drawn with ``generator``: ``{key
        id: (n,) float64 array}`` (``icmix baselines``).  ``RegressionFamily`` scores the squared
        error at the query, ``SequenceFamily`` the mean next-token cross-entropy in nats over the
        positions predicted; another family says how its losses are scored here."""
        raise ValueError(f"the {self.kind!r} family does not say how its predictors' losses are scored "
                         "(TaskFamily.baseline_losses)")

    def check(self, cfg) -> None:
        """Refuse a training config this family cannot train (``ValueError``)."""
        if cfg.loss not in self.losses:
            raise ValueError(f"a {self.kind!r} task trains with loss {' or '.join(map(repr, self.losses))}, "
                             f"got {cfg.loss!r}")


class RegressionFamily(TaskFamily):
    """A family of regression prompts ``xs (B, N, d)``, ``ys (B, N)`` whose predictors answer
    ``predict(xs, ys) -> (B, N)`` (column ``j`` predicts ``y_j`` from the pairs before it); its task
    draws prompts with ``sample(n, points, generator)``.  The loss of ``icmix baselines`` is the
    squared error at the query, the last of ``query_points(spec)`` points."""

    def query_points(self, spec) -> int:
        """Points of a prompt whose last is the query: ``spec.n_points`` unless a family says otherwise."""
        return spec.n_points

    def baseline_losses(self, task, spec, predictors, n: int, generator: torch.Generator) -> dict:
        """``(ŷ − y)²`` at the query of ``n`` fresh prompts, per predictor."""
        xs, ys = task.sample(n, self.query_points(spec), generator)
        return {p.key.id: ((p.predict(xs, ys)[:, -1].double() - ys[:, -1].double()) ** 2).numpy()
                for p in predictors}


class SequenceFamily(TaskFamily):
    """A family of token sequences whose next-token distribution is known given a latent
    (MTD's lag weights, a Markov chain's transition matrix).  Its predictors answer the prefix
    contract ``predict(tokens (B, T), task, lengths (P,)) -> (B, P, Q)``; it trains with a
    next-token objective (``NextTokenObjective``) and evaluates by KL(true ‖ predicted).

    A subclass gives ``build``, ``run_name``, and:

    - ``sample(task, n, length, generator) -> (tokens (n, length), latent)``;
    - ``true_predictive(task, tokens, latent, lengths) -> (B, P, Q)``: the next-token
      distribution after each prefix ``tokens[:, :L]`` given the latent.
    """

    @abstractmethod
    def sample(self, task, n: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, Any]:
        """``n`` sequences of ``length`` tokens drawn with ``generator``, with the latent each was
        drawn with: ``(tokens (n, length), latent)``."""
        ...

    @abstractmethod
    def true_predictive(self, task, tokens: torch.Tensor, latent, lengths) -> torch.Tensor:
        """``(B, P, Q)``: the next-token distribution after each prefix ``tokens[:, :L]``, ``L`` in
        ``lengths``, given the sequences' ``latent``."""
        ...

    def objective(self, task, cfg) -> Objective:
        """Next-token prediction on this family's sequences (``NextTokenObjective``)."""
        return NextTokenObjective(self, task, cfg)

    def same_task(self, a, b) -> bool:
        """Whether tasks ``a`` and ``b`` are the same (a trained model refuses another task)."""
        return a == b

    def first_predicted(self, spec) -> int:
        """The shortest prefix whose next token the family's predictors predict (1; MTD's: its order + 1)."""
        return 1

    def baseline_losses(self, task, spec, predictors, n: int, generator: torch.Generator) -> dict:
        """The mean next-token cross-entropy (nats) over the prefixes ``first_predicted(spec)`` to
        ``spec.length`` of ``n`` fresh sequences of ``spec.length + 1`` tokens, per predictor, and
        ``true``'s (the sequences' own next-token distributions: the floor).  A tunable predictor is
        tuned first on ``min(n, 500)`` other sequences, drawn after them."""
        import torch

        from icmix.predictors import Tunable

        lengths = list(range(self.first_predicted(spec), spec.length + 1))
        tokens, latent = self.sample(task, n, spec.length + 1, generator)
        targets = tokens[:, lengths]  # the token after each prefix
        seen = tokens[:, :-1]  # (no predictor sees the last token)

        def ce(p):  # (B, P, Q) -> (B,): the mean over prefixes of -log p(next token)
            picked = p.double().gather(-1, targets[..., None])[..., 0]
            return -torch.log(picked.clamp_min(torch.finfo(torch.float64).tiny)).mean(1).numpy()

        out, tune = {}, None
        for pred in predictors:
            if isinstance(pred, Tunable):
                if tune is None:
                    tune = self.sample(task, min(n, 500), spec.length, generator)
                pred.tune(tune[0], tune[1], task, lengths)
            out[pred.key.id] = ce(pred.predict(seen, task, lengths))
        out["true"] = ce(self.true_predictive(task, seen, latent, lengths))
        return out

    def evaluate(self, task, predictors, lengths, n_sequences: int, n_tune: int = 500, seed: int = 0,
                 progress: bool = False):
        """Mean KL(true ‖ predicted) of the next token per predictor and prefix length: a tidy
        table (``estimator`` label, ``length``, ``kl_mean, kl_sem, kl_ci, n, beta``, the key
        columns and ``family``), as ``icmix.evaluate.evaluate_sequences`` computes it."""
        from icmix.evaluate import evaluate_sequences

        table = evaluate_sequences(task, predictors, lengths, n_sequences, n_tune, seed, progress,
                                   sample=lambda n, t, gen: self.sample(task, n, t, gen),
                                   truth=lambda tokens, latent, L: self.true_predictive(task, tokens, latent, L))
        return table.assign(family=self.kind)


class NextTokenObjective(Objective):
    """Next-token prediction on sequences of ``cfg.task.length`` tokens from a ``SequenceFamily``:
    the loss (``cfg.loss``) on the positions ``loss_mask`` selects (``cfg.loss_positions``);
    evaluation adds ``eval_kl``, KL(true ‖ model) of the token after the last position, with
    the truth from ``reference(batch) -> (B, Q)``."""

    progress_metric = "eval_kl"

    def __init__(self, family: SequenceFamily, task, cfg):
        self.family, self.task, self.cfg = family, task, cfg
        self.mask = self.loss_mask(cfg.task.length, cfg.loss_positions)

    def loss_mask(self, length: int, positions: str) -> torch.Tensor:
        """``(T,)`` bool: ``last``: the final position; ``all``: every position."""
        import torch

        mask = torch.zeros(length, dtype=torch.bool)
        mask[-1 if positions == "last" else slice(None)] = True
        return mask

    def reference(self, batch: dict) -> torch.Tensor:
        """``(B, Q)``: the true distribution of the token after ``batch["inputs"]``."""
        t = batch["inputs"].shape[1]
        return self.family.true_predictive(self.task, batch["inputs"], batch["latent"], [t])[:, 0]

    def optimum(self, batch: dict) -> float | None:
        """``eval_kl`` of the family's Bayes-optimal predictor (``bayes_predictor``) on ``batch``;
        ``None`` where the family has none."""
        from icmix.metrics import kl_divergence

        bayes = self.family.bayes_predictor(self.task)
        if bayes is None:
            return None
        t = batch["inputs"].shape[1]
        p_bayes = bayes.predict(batch["inputs"], self.task, [t])[:, 0]
        return kl_divergence(self.reference(batch).double(), p_bayes.double()).mean().item()

    def batch(self, step: int, size: int, generator: torch.Generator) -> dict:
        """``inputs (B, T)``, ``targets (B, T)`` (the token after each position) and the
        sequences' ``latent``; sequences of ``T + 1`` tokens are drawn."""
        tokens, latent = self.family.sample(self.task, size, self.cfg.task.length + 1, generator)
        return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "latent": latent}

    def eval_batch(self, size: int, generator: torch.Generator) -> dict:
        """A batch as ``batch`` draws it at the final step (``cfg.steps``)."""
        return self.batch(self.cfg.steps, size, generator)

    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor:
        """``cfg.loss`` of the model's outputs ``(B, T, Q)`` against the next tokens, averaged over
        the positions of ``mask``."""
        from icmix.objectives import loss_fn

        out = model(batch["inputs"].to(device))
        return loss_fn(out.float(), batch["targets"].to(device), self.mask.to(device), self.cfg.loss)

    def evaluate(self, model: nn.Module, batch: dict, device: torch.device) -> dict[str, float]:
        """Without gradients: ``eval_loss``, the training loss, and ``eval_kl``, the mean KL(true ‖ model)
        of the token after the last position, the output read as a distribution as ``cfg.loss`` implies."""
        import torch

        from icmix.metrics import kl_divergence
        from icmix.objectives import loss_fn, to_distribution

        with torch.no_grad():
            out = model(batch["inputs"].to(device))
            loss = loss_fn(out, batch["targets"].to(device), self.mask.to(device), self.cfg.loss).item()
            p_hat = to_distribution(out[:, -1].cpu(), self.cfg.loss)
        return {"eval_loss": loss, "eval_kl": kl_divergence(self.reference(batch), p_hat).mean().item()}


def register_family(family: TaskFamily, replace: bool = False) -> TaskFamily:
    """Register ``family`` under ``family.kind``; returns it.

    Raises ``ValueError`` if the kind is taken by another family class (pass ``replace=True``
    to override it; the same class registering again, as a re-imported module does, replaces
    silently) or the family does not name its ``kind``, ``spec`` and ``models``."""
    if not isinstance(family, TaskFamily):
        raise ValueError(f"a task family must be a TaskFamily instance, got {family!r}")
    for attr in ("kind", "spec", "models"):
        if not hasattr(family, attr):
            raise ValueError(f"task family {type(family).__name__} does not set {attr!r}")
    _load_builtins()
    if family.kind in _FAMILIES and not replace and type(_FAMILIES[family.kind]) is not type(family):
        raise ValueError(f"a task family {family.kind!r} is already registered ({type(_FAMILIES[family.kind]).__name__}); "
                         "pass replace=True to replace it")
    _FAMILIES[family.kind] = family
    return family


def get_family(kind: str) -> TaskFamily:
    """The registered family of ``kind``; ``ValueError`` naming the registered ones otherwise."""
    _load_plugins()
    try:
        return _FAMILIES[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task kind {kind!r}; registered: {', '.join(sorted(_FAMILIES))}. "
                         f"A task family from another package: {how_to_register('families')}") from None


def families() -> dict[str, TaskFamily]:
    """Every registered family, by kind."""
    _load_plugins()
    return dict(_FAMILIES)


def _load_builtins() -> None:
    """Import the built-in families' modules (they register as they are imported)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # (the modules below register, and so call back here)
    try:
        for module in BUILTIN:
            importlib.import_module(module)
    except BaseException:
        _builtins_loaded = False  # the next lookup raises the same error, not "unknown task kind"
        raise


def _load_plugins() -> None:
    """The built-in families, then the plugins': the modules installed packages name in the
    ``icmix.families`` entry-point group and this command's ``--plugin`` modules.  Only a lookup
    loads plugins, never a registration: a plugin module may import ``icmix.train``, which
    registers the built-in families while it is itself being imported."""
    global _plugins_loaded
    _load_builtins()
    if _plugins_loaded:
        return
    _plugins_loaded = True
    try:
        from importlib.metadata import entry_points

        for plugin in entry_points(group=ENTRY_POINTS):
            load_entry_point(plugin, "task family")
        load_from_environment()
    except BaseException:
        _plugins_loaded = False
        raise
