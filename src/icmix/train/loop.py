"""The one training loop shared by every task and model.

``train(cfg, run_dir)`` writes a run directory:

    config.yaml        the full config (the run's identity)
    metrics.jsonl      one line per evaluation: step, train loss, eval loss, eval KL (deterministic)
    progress.jsonl     wall-clock timings (not part of the deterministic record)
    checkpoints/       atomic checkpoints (see ``checkpoint.py``)
    model/             the final model (``save_pretrained``), written last

Same config and seed on CPU give bit-identical checkpoints and metrics, and a run killed
at any point and resumed with ``train(..., resume=True)`` ends exactly where an
uninterrupted run ends: data come from a generator whose state is checkpointed, and the
global RNG (dropout) is forked, seeded from the config and checkpointed too.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from icmix.families.base import Objective
from icmix.io import atomic_write, output_folder, remove_stale_files, reporting_full_disk, temporary_name
from icmix.models import MODELS
from icmix.random import Stream, stream
from icmix.train.checkpoint import (LEGACY_TEMPORARIES, STEP_DIR, Checkpoint, CheckpointWarning, ConfigChanged,
                                    resumable_checkpoint, save_checkpoint, set_aside)
from icmix.train.config import TrainConfig
from icmix.train.distributed import World, current_world
from icmix.train.tracking import Trackers, require, trackers_of



def resolve_device(name: str) -> torch.device:
    """The torch device a config's ``device`` names: ``auto`` is CUDA where available, else the CPU;
    ``ValueError`` for a CUDA device without CUDA."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def build_task(cfg: TrainConfig):
    """The task of ``cfg``, built by its family."""
    return cfg.family.build(cfg.task)


def build_model(cfg: TrainConfig) -> nn.Module:
    """A freshly initialised model of ``cfg.model.kind``, built from ``cfg.model_config()``."""
    _, model_class = MODELS[cfg.model.kind]
    return model_class(cfg.model_config())


def lr_lambda(cfg: TrainConfig):
    """The learning-rate factor of each step, for ``LambdaLR``: linear warm-up to 1 over ``warmup_steps``,
    then 1 (``constant``) or a decay to 0 at ``cfg.steps`` (``cosine`` or ``linear``)."""
    warm, total, kind = cfg.optim.warmup_steps, cfg.steps, cfg.optim.schedule

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if kind == "constant":
            return 1.0
        frac = (step - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * frac)) if kind == "cosine" else 1.0 - frac

    return factor


def _evaluate(objective, model: nn.Module, batch: dict, device: torch.device) -> dict[str, float]:
    model.eval()
    try:
        return objective.evaluate(model, batch, device)
    finally:
        model.train()


def build_objective(task, cfg: TrainConfig) -> Objective:
    """The training objective of ``cfg``'s family for ``task``."""
    return cfg.family.objective(task, cfg)


def evaluation_batch(objective: Objective, cfg: TrainConfig) -> dict:
    """The run's fixed evaluation batch (``cfg.eval_size`` examples drawn from its seed), the one
    training evaluates on every ``eval_every`` steps.  Always drawn on the CPU, so its numbers do
    not depend on where training sampled."""
    return objective.eval_batch(cfg.eval_size, stream(cfg.seed, Stream.TRAINING_EVALUATION))


def autocast(device: torch.device, precision: str):
    """CUDA autocast to bfloat16 (``bf16``) or float16 (``fp16``); a context that does nothing
    on the CPU or at ``fp32``."""
    if device.type != "cuda" or precision == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


@contextmanager
def torch_threads(threads: int | None):
    """Run the block with ``threads`` torch threads (``None``: as they are), then restore them."""
    if not threads:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train(cfg: TrainConfig | None, run_dir: str | Path, resume: bool = False, progress: bool = True,
          compile: bool = False, extend_to: int | None = None, group: str | None = None) -> Path:
    """Train (or resume) a run; returns the run directory.

    Under ``torchrun`` the run is data-parallel (see ``icmix.train.distributed``).  ``compile``
    wraps the model in ``torch.compile`` (falling back, with a warning, where it is unavailable);
    it changes speed, not the run's identity.

    On resume the run continues from its newest *valid* checkpoint (damaged ones are skipped
    with a warning naming them), and its ``config.yaml`` must still be the config it was
    trained with (recorded in every checkpoint): a change to anything that changes the result
    is refused, naming each field with both values.  Only ``RESUMABLE_CHANGES`` may differ.

    ``extend_to`` (with ``resume``; CLI ``--resume RUN --steps N``) is the one documented change
    of a result-changing field: the run, finished or not, continues from its newest valid
    checkpoint to ``extend_to`` steps.  ``config.yaml`` then says ``steps: extend_to`` and
    ``history.jsonl`` records the change and the step it took effect at.  The learning-rate
    schedule is recomputed for the new length from that step on (a ``constant`` schedule is
    unaffected), so an extended run is not the run a config with ``steps: extend_to`` trains
    from scratch, and the history says so.

    ``group`` is the run's group in the trackers of ``cfg.tracking`` (the figure or sweep).  A
    resumed run reports to the trackers of the config given, if one is (they are not part of
    its identity), else to those of its ``config.yaml``.

    Raises ``ValueError`` if ``run_dir`` already holds a different run (or, without
    ``resume``, any run), if its config.yaml was edited, if no checkpoint is valid, if the
    model would not fit in memory, if another process is training the same run, or if the
    number of processes does not divide ``batch_size``.
    """
    run = Path(run_dir)
    saved = run / "config.yaml"
    world = current_world(cfg.device if cfg is not None else "auto")
    if extend_to is not None and not resume:
        raise ValueError("extending a run's steps needs resume=True (CLI: icmix train --resume RUN --steps N)")
    if resume:
        if not saved.exists():
            raise ValueError(f"nothing to resume in {run}: no config.yaml")
        on_disk = TrainConfig.from_yaml(saved)
        if cfg is not None and cfg.identity() != on_disk.identity():
            raise ValueError(f"{run} was started with a different config ("
                             + describe_differences(cfg.identity(), on_disk.identity(), "given", "config.yaml")
                             + "); resume it without a new config")
        cfg = on_disk if cfg is None else dataclasses.replace(on_disk, **{k: getattr(cfg, k) for k in cfg.NEUTRAL_FIELDS})
        if extend_to is None and (run / "model" / "model.safetensors").exists():  # finished: its record must hold
            try:
                _newest_valid_checkpoint(run, cfg)
            except ConfigChanged:
                raise
            except ValueError:
                pass  # no valid checkpoint left: the final model is the record
            return run
    else:
        if cfg is None:
            raise ValueError("a config is needed to start a run")
        if saved.exists():
            raise ValueError(f"{run} already holds a run; pass resume=True (CLI: --resume) or choose another directory")
        if any((run / "checkpoints").glob("step_*")):
            raise ValueError(f"{run} holds checkpoints of an earlier run but no config.yaml: restore its config.yaml "
                             "and resume it, or choose another directory")
    # Everything that can refuse the run is checked before anything is written, and a refusal
    # on any process is every process's (none is left waiting for the others).
    if cfg.batch_size % world.size:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the {world.size} processes")
    refusal = None
    try:
        device = resolve_device(cfg.device)
        if world.distributed and device.type == "cuda":
            device = torch.device("cuda", world.local_rank)
        check_training_memory(cfg, device, world.size)
        if world.is_main:  # only rank 0 reports to the trackers
            require(trackers_of(cfg))
    except ValueError as err:
        refusal = str(err)
    refusals = [r for r in world.gather(refusal) if r]
    if refusals:
        raise ValueError(refusal or refusals[0])
    world.barrier()  # every rank has looked before rank 0 writes
    with torch_threads(cfg.threads), (output_folder(run, "run directory") if world.is_main else nullcontext()) as locked:
        if locked is not None:  # (output_folder cleaned the run folder itself)
            remove_stale_files(run / "checkpoints", legacy=LEGACY_TEMPORARIES)
        if world.is_main and not resume:
            atomic_write(saved, lambda p: Path(p).write_text(cfg.to_yaml()))
        if extend_to is not None:
            if world.distributed:
                raise ValueError("extend a run's steps in a single process, then resume it under torchrun")
            cfg = _extend_steps(run, cfg, extend_to)
        world.barrier()
        if (run / "model" / "model.safetensors").exists():
            return run  # finished

        if world.distributed and device.type == "cuda":
            torch.cuda.set_device(device)
        fork_devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            torch.manual_seed(cfg.seed)  # initialisation and dropout; the caller's RNG is untouched
            return _train(cfg, run, resume, progress, device, world, compile, group)


# Fields of a run's config that may change on resume without changing what it learns (a
# change is written into ``history.jsonl``).  ``device`` moves a run between CPU and GPU: it
# continues exactly, but its later steps are rounded as that device rounds.
RESUMABLE_CHANGES = ("device", "tensorboard", "tracking", "keep_checkpoints", "checkpoint_every")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _fields(cfg: TrainConfig) -> dict:
    """Every field of a config under its dotted key (``optim.lr``, ``model.n_layers``)."""
    d = dataclasses.asdict(cfg)
    d["model"] = {"kind": cfg.model.kind, **cfg.model.params}
    return _flat(d)


def config_differences(a: TrainConfig, b: TrainConfig) -> dict[str, tuple]:
    """``{dotted key: (value in a, value in b)}`` for every field where the configs differ."""
    fa, fb = _fields(a), _fields(b)
    return {k: (fa.get(k), fb.get(k)) for k in sorted(set(fa) | set(fb)) if fa.get(k) != fb.get(k)}


def describe_differences(a: TrainConfig, b: TrainConfig, name_a: str, name_b: str) -> str:
    """The differences of configs ``a`` and ``b`` in one line: ``key: A in name_a, B in name_b`` for
    each, joined by semicolons."""
    return "; ".join(f"{k}: {va!r} in {name_a}, {vb!r} in {name_b}" for k, (va, vb) in config_differences(a, b).items())


HISTORY = "history.jsonl"


def history(run: Path) -> list[dict]:
    """The recorded changes of a run's config (``--steps N`` extensions, ``RESUMABLE_CHANGES``
    made on resume), oldest first: ``{"at_step", "field", "from", "to", "time", "note"}``."""
    path = Path(run) / HISTORY
    if not path.exists():
        return []
    try:
        entries = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for e in entries:
            if not (isinstance(e["at_step"], int) and isinstance(e["field"], str) and "from" in e and "to" in e):
                raise ValueError(f"not an entry of at_step (int), field (str), from and to: {e}")
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigChanged(f"{path} is damaged ({type(err).__name__}: {err}); restore it, or remove the "
                            "damaged lines if you know what they recorded") from None
    return entries


def _append_history(run: Path, entries: list[dict]) -> None:
    if not entries:
        return
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    text = (run / HISTORY).read_text() if (run / HISTORY).exists() else ""
    text += "".join(json.dumps({**e, "time": now}) + "\n" for e in entries)
    atomic_write(run / HISTORY, lambda p: Path(p).write_text(text))


def check_identity(cfg: TrainConfig, recorded_yaml: str, run: Path, where: Path) -> TrainConfig:
    """The config recorded in checkpoint ``where``; ``ConfigChanged`` if the run's ``config.yaml``
    (``cfg``) differs from it in anything but ``RESUMABLE_CHANGES`` and the changes
    ``history.jsonl`` records from that checkpoint's step on."""
    import yaml

    try:
        recorded = TrainConfig.from_dict(yaml.safe_load(recorded_yaml))
    except (yaml.YAMLError, ValueError) as err:
        raise ConfigChanged(f"the config recorded in {where} cannot be read by this version of icmix ({err})") from None
    match = STEP_DIR.match(Path(where).parent.name)
    step = int(match.group(1)) if match else 0
    # Every config the recorded changes from `step` on can lead to (a change recorded but never
    # made, by a write interrupted in between, only adds a candidate).
    allowed = [recorded]
    names = {f.name for f in dataclasses.fields(TrainConfig)} - set(RESUMABLE_CHANGES)
    for change in history(run):
        if change["field"] not in names or change["at_step"] < step:
            continue
        for current in list(allowed):
            if getattr(current, change["field"]) == change["from"]:
                try:
                    allowed.append(dataclasses.replace(current, **{change["field"]: change["to"]}))
                except (ValueError, TypeError) as err:
                    raise ConfigChanged(f"{run / HISTORY} records an impossible change ({change}): {err}") from None
    for candidate in allowed:
        if all(k in RESUMABLE_CHANGES for k in config_differences(candidate, cfg)):
            return recorded
    changed = {k: v for k, v in config_differences(recorded, cfg).items() if k not in RESUMABLE_CHANGES}
    listing = "; ".join(f"{k}: {old!r} when trained, {new!r} in config.yaml" for k, (old, new) in changed.items())
    raise ConfigChanged(
        f"{run / 'config.yaml'} no longer describes this run: it was edited after training started ({listing}). "
        f"The config the run was trained with is recorded in {where}: copy it back to resume, "
        "or start a new run with the new config (icmix train NEW.yaml --out NEW_DIR). "
        f"Only {', '.join(RESUMABLE_CHANGES)} may change on resume, and steps with --steps N.")


def _record_changes(run: Path, recorded: TrainConfig, cfg: TrainConfig, step: int) -> None:
    """Write into ``history.jsonl`` each field in which the run continues from checkpoint ``step``
    with another value than the one recorded there, unless it says so already."""
    known = {(e["field"], json.dumps(e["to"]), e["at_step"]) for e in history(run)}
    entries = []
    for key, (old, new) in config_differences(recorded, cfg).items():
        if (key, json.dumps(new), step) not in known:
            note = ("changed on resume" if key in RESUMABLE_CHANGES
                    else "resumed from a checkpoint older than this change: it applies from this step on")
            entries.append({"at_step": step, "field": key, "from": old, "to": new, "note": note})
    _append_history(run, entries)


def _newest_valid_checkpoint(run: Path, cfg: TrainConfig) -> Checkpoint | None:
    """``resumable_checkpoint`` with the identity check, against a model built on the ``meta``
    device (its shapes are all it needs: nothing is allocated, no random number drawn)."""
    with torch.device("meta"):
        shapes = build_model(cfg)
    return resumable_checkpoint(run, shapes, lambda recorded, where: check_identity(cfg, recorded, run, where))


def _extend_steps(run: Path, cfg: TrainConfig, steps: int) -> TrainConfig:
    """Change a run's ``steps`` (see ``train``): checked against its newest valid checkpoint,
    recorded in ``history.jsonl`` and ``config.yaml``.  A finished run's final model (the
    checkpoint of its last step) is removed first, so that an interruption at any point leaves
    a run that resumes, under the old steps or the new."""
    import shutil

    from icmix._checks import check_positive_int

    steps = check_positive_int("steps", steps)
    ckpt = _newest_valid_checkpoint(run, cfg)
    if ckpt is None:
        raise ValueError(f"{run} has no checkpoint to extend from; start it again with the new steps instead")
    if steps <= ckpt.step:
        raise ValueError(f"--steps {steps} must exceed the step of the newest checkpoint ({ckpt.step}, {ckpt.path})")
    if (run / "model").exists():
        aside = run / temporary_name("model.extended")
        os.rename(run / "model", aside)
        shutil.rmtree(aside)
    if steps == cfg.steps:
        return cfg
    new = dataclasses.replace(cfg, steps=steps)
    _append_history(run, [{"at_step": ckpt.step, "field": "steps", "from": cfg.steps, "to": steps,
                           "note": "steps changed with --steps: the learning-rate schedule is recomputed for the "
                                   "new length from here"}])
    atomic_write(run / "config.yaml", lambda p: Path(p).write_text(new.to_yaml()))
    return new


def check_training_memory(cfg: TrainConfig, device: torch.device | None = None, processes: int = 1,
                          activations: bool = True) -> None:
    """Refuse, before anything is written or allocated, a run whose training step does not fit in
    the memory of ``device`` (the host's for the CPU, the GPU's free memory for CUDA): the
    weights, gradients and Adam moments (four fp32 copies of the parameters) plus the
    activations a step keeps for its backward pass, ``activation_bytes(cfg)`` per sequence
    times the batch of one of ``processes`` (``activations=False``: the parameters only).
    ``ValueError`` with the estimate."""
    from icmix._checks import check_memory, format_bytes
    from icmix.models.base import model_bytes

    _, model_class = MODELS[cfg.model.kind]
    config = cfg.model_config()
    available = None
    if device is not None and device.type == "cuda":
        available = torch.cuda.mem_get_info(device)[0]
    weights = 4 * model_bytes(lambda: model_class(config))
    what = f"training a {cfg.model.kind} model of this config"
    check_memory(what, weights, "reduce the vocabulary, length or width", available)  # before building anything else
    per_sequence = activation_bytes(cfg) if activations else None
    if per_sequence is None:
        return
    batch = -(-cfg.batch_size // processes)
    check_memory(f"{what} (batch_size {cfg.batch_size:,}{f' over {processes} processes' if processes > 1 else ''}: "
                 f"{format_bytes(weights)} of weights, gradients and Adam moments, {format_bytes(per_sequence)} of "
                 f"activations per sequence)", weights + batch * per_sequence,
                 "reduce batch_size, the sequence length or the width", available)


def activation_bytes(cfg: TrainConfig) -> int | None:
    """An estimate of the bytes of the tensors a training step keeps for its backward pass, per
    sequence of the batch, in fp32 (less under bf16/fp16): the loss of batches of 1 and 2
    sequences of the last curriculum stage (the largest) is run on the ``meta`` device, where
    nothing is allocated or computed, and the storages autograd saves are counted, each once.
    ``None`` where the model or objective cannot run on the meta device (a plugin's
    data-dependent op) or this torch cannot say."""
    import torch.fx.experimental._config as fx_config

    task = build_task(cfg)
    objective = build_objective(task, cfg)
    generator = torch.Generator().manual_seed(cfg.seed)  # a private generator: no training stream is drawn from
    with torch.device("meta"):
        model = build_model(cfg)
    saved: list[dict] = []

    def count(tensor):
        try:  # one storage saved by several ops (a layer's input and its norm's) is kept once
            key = tensor.untyped_storage()._cdata
        except (AttributeError, RuntimeError):
            key = id(tensor)
        saved[-1][key] = max(saved[-1].get(key, 0), tensor.untyped_storage().nbytes())
        return tensor

    # A mask by value (``nonzero``) is taken as all-true on the meta device: an upper bound.
    nonzero = (fx_config.patch(meta_nonzero_assume_all_nonzero=True)
               if hasattr(fx_config, "meta_nonzero_assume_all_nonzero") else nullcontext())
    try:
        with torch.random.fork_rng(devices=[]), nonzero, torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            for size in (1, 2):
                batch = objective.batch(max(cfg.steps - 1, 0), size, generator)
                saved.append({})
                objective.loss(model, batch, torch.device("meta"))
    except Exception:  # noqa: BLE001 - what the meta device cannot run leaves the estimate to the parameters
        return None
    return max(sum(saved[1].values()) - sum(saved[0].values()), 0)  # weights saved for backward cancel


@dataclass
class TrainState:
    """Everything a run needs to continue exactly: the model (``raw``, the module itself), its
    optimiser, schedule and gradient scaler, the data generator, the step, and the running sum
    of the training loss since the last evaluation (float64, on the device: no host sync per
    step).  ``to_checkpoint``/``load_checkpoint`` convert it to and from the checkpoint's trainer files; the
    global RNG (dropout) is saved with it, per rank under DDP."""

    raw: nn.Module
    optimiser: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    data_gen: torch.Generator
    loss_sum: torch.Tensor
    step: int = 0
    loss_count: int = 0

    @classmethod
    def create(cls, cfg: TrainConfig, raw: nn.Module, params, device: torch.device) -> TrainState:
        """A fresh state for ``cfg`` (``params``: those of the possibly wrapped model)."""
        optimiser = torch.optim.Adam(params, lr=cfg.optim.lr, betas=cfg.optim.betas, weight_decay=cfg.optim.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_lambda(cfg))
        scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.precision == "fp16")
        # Training batches are drawn where this generator lives (``data_device``).
        data_gen = torch.Generator(device=device if cfg.data_device == "device" else "cpu").manual_seed(cfg.seed)
        return cls(raw, optimiser, schedule, scaler, data_gen, torch.zeros((), dtype=torch.float64, device=device))

    def to_checkpoint(self, world: World, device: torch.device) -> dict:
        """The trainer state a checkpoint keeps (``checkpoint.encode_trainer``; a collective under
        DDP: every rank calls it)."""
        state = {"step": self.step, "optimiser": self.optimiser.state_dict(), "schedule": self.schedule.state_dict(),
                 "scaler": self.scaler.state_dict(), "data_rng": self.data_gen.get_state(),
                 "torch_rng": torch.get_rng_state(), "loss_sum": self.loss_sum.item(), "loss_count": self.loss_count,
                 "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None}
        if world.distributed:  # each rank's dropout stream and partial loss sum
            state["torch_rng_ranks"] = world.gather(state["torch_rng"])
            state["loss_sum_ranks"] = world.gather(state["loss_sum"])
        return state

    def load_checkpoint(self, ckpt: Checkpoint, cfg: TrainConfig, world: World, device: torch.device) -> None:
        """Continue from ``ckpt``: weights, optimiser, schedule, scaler, generators, step, loss sum."""
        self.raw.load_state_dict(ckpt.weights)
        state = ckpt.trainer
        self.optimiser.load_state_dict(state["optimiser"])
        self.schedule.load_state_dict(state["schedule"])
        # The learning rate of the next step from the schedule of *this* config: the same number
        # the checkpoint holds, unless --steps changed the schedule's length.
        factor = lr_lambda(cfg)(self.schedule.last_epoch)
        for group, base in zip(self.optimiser.param_groups, self.schedule.base_lrs):
            group["lr"] = base * factor
        self.scaler.load_state_dict(state["scaler"])
        self.data_gen.set_state(state["data_rng"])
        ranks = state.get("torch_rng_ranks")
        torch.set_rng_state(ranks[world.rank] if ranks and len(ranks) == world.size else state["torch_rng"])
        if state.get("cuda_rng") is not None and device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        self.step, self.loss_count = state["step"], state["loss_count"]
        sums = state.get("loss_sum_ranks")
        own = sums[world.rank] if sums and len(sums) == world.size else state["loss_sum"]
        self.loss_sum = torch.tensor(own, dtype=torch.float64, device=device)

    def take_mean_loss(self, world: World) -> float:
        """The global batch's mean training loss since the last call; resets the sum."""
        mean = world.mean(self.loss_sum).item() / self.loss_count
        self.loss_sum, self.loss_count = torch.zeros_like(self.loss_sum), 0
        return mean


def restore(state: TrainState, cfg: TrainConfig, run: Path, world: World, device: torch.device) -> None:
    """Continue ``state`` from the run's newest valid checkpoint, if any: damaged ones are skipped
    (and, by rank 0, set aside with a warning), and the checkpoint's config must be the run's."""
    ckpt = resumable_checkpoint(run, state.raw, lambda text, where: check_identity(cfg, text, run, where))
    chosen = world.gather(ckpt.step if ckpt is not None else None)
    if len(set(chosen)) > 1:
        raise ValueError(f"the processes see different checkpoints of {run} (steps {chosen}): is the run "
                         "directory on a file system every rank sees the same way?")
    world.barrier()  # every rank has read its checkpoint before rank 0 moves damaged ones aside
    if world.is_main and ckpt is not None:
        for path in set_aside(ckpt.skipped):
            warnings.warn(f"damaged checkpoint kept as {path}", CheckpointWarning, stacklevel=3)
        if ckpt.config_yaml is not None:
            trained = check_identity(cfg, ckpt.config_yaml, run, ckpt.path / "config.yaml")
            _record_changes(run, trained, cfg, ckpt.step)
    if ckpt is not None:
        state.load_checkpoint(ckpt, cfg, world, device)


def train_step(state: TrainState, model: nn.Module, objective: Objective, cfg: TrainConfig, world: World,
               device: torch.device) -> None:
    """One optimiser step on this rank's shard of the next batch (``model``: ``state.raw``,
    possibly wrapped in DDP or ``torch.compile``)."""
    batch = world.shard(objective.batch(state.step, cfg.batch_size, state.data_gen), cfg.batch_size)
    with autocast(device, cfg.precision):
        loss = objective.loss(model, batch, device)
    state.optimiser.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    if cfg.optim.grad_clip is not None:
        state.scaler.unscale_(state.optimiser)
        nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
    state.scaler.step(state.optimiser)
    state.scaler.update()
    state.schedule.step()
    # float64, so the sum is the one Python floats would give
    state.loss_sum, state.loss_count = state.loss_sum + loss.detach().double(), state.loss_count + 1
    state.step += 1


def evaluate(state: TrainState, objective: Objective, eval_batch: dict, world: World, device: torch.device) -> dict:
    """The metrics row at ``state.step`` (a collective: every rank calls it; only rank 0
    evaluates): step, mean training loss since the last row, learning rate, the objective's metrics."""
    mean_loss = state.take_mean_loss(world)
    if not world.is_main:
        return {}
    return {"step": state.step, "train_loss": mean_loss, "lr": state.schedule.get_last_lr()[0],
            **_evaluate(objective, state.raw, eval_batch, device)}


def write_checkpoint(state: TrainState, cfg: TrainConfig, run: Path, world: World, device: torch.device) -> None:
    """Save ``state`` as ``checkpoints/step_<step>`` (a collective; rank 0 writes)."""
    trainer = state.to_checkpoint(world, device)
    if world.is_main:
        save_checkpoint(run, state.step, state.raw, trainer, cfg.keep_checkpoints, config_yaml=cfg.to_yaml())


def _train(cfg: TrainConfig, run: Path, resume: bool, progress: bool, device: torch.device, world: World,
           compile: bool, group: str | None = None) -> Path:
    task = build_task(cfg)
    objective = build_objective(task, cfg)
    raw = model = build_model(cfg).to(device)  # ``raw``: the module itself (saved, evaluated)
    if world.rank:  # the same initial weights everywhere; each rank its own dropout stream
        torch.manual_seed(cfg.seed + Stream.RANK_DROPOUT * world.rank)
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    if compile:
        model = _compiled(model)
    state = TrainState.create(cfg, raw, model.parameters(), device)
    eval_batch = evaluation_batch(objective, cfg)
    if resume:
        restore(state, cfg, run, world, device)
    if world.is_main:
        _truncate_metrics(run / "metrics.jsonl", state.step)
    trackers = Trackers(run, cfg, group) if world.is_main else None
    try:
        _loop(state, model, objective, eval_batch, cfg, run, progress, device, world, trackers)
    except BaseException:
        if trackers is not None:
            trackers.close(failed=True)
        raise
    if trackers is not None:
        trackers.close()
    if world.is_main:
        raw.save_pretrained(run / "model")
    world.barrier()  # nobody returns before the run is complete on disk
    return run


def _loop(state: TrainState, model: nn.Module, objective: Objective, eval_batch: dict, cfg: TrainConfig, run: Path,
          progress: bool, device: torch.device, world: World, trackers: Trackers | None) -> None:
    """Train from ``state.step`` to ``cfg.steps``, evaluating and checkpointing on schedule."""
    bar = range(state.step, cfg.steps)
    progress = progress and world.is_main
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(bar, initial=state.step, total=cfg.steps, desc=f"train {cfg.model.kind}", unit="step")
    t0 = time.perf_counter()
    for _ in bar:
        train_step(state, model, objective, cfg, world, device)
        if state.step % cfg.eval_every == 0 or state.step == cfg.steps:
            row = evaluate(state, objective, eval_batch, world, device)
            if world.is_main:
                _log(run, row, state.step, time.perf_counter() - t0, trackers)
                if progress:
                    bar.set_postfix({k.removeprefix("eval_"): f"{v:.4f}" for k, v in row.items()
                                     if k in ("train_loss", "eval_kl", "eval_nmse_last")})
        if state.step % cfg.checkpoint_every == 0 or state.step == cfg.steps:
            write_checkpoint(state, cfg, run, world, device)


def _log(run: Path, row: dict, step: int, seconds: float, trackers: Trackers | None) -> None:
    """Append an evaluation row to ``metrics.jsonl`` and the timing to ``progress.jsonl``, then
    hand the row to the trackers.  (A line cut short by a full disk is dropped on resume:
    ``_truncate_metrics``.)"""
    with reporting_full_disk(run):
        with open(run / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        with open(run / "progress.jsonl", "a") as fh:
            fh.write(json.dumps({"step": step, "seconds": round(seconds, 3)}) + "\n")
    if trackers is not None:
        trackers.log(row)


class _CompiledOrEager(nn.Module):
    """``torch.compile(model)``, falling back to ``model`` itself (with a warning) if compiling
    fails, which with ``torch.compile``'s lazy compilation happens at the first call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.eager, self.compiled = model, None
        try:
            self.compiled = torch.compile(model)
        except Exception as err:  # noqa: BLE001 - any backend failure falls back to eager
            self._fall_back(err)

    def _fall_back(self, err: Exception) -> None:
        import warnings

        warnings.warn(f"torch.compile unavailable ({type(err).__name__}: {err}); training uncompiled", stacklevel=3)
        self.compiled = None

    def forward(self, *args, **kwargs):
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001
                self._fall_back(err)
        return self.eager(*args, **kwargs)


def _compiled(model: nn.Module) -> nn.Module:
    return _CompiledOrEager(model)


def fine_tune(model: nn.Module, task, cfg: TrainConfig, steps: int, lr: float, seed: int) -> nn.Module:
    """Continue training ``model`` in place for ``steps`` Adam steps, the learning rate annealed
    from ``lr`` to 0 (cosine), on fresh batches of ``cfg``'s task, size and loss (the final
    curriculum stage).  For interventions (change a trained model, then let the rest of it
    adapt).  No run directory."""
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(seed)
    objective = build_objective(task, cfg)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, betas=cfg.optim.betas)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, steps)
    model.train()
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for _ in range(steps):
            loss = objective.loss(model, objective.batch(cfg.steps, cfg.batch_size, gen), device)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            optimiser.step()
            schedule.step()
    return model.eval()


def train_many(jobs: list[tuple[TrainConfig, Path]], n_parallel: int = 1, progress: bool = True,
               errors: str = "raise", launcher=None, groups: dict | None = None,
               tracking: tuple[str, ...] = ()) -> dict[Path, str]:
    """Train each ``(config, run_dir)``, ``n_parallel`` at a time in separate processes.

    An existing run is resumed (or reused if finished) only if it has exactly its config;
    otherwise ``train`` refuses, rather than mixing runs of different settings.  With
    ``errors="collect"`` a failing run does not stop the others: the result maps each failed
    run directory to its error (``{}`` when all succeed).

    ``launcher`` (``icmix.train.launch.Launcher``) sends the runs elsewhere: submitit's local
    executor or a SLURM job array; ``None`` or one that ``runs_here`` is this process pool.  ``tracking``
    adds trackers to every run (not part of a run's identity); ``groups`` maps a run directory
    to its trackers' group (the figure or sweep).
    """
    if errors not in ("raise", "collect"):
        raise ValueError(f"errors must be 'raise' or 'collect', got {errors!r}")
    here = launcher is None or launcher.runs_here
    for cfg, path in jobs:  # a run that cannot start is refused before any run starts
        if not (Path(path) / "model" / "model.safetensors").exists():
            # A job sent elsewhere checks its device and activations where it runs, and so does a
            # GPU run (its GPU's memory is asked for in the worker, not here: no CUDA context in this process).
            device = resolve_device(cfg.device) if here else None
            on_cpu = device is not None and device.type == "cpu"
            check_training_memory(cfg, device if on_cpu else None, activations=on_cpu)
    if tracking:
        jobs = [(dataclasses.replace(cfg, tracking=tuple(tracking)), path) for cfg, path in jobs]
    groups = {Path(p): g for p, g in (groups or {}).items()}
    if launcher is not None and not launcher.runs_here:
        return launcher.train([(cfg, Path(p), groups.get(Path(p))) for cfg, p in jobs], progress, errors)
    failed: dict[Path, str] = {}

    def settle(path: Path, call) -> None:
        try:
            call()
        except Exception as err:  # noqa: BLE001 - collected for the caller, who reports it
            if errors == "raise":
                raise
            failed[Path(path)] = f"{type(err).__name__}: {err}"

    if n_parallel == 1:
        for cfg, path in jobs:
            settle(path, lambda: train(cfg, path, resume=(path / "config.yaml").exists(), progress=progress,
                                       group=groups.get(Path(path))))
        return failed
    from concurrent.futures import as_completed

    from tqdm.auto import tqdm

    from icmix._pool import worker_pool

    if not jobs:
        return failed
    with worker_pool(min(n_parallel, len(jobs))) as pool:
        futures = {pool.submit(train, cfg, path, (path / "config.yaml").exists(), False, group=groups.get(Path(path))): path
                   for cfg, path in jobs}
        for future in tqdm(as_completed(futures), total=len(futures), desc=f"training runs ({n_parallel} at a time)",
                           disable=not progress):
            settle(futures[future], future.result)
    return failed


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines written after the checkpoint (they will be written again)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines() if (s := _step_of(ln)) is not None and s <= step]
    atomic_write(path, lambda p: Path(p).write_text("".join(ln + "\n" for ln in lines)))


def _step_of(line: str) -> int | None:
    """The step of a ``metrics.jsonl`` line; ``None`` for a blank or partial line (one a full
    disk or a kill cut short)."""
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


def load_run(run_dir: str | Path) -> tuple[TrainConfig, nn.Module]:
    """The config and final model of a finished run."""
    run = Path(run_dir)
    if not (run / "config.yaml").exists():
        raise ValueError(f"{run} is not a training run (no config.yaml)")
    cfg = TrainConfig.from_yaml(run / "config.yaml")
    if not (run / "model" / "model.safetensors").exists():
        raise ValueError(f"run {run} has not finished (no final model); resume it first")
    _, model_class = MODELS[cfg.model.kind]
    model = model_class.from_pretrained(run / "model")
    if model.config != cfg.model_config():
        raise ValueError(f"the model saved in {run} does not match the run's config")
    return cfg, model


# Re-evaluating a final model against its own record: float32 kernels of another CPU or thread
# count move an evaluation metric by ~1e-6 relative; weights that predict differently move it
# by orders of magnitude more.
REEVALUATION_RTOL, REEVALUATION_ATOL = 1e-3, 1e-7


def reevaluate(run_dir: str | Path) -> tuple[dict[str, float], dict[str, float]]:
    """``(recorded, measured)``: the evaluation metrics of a finished run's last row of
    ``metrics.jsonl``, and every metric its objective evaluates, of its final model evaluated
    now on the run's own evaluation batch (drawn again from its seed, on the CPU, as training
    drew it).  Seconds, not a retraining: how a model from elsewhere is checked before it is
    used.  The caller's random state is left as it was.  ``ValueError`` if the run has not
    finished or has no evaluation row at its last step."""
    run = Path(run_dir)
    with torch.random.fork_rng(devices=[]):  # building the model before its weights are loaded draws from it
        cfg, model = load_run(run)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()] \
            if (run / "metrics.jsonl").exists() else []
        if not rows or not isinstance(rows[-1], dict) or rows[-1].get("step") != cfg.steps:
            raise ValueError(f"{run}/metrics.jsonl has no evaluation at the run's last step ({cfg.steps})")
        recorded = {k: float(v) for k, v in rows[-1].items() if k not in ("step", "train_loss", "lr")}
        objective = build_objective(build_task(cfg), cfg)
        measured = _evaluate(objective, model, evaluation_batch(objective, cfg), torch.device("cpu"))
    return recorded, {k: float(v) for k, v in measured.items()}


def reevaluation_mismatches(recorded: dict[str, float], measured: dict[str, float]) -> list[str]:
    """Every metric the model was evaluated on now whose recorded value is missing or not the
    measured one (``REEVALUATION_RTOL`` relative, ``REEVALUATION_ATOL`` absolute), each as
    ``name recorded R, measured M``: a record without the metrics cannot vouch for a model."""
    out = []
    for key, got in measured.items():
        want = recorded.get(key)
        if want is None:
            out.append(f"{key} not recorded, measured {got:.6g}")
        elif not abs(got - want) <= REEVALUATION_RTOL * max(abs(want), abs(got)) + REEVALUATION_ATOL:
            out.append(f"{key} recorded {want:.6g}, measured {got:.6g}")
    return out or ([] if measured else ["nothing was measured"])
