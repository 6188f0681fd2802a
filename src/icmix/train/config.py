"""Training configuration: frozen dataclasses, loaded from YAML, validated before any work.

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

Overrides use dotted keys: ``--set optim.lr=3e-4 --set model.n_layers=5``.
"""

from __future__ import annotations

import ast
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from icmix._checks import check_order, check_positive, check_positive_int

LOSSES = ("mse", "ce")
LOSS_POSITIONS = ("last", "all")
SCHEDULES = ("constant", "cosine", "linear")
PRECISIONS = ("fp32", "bf16", "fp16")
DATA_DEVICES = ("cpu", "device")


@dataclass(frozen=True)
class TaskSpec:
    """An MTD task (SPEC §1) and the sequence length trained on."""

    kind: str = "mtd"
    vocab_size: int = 10
    order: int = 3
    alpha: float = 1.0
    seed: int = 0
    length: int = 64

    models = ("disentangled", "gpt")

    def __post_init__(self):
        if self.kind != "mtd":
            raise ValueError(f"task.kind must be 'mtd' here, got {self.kind!r}")
        check_positive_int("task.vocab_size", self.vocab_size, minimum=2)
        check_positive_int("task.length", self.length)
        check_order(self.order, self.length)
        check_positive("task.alpha", self.alpha)

    def model_fields(self) -> dict:
        """The model config fields the task sets."""
        return {"vocab_size": self.vocab_size, "max_length": self.length}


@dataclass(frozen=True)
class RegressionTaskSpec:
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

    kind: str = "mixlinreg"
    dim: int = 20
    n_components: int = 5
    noise: float = 0.0
    seed: int = 0
    n_points: int = 41
    curriculum_every: int = 0
    dims_start: int | None = None
    points_start: int | None = None
    dims_step: int = 1
    points_step: int = 2
    n_train: int | None = None

    models = ("gpt-regression",)

    def __post_init__(self):
        check_positive_int("task.dim", self.dim)
        check_positive_int("task.n_components", self.n_components)
        check_positive_int("task.n_points", self.n_points)
        if not self.noise >= 0:
            raise ValueError(f"task.noise must be >= 0, got {self.noise}")
        check_positive_int("task.curriculum_every", self.curriculum_every, minimum=0)
        check_positive_int("task.dims_step", self.dims_step, minimum=0)
        check_positive_int("task.points_step", self.points_step, minimum=0)
        for name, top in (("dims_start", self.dim), ("points_start", self.n_points)):
            value = getattr(self, name)
            if value is not None and not 1 <= check_positive_int(f"task.{name}", value) <= top:
                raise ValueError(f"task.{name} must be between 1 and {top}, got {value}")
        if self.n_train is not None:
            check_positive_int("task.n_train", self.n_train)
            if self.curriculum_every and self.dims_step and (self.dims_start or self.dim) < self.dim:
                raise ValueError("task.n_train (a fixed training set) allows only the points curriculum: "
                                 "set task.dims_start to task.dim (or task.dims_step to 0)")

    def model_fields(self) -> dict:
        return {"dim": self.dim, "max_points": self.n_points}

    def stage(self, step: int) -> tuple[int, int]:
        """``(active dims, prompt points)`` at training step ``step``."""
        dims, points = self.dims_start or self.dim, self.points_start or self.n_points
        if self.curriculum_every:
            k = step // self.curriculum_every
            dims, points = dims + k * self.dims_step, points + k * self.points_step
        return min(dims, self.dim), min(points, self.n_points)


TASK_SPECS = {"mtd": TaskSpec, "mixlinreg": RegressionTaskSpec}
TASK_KINDS = tuple(TASK_SPECS)


@dataclass(frozen=True)
class ModelSpec:
    kind: str = "disentangled"
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    schedule: str = "constant"
    warmup_steps: int = 0
    grad_clip: float | None = 1.0

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
    task: TaskSpec | RegressionTaskSpec = field(default_factory=TaskSpec)
    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 1000
    batch_size: int = 128
    loss: str = "mse"
    loss_positions: str = "last"
    seed: int = 0
    eval_every: int = 100
    eval_size: int = 512
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    device: str = "auto"
    precision: str = "fp32"
    tensorboard: bool = False
    # Where training batches are sampled: "cpu", or "device" (on the training device, with a
    # generator there, so a GPU is not starved by CPU sampling; a different random stream).
    data_device: str = "cpu"

    # Fields added after runs were named by a hash of the config: written out only when they
    # differ from their default, so the names (and the saved configs) of older runs hold.
    _LATER_FIELDS = {"data_device": "cpu"}

    def __post_init__(self):
        check_positive_int("steps", self.steps)
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
        if self.task.kind == "mixlinreg" and self.loss != "mse":
            raise ValueError(f"a regression task trains with loss 'mse', got {self.loss!r}")
        self.model_config()  # unknown or bad model keys fail here, before any training

    def model_config(self):
        """The model's own frozen config, with vocabulary and length taken from the task."""
        from icmix.models import MODELS

        if self.model.kind not in MODELS:
            raise ValueError(f"model.kind must be one of {sorted(MODELS)}, got {self.model.kind!r}")
        if self.model.kind not in self.task.models:
            raise ValueError(f"model.kind {self.model.kind!r} does not fit a {self.task.kind!r} task; "
                             f"use one of {self.task.models}")
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
        d = dataclasses.asdict(self)
        d["model"] = {"kind": self.model.kind, **self.model.params}
        for name, default in self._LATER_FIELDS.items():
            if d[name] == default:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        if not isinstance(d, dict):
            raise ValueError(f"a training config must be a mapping, got {type(d).__name__}")
        d = dict(d)
        task = d.pop("task", {}) or {}
        for section, value in (("task", task), ("optim", d.get("optim")), ("model", d.get("model"))):
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"{section} must be a mapping (key: value lines under '{section}:'), got {value!r}")
        kind = task.get("kind", "mtd")
        if kind not in TASK_SPECS:
            raise ValueError(f"task.kind must be one of {TASK_KINDS}, got {kind!r}")
        sections = {"task": _build(TASK_SPECS[kind], task, "task"), "optim": _build(OptimConfig, d.pop("optim", {}) or {}, "optim")}
        model = dict(d.pop("model", {}) or {})
        sections["model"] = ModelSpec(kind=_typed("model.kind", model.pop("kind", "disentangled"), str), params=model)
        return _build(cls, d, "", **sections)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
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
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def parse_value(raw: str):
    """A command-line value: a Python literal, a YAML scalar, or the string itself."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        pass
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_dotted_overrides(data: dict, overrides: list[str]) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"cannot set {key}: {part} is not a section")
        node[parts[-1]] = parse_value(raw)
    return data


def _typed(name: str, value, hint):
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and type(None) in args):
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if origin is tuple and isinstance(value, (list, tuple)):
        inner = args[0] if args else float
        return tuple(_typed(name, v, inner) for v in value)
    name_ = getattr(hint, "__name__", str(hint))
    raise ValueError(f"{name} must be {name_}, got {value!r}")


def _build(klass, values: dict, prefix: str, **given):
    if not isinstance(values, dict):
        raise ValueError(f"{prefix or 'config'} must be a mapping, got {values!r}")
    hints = typing.get_type_hints(klass)
    known = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(values) - known)
    if unknown:
        where = f"in {prefix}" if prefix else "at the top level"
        raise ValueError(f"unknown config keys {where}: {unknown}; known: {sorted(known)}")
    kwargs = {k: _typed(f"{prefix + '.' if prefix else ''}{k}", v, hints[k]) for k, v in values.items()}
    return klass(**kwargs, **given)
