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
- ``run_name(cfg) -> str``: the part of a run's directory name that says what it learns.

``train``, ``evaluate``, run naming and the CLI look families up here; none of them branches
on a kind.  Register your own with ``register_family(MyFamily())`` (see the README's
"Extending icmix"); the built-in families (``mtd``, ``mixlinreg``) register on first lookup.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import torch
    from torch import nn

    from icmix.train.config import TrainConfig

# The built-in families, imported (and so registered) the first time the registry is asked.
BUILTIN = ("icmix.families.mtd", "icmix.families.mixlinreg")

_FAMILIES: dict[str, TaskFamily] = {}
_builtins_loaded = False


class Objective(ABC):
    """What training needs from a task: batches, a differentiable loss and evaluation metrics.

    ``batch(step, size, generator)`` may depend on the step (a curriculum); ``eval_batch`` is
    drawn once per run from a fixed generator; ``evaluate`` returns ``{"eval_loss": ..., other
    metrics}``, logged to ``metrics.jsonl`` and shown on the progress bar."""

    @abstractmethod
    def batch(self, step: int, size: int, generator: torch.Generator) -> dict: ...

    @abstractmethod
    def eval_batch(self, size: int, generator: torch.Generator) -> dict: ...

    @abstractmethod
    def loss(self, model: nn.Module, batch: dict, device: torch.device) -> torch.Tensor: ...

    @abstractmethod
    def evaluate(self, model: nn.Module, batch: dict, device: torch.device) -> dict[str, float]: ...


class TaskFamily(ABC):
    """One registered task family (see the module docstring for what each member means)."""

    kind: ClassVar[str]
    spec: ClassVar[type]
    models: ClassVar[tuple[str, ...]]
    losses: ClassVar[tuple[str, ...]] = ("mse", "ce")

    @abstractmethod
    def build(self, spec) -> Any:
        """The task (a sampler that knows its ground truth) a spec describes."""

    @abstractmethod
    def objective(self, task, cfg: TrainConfig) -> Objective:
        """The training objective of ``task`` under the training config ``cfg``."""

    @abstractmethod
    def run_name(self, cfg: TrainConfig) -> str:
        """What a run learns, for its directory name (``m3-T32-mse``)."""

    def predictors(self, task, **options) -> list:
        """The family's standard predictors of ``task`` (reference and baselines), each with a ``key``."""
        return []

    def check(self, cfg: TrainConfig) -> None:
        """Refuse a training config this family cannot train (``ValueError``)."""
        if cfg.loss not in self.losses:
            raise ValueError(f"a {self.kind!r} task trains with loss {' or '.join(map(repr, self.losses))}, "
                             f"got {cfg.loss!r}")


def register_family(family: TaskFamily, replace: bool = False) -> TaskFamily:
    """Register ``family`` under ``family.kind``; returns it (so it can decorate an instance).

    Raises ``ValueError`` if the kind is taken (pass ``replace=True`` to override it) or the
    family does not name its ``kind``, ``spec`` and ``models``."""
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
    _load_builtins()
    try:
        return _FAMILIES[kind]
    except (KeyError, TypeError):
        raise ValueError(f"unknown task kind {kind!r}; registered: {', '.join(sorted(_FAMILIES))}") from None


def family_of(spec) -> TaskFamily:
    """The family of a task spec (by its ``kind``)."""
    return get_family(spec.kind)


def families() -> dict[str, TaskFamily]:
    """Every registered family, by kind."""
    _load_builtins()
    return dict(_FAMILIES)


def _load_builtins() -> None:
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN:
            importlib.import_module(module)
