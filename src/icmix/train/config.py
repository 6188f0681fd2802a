"""Training configuration: frozen dataclasses, loaded from YAML, validated before any work::

    task:  {kind: mtd, vocab_size: 10, order: 3, alpha: 1.0, seed: 0, length: 64}
           # or {kind: mixlinreg, dim: 20, n_components: 5, noise: 0.0, n_points: 41,
           #     curriculum_every: 2000, dims_start: 5, points_start: 11}  (model kind gpt-regression)
    model: {kind: disentangled, n_layers: 3}        # other keys go to the model's config class
    optim: {lr: 1.0e-3, schedule: cosine, warmup_steps: 100, grad_clip: 1.0}
    steps: 5000
    batch_size: 128
    loss: mse            # mse (Brier score of the linear output) | ce (cross-entropy of logits)
    loss_positions: last # last (the paper) | all (every position with a full lag history)
    seed: 0
    device: auto         # auto | cpu | cuda[:N];  precision: fp32 | bf16 | fp16 (autocast on CUDA)
    data_device: cpu     # cpu | device: sample training batches on the training device
    tracking: [wandb]    # trackers besides metrics.jsonl: tensorboard, wandb (never part of the run's name)

Overrides use dotted keys: ``--set optim.lr=3e-4 --set model.n_layers=5``.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from icmix._checks import check_positive, check_positive_int
from icmix.families.base import TaskFamily, get_family
from icmix.families.mixlinreg import MixLinRegSpec
from icmix.families.mtd import MTDSpec
from icmix.overrides import apply_dotted_overrides, typed
from icmix.train.tracking import check_tracking

LOSSES = ("mse", "ce")
LOSS_POSITIONS = ("last", "all")
SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("fp32", "bf16", "fp16")
DATA_DEVICES = ("cpu", "device")


# The built-in task specs, under their historical names (``icmix.families`` owns them).
TaskSpec = MTDSpec
RegressionTaskSpec = MixLinRegSpec


@dataclass(frozen=True)
class ModelSpec:
    """The ``model:`` section: the model ``kind`` (a key of ``icmix.models.MODELS``) and ``params``,
    its other keys, passed to that model's config class together with the fields the task sets
    (``TrainConfig.model_config``)."""

    kind: str = "disentangled"
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OptimConfig:
    """The ``optim:`` section: Adam's ``lr``, ``betas`` and ``weight_decay`` (an L2 term, as
    ``torch.optim.Adam`` adds it); the learning-rate ``schedule`` after ``warmup_steps`` of linear
    warm-up (``constant``, or ``cosine`` or ``linear`` decay to 0 at the last step); ``grad_clip``,
    the largest gradient norm (``None``: no clipping)."""

    lr: float = 1e-3  # Adam's peak learning rate (> 0), reached after warm-up and then scaled by the schedule
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's (beta1, beta2), each in [0, 1)
    weight_decay: float = 0.0  # L2 coefficient (>= 0) that torch.optim.Adam adds to the gradient (not AdamW's decay)
    schedule: str = "constant"  # after warm-up: constant, or cosine / linear decay of the rate to 0 at the last step
    warmup_steps: int = 0  # steps of linear warm-up, the rate rising from lr / warmup_steps to lr (0: none)
    grad_clip: float | None = 1.0  # largest total gradient norm (clip_grad_norm_) before each step; None: no clipping

    def __post_init__(self):
        check_positive("optim.lr", self.lr)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas}")
        if self.weight_decay < 0:
            raise ValueError(f"optim.weight_decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        check_positive_int("optim.warmup_steps", self.warmup_steps, minimum=0)
        if self.grad_clip is not None:
            check_positive("optim.grad_clip", self.grad_clip)


@dataclass(frozen=True)
class TrainConfig:
    """One training run, as ``icmix train`` reads it from YAML (module docstring): the ``task`` (the
    spec of a registered family), ``model`` and ``optim`` sections, ``steps`` of ``batch_size``
    examples, the ``loss`` (``mse`` or ``ce``) at ``loss_positions`` (``last`` or ``all``), an
    evaluation every ``eval_every`` steps on one fixed batch of ``eval_size``, and a checkpoint
    every ``checkpoint_every`` steps, the newest ``keep_checkpoints`` kept.  ``device``,
    ``precision`` (autocast on CUDA), ``data_device``, ``tracking`` and ``threads`` say where and
    how it runs; the last two change no number and are left out of its ``identity``."""

    task: object = field(default_factory=MTDSpec)  # the spec of a registered task family
    model: ModelSpec = field(default_factory=ModelSpec)  # kind (a key of icmix.models.MODELS) and its config's fields
    optim: OptimConfig = field(default_factory=OptimConfig)  # Adam and its learning-rate schedule (table below)
    steps: int = 1000  # optimiser steps of the run (>= 1); a cosine or linear schedule reaches 0 at the last
    batch_size: int = 128  # sequences (or prompts) in each step's training batch
    # mse: squared error against the one-hot next token (the Brier score; for regression, against y) or
    # ce: cross-entropy of the logits; a family may allow only one (mixlinreg: mse)
    loss: str = "mse"
    # last: the loss at the final position only (the MTD paper); all: at every position (MTD: every one with a
    # full lag history; the text family always uses every position)
    loss_positions: str = "last"
    seed: int = 0  # seeds initialisation, dropout, training batches and the evaluation batch (task.seed: the task's)
    eval_every: int = 100  # steps between evaluations on the fixed batch (rows of metrics.jsonl); also at the last
    eval_size: int = 512  # examples in the fixed evaluation batch, drawn once from the run's seed (>= 2)
    checkpoint_every: int = 500  # steps between checkpoints (also at the last); a stopped run resumes from the newest
    keep_checkpoints: int = 2  # how many of the newest checkpoints stay on disk; older ones are deleted
    device: str = "auto"  # auto (CUDA where available, else the CPU), cpu, cuda or cuda:N
    precision: str = "fp32"  # fp32, or bf16 / fp16 autocast on CUDA (fp16 with loss scaling); the CPU runs fp32
    tensorboard: bool = False  # the older spelling of tracking: [tensorboard]
    # Where training batches are sampled: "cpu", or "device" (on the training device, with a
    # generator there, so a GPU is not starved by CPU sampling; a different random stream).
    data_device: str = "cpu"
    # Experiment trackers that receive each evaluation row (``icmix.train.tracking``): they
    # change no number, and the run's name does not depend on them (``identity``).
    tracking: tuple[str, ...] = ()
    # Torch threads the run trains with (None: as the process has them; ``icmix --threads``).
    # Not part of its identity: the same run on 1 or 2 threads (their rounding may differ, as
    # on another CPU; the zoo records the threads a run was trained with).
    threads: int | None = None

    # Fields added after runs were named by a hash of the config: written out only when they
    # differ from their default, so the names (and the saved configs) of older runs hold.
    _LATER_FIELDS = {"data_device": "cpu", "tracking": (), "threads": None}
    # Fields that say where a run reports or how it uses the machine, not what it computes:
    # reset by ``identity``.  (The older ``tensorboard`` flag stays in the identity, so runs
    # named with it keep their names.)
    NEUTRAL_FIELDS = {"tracking": (), "threads": None}

    def __post_init__(self):
        check_positive_int("steps", self.steps)
        if self.threads is not None:
            check_positive_int("threads", self.threads)
        check_positive_int("batch_size", self.batch_size)
        check_positive_int("eval_every", self.eval_every)
        check_positive_int("eval_size", self.eval_size, minimum=2)
        check_positive_int("checkpoint_every", self.checkpoint_every)
        check_positive_int("keep_checkpoints", self.keep_checkpoints)
        check_positive_int("seed", self.seed, minimum=0)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.loss_positions not in LOSS_POSITIONS:
            raise ValueError(f"loss_positions must be one of {LOSS_POSITIONS}, got {self.loss_positions!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if self.data_device not in DATA_DEVICES:
            raise ValueError(f"data_device must be one of {DATA_DEVICES}, got {self.data_device!r}")
        check_tracking(self.tracking)
        if not isinstance(self.task, self.family.spec):
            raise ValueError(f"a {self.task.kind!r} task needs a {self.family.spec.__name__} spec, "
                             f"got {type(self.task).__name__}")
        self.family.check(self)
        self.model_config()  # unknown or bad model keys fail here, before any training

    def identity(self) -> TrainConfig:
        """This config without the fields that only say where the run reports (``NEUTRAL_FIELDS``):
        what names a run and what a resumed run must match."""
        return dataclasses.replace(self, **self.NEUTRAL_FIELDS)

    @property
    def family(self) -> TaskFamily:
        """The registered family of this config's task."""
        return get_family(self.task.kind)

    def model_config(self):
        """The model's own frozen config, with vocabulary and length taken from the task."""
        from icmix.models import MODELS

        if self.model.kind not in MODELS:
            raise ValueError(f"model.kind must be one of {sorted(MODELS)}, got {self.model.kind!r}")
        if self.model.kind not in self.family.models:
            raise ValueError(f"model.kind {self.model.kind!r} does not fit a {self.task.kind!r} task; "
                             f"use one of {self.family.models}")
        config_class, _ = MODELS[self.model.kind]
        params = dict(self.model.params)
        fields = self.task.model_fields()
        for key in fields:
            if key in params:
                raise ValueError(f"model.{key} is set by the task; remove it from the model section")
        if self.model.kind == "disentangled" and params.get("positions") == "warmup":
            params.setdefault("warmup", self.task.order)
        try:
            return config_class.from_dict({**fields, **params})
        except TypeError as err:
            raise ValueError(f"bad model section: {err}") from None

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict:
        """The config as plain data in the YAML's layout: ``model`` flattened to ``{kind, **params}``, and
        the fields added later left out where they hold their default, so older runs keep their names."""
        d = dataclasses.asdict(self)
        d["model"] = {"kind": self.model.kind, **self.model.params}
        for name, default in self._LATER_FIELDS.items():
            if d[name] == default:
                del d[name]
        if "tracking" in d:
            d["tracking"] = list(d["tracking"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The config from plain data (parsed YAML): the task spec of the family ``task.kind`` names
        (``mtd`` by default), then the ``optim`` and ``model`` sections; ``ValueError`` naming an
        unknown key or a bad value."""
        if not isinstance(d, dict):
            raise ValueError(f"a training config must be a mapping, got {type(d).__name__}")
        d = dict(d)
        task = d.pop("task", {}) or {}
        for section, value in (("task", task), ("optim", d.get("optim")), ("model", d.get("model"))):
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"{section} must be a mapping (key: value lines under '{section}:'), got {value!r}")
        spec = get_family(task.get("kind", "mtd")).spec
        sections = {"task": _build(spec, task, "task"), "optim": _build(OptimConfig, d.pop("optim", {}) or {}, "optim")}
        model = dict(d.pop("model", {}) or {})
        sections["model"] = ModelSpec(kind=typed("model.kind", model.pop("kind", "disentangled"), str), params=model)
        return _build(cls, d, "", **sections)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
        """The config in the YAML file ``path``, with the dotted ``overrides`` (``optim.lr=3e-4``)
        applied; ``ValueError``, naming the file, for a missing, empty, unreadable or invalid config."""
        path = Path(path)
        if not path.exists():
            raise ValueError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML: {err}") from None
        except (UnicodeDecodeError, IsADirectoryError) as err:
            raise ValueError(f"{path} is not a YAML text file ({err})") from None
        if data is None:
            raise ValueError(f"{path} is empty (or only comments): a config needs at least its task and model "
                             "sections; see configs/ for examples")
        if not isinstance(data, dict):
            raise ValueError(f"{path} must be a mapping of config keys (task:, model:, steps:, ...), "
                             f"not a YAML {type(data).__name__}")
        try:
            return cls.from_dict(apply_dotted_overrides(data, overrides or []))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None

    def to_yaml(self) -> str:
        """``to_dict`` as YAML, the keys in field order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _build(klass, values: dict, prefix: str, **given):
    if not isinstance(values, dict):
        raise ValueError(f"{prefix or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(klass)
    known = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = f"in {prefix}" if prefix else "at the top level"
        raise ValueError(f"unknown config keys {where}: {unknown}; known: {sorted(known)}")
    kwargs = {k: typed(f"{prefix + '.' if prefix else ''}{k}", v, hints[k]) for k, v in values.items()}
    return klass(**kwargs, **given)
