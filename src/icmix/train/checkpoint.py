"""Atomic, self-checking checkpoints.

``checkpoints/step_NNNNNNN/`` holds::

    model.safetensors   the model's weights
    trainer.safetensors the trainer's tensors: optimiser moments, RNG states
    trainer.json        the rest of the trainer state (step, schedule, optimiser settings,
                        running loss), each tensor named by its key in trainer.safetensors
    config.yaml         the config the run was trained with up to this step (its identity)
    checksums.json      SHA-256 and size of the four files above

Nothing in a checkpoint can run code when it is read: tensors are safetensors, the rest
JSON (no pickle).  A checkpoint of an older icmix holds ``trainer.pt`` instead of the two
trainer files; it is read with ``torch.load(weights_only=True)``, which accepts tensors and
plain containers only, so a crafted one is skipped as damaged.

and ``checkpoints/LATEST`` names the newest.  A checkpoint is written under a temporary
name (``icmix.io.temporary_name``, removed if the write fails, or by
``icmix.io.remove_stale_files`` if the writer was killed) and published by rename, so a kill at any
moment leaves the earlier checkpoints intact.

On resume, ``resumable_checkpoint`` takes the newest checkpoint that *validates* (every
file present, its checksum right, its weights the model's shapes, its step its name), warns
about each newer one it skips (naming its path and what is wrong), and never falls back to
step 0 while a valid checkpoint exists; if there are checkpoints but none is valid it says
so, naming them.  ``LATEST`` is a convenience for people and older readers: a missing or
stale ``LATEST`` changes nothing.  Checkpoints written before checksums existed are validated
by loading them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from icmix.io import TEMPORARY_PREFIX, reporting_full_disk, temporary_name, write_bytes_durably

LATEST = "LATEST"
WEIGHTS, CONFIG, CHECKSUMS = "model.safetensors", "config.yaml", "checksums.json"
TRAINER_TENSORS, TRAINER_STATE = "trainer.safetensors", "trainer.json"
LEGACY_TRAINER = "trainer.pt"  # written by icmix before trainer.safetensors + trainer.json
STEP_DIR = re.compile(r"^step_(\d+)$")
# The temporaries an older icmix gave a checkpoint being written (removed on resume)
LEGACY_TEMPORARIES = re.compile(r"^\.(tmp_step_\d+|LATEST\.tmp)$")


class CheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped on resume."""


class Unreadable(ValueError):
    """A checkpoint file could not be read (permissions, I/O): skipped, but not set aside as damaged."""


class ConfigChanged(ValueError):
    """The run's config.yaml is not the config its checkpoint was trained with (not damage:
    resuming is refused, not retried from an older checkpoint)."""


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, trainer_state: dict, keep: int,
                    config_yaml: str | None = None) -> Path:
    """Write ``checkpoints/step_<step>/`` atomically, point ``LATEST`` at it and keep the newest
    ``keep`` checkpoints.  On a full disk the temporary folder is removed and ``OSError`` says
    ``no space left on <checkpoints folder>``; the earlier checkpoints are untouched."""
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    tmp = root / temporary_name(name)
    files = {WEIGHTS: save_safetensors({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()})}
    files[TRAINER_TENSORS], files[TRAINER_STATE] = encode_trainer(trainer_state)
    if config_yaml is not None:
        files[CONFIG] = config_yaml.encode()
    sums = {f: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)} for f, data in files.items()}
    files[CHECKSUMS] = json.dumps(sums, indent=1).encode()
    try:
        with reporting_full_disk(root):
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
            for f, data in files.items():  # durable before the rename publishes them
                write_bytes_durably(tmp / f, data)
            final = root / name
            if final.exists():
                shutil.rmtree(final)
            os.rename(tmp, final)
            pointer = root / temporary_name(LATEST)
            pointer.write_text(name)
            os.replace(pointer, root / LATEST)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for leftover in root.glob(f"{TEMPORARY_PREFIX}{os.getpid()}-*-{LATEST}"):
            leftover.unlink(missing_ok=True)
        raise
    for old in [p for p in step_dirs(root) if p != final][keep - 1:]:  # the newest `keep`, this one first
        shutil.rmtree(old)
    return final


# --- the trainer state without pickle -------------------------------------------------------------
#
# A trainer state is a tree of dicts, lists, tuples, strings, numbers, booleans, None and
# tensors (``TrainState.to_checkpoint``; the optimiser's ``state_dict`` has integer keys).
# JSON holds the tree; each tensor is replaced by ``{"__tensor__": KEY}`` and stored under
# KEY in the safetensors file; a tuple is ``{"__tuple__": [...]}`` and a dict whose keys are
# not all strings (or could be taken for a marker) is ``{"__items__": [[key, value], ...]}``,
# so the tree reads back with the types it was written with (a resumed run is bit-identical).

_MARKERS = ("__tensor__", "__tuple__", "__items__")


def encode_trainer(state: dict) -> tuple[bytes, bytes]:
    """``(trainer.safetensors bytes, trainer.json bytes)`` of a trainer state (see above);
    ``TypeError`` for a value that is none of the types listed."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(value):
        if isinstance(value, torch.Tensor):
            key = f"t{len(tensors)}"
            tensors[key] = value.detach().cpu().contiguous().clone()
            return {"__tensor__": key}
        if isinstance(value, tuple):
            return {"__tuple__": [encode(v) for v in value]}
        if isinstance(value, list):
            return [encode(v) for v in value]
        if isinstance(value, dict):
            if all(isinstance(k, str) and k not in _MARKERS for k in value):
                return {k: encode(v) for k, v in value.items()}
            return {"__items__": [[encode(k), encode(v)] for k, v in value.items()]}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"a trainer state holds tensors, numbers, strings and containers of them, not "
                        f"{type(value).__name__}")

    tree = encode(state)
    return save_safetensors(tensors), json.dumps(tree, indent=1).encode()


def decode_trainer(tensor_bytes: bytes, state_bytes: bytes) -> dict:
    """The trainer state ``encode_trainer`` wrote; ``ValueError`` saying what is wrong if the
    files are not such a pair (a damaged or foreign file: nothing in them is executed)."""
    try:
        tensors = load_safetensors(tensor_bytes)
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for bad bytes
        raise ValueError(f"{TRAINER_TENSORS} cannot be read ({type(err).__name__}: {err})") from None
    try:
        tree = json.loads(state_bytes)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"{TRAINER_STATE} is not JSON ({type(err).__name__}: {err})") from None
    used = set()

    def decode(value):
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1 and next(iter(value)) in _MARKERS:
            (marker, body), = value.items()
            if marker == "__tensor__":
                if not isinstance(body, str) or body not in tensors:
                    raise ValueError(f"{TRAINER_STATE} names a tensor {body!r} that {TRAINER_TENSORS} lacks")
                used.add(body)
                return tensors[body]
            if not isinstance(body, list):
                raise ValueError(f"{TRAINER_STATE}: {marker} must hold a list")
            if marker == "__tuple__":
                return tuple(decode(v) for v in body)
            if not all(isinstance(pair, list) and len(pair) == 2 for pair in body):
                raise ValueError(f"{TRAINER_STATE}: __items__ must hold [key, value] pairs")
            try:
                return {decode(k): decode(v) for k, v in body}
            except TypeError as err:  # an unhashable key
                raise ValueError(f"{TRAINER_STATE}: a key that is not a plain value ({err})") from None
        return {k: decode(v) for k, v in value.items()}

    try:
        state = decode(tree)
    except RecursionError:
        raise ValueError(f"{TRAINER_STATE} is nested too deeply to be a trainer state") from None
    if set(tensors) - used:
        raise ValueError(f"{TRAINER_TENSORS} holds tensors {TRAINER_STATE} does not name: "
                         f"{', '.join(sorted(set(tensors) - used)[:5])}")
    return state


def check_trainer_state(state, model: torch.nn.Module) -> None:
    """``ValueError`` unless ``state`` has the layout ``TrainState.to_checkpoint`` writes, for the
    parameters of ``model`` (its shapes are all that is used: a model on the ``meta`` device
    will do): a well-formed file of another shape is damage, found before anything is loaded."""

    def need(ok: bool, what: str) -> None:
        if not ok:
            raise ValueError(f"the trainer state is not one of this run: {what}")

    def rng(value) -> bool:
        return isinstance(value, torch.Tensor) and value.dtype == torch.uint8 and value.ndim == 1

    need(isinstance(state, dict), "not a mapping")
    optimiser = state.get("optimiser")
    need(isinstance(optimiser, dict) and isinstance(optimiser.get("state"), dict)
         and isinstance(optimiser.get("param_groups"), list), "no optimiser state and parameter groups")
    params = list(model.parameters())
    for group in optimiser["param_groups"]:
        need(isinstance(group, dict) and isinstance(group.get("params"), list)
             and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < len(params) for i in group["params"]),
             "a parameter group that does not name the model's parameters")
    for index, moments in optimiser["state"].items():
        need(isinstance(index, int) and 0 <= index < len(params) and isinstance(moments, dict),
             f"optimiser state for a parameter {index!r} the model does not have")
        for name, value in moments.items():
            need(not isinstance(value, torch.Tensor) or value.ndim == 0 or value.shape == params[index].shape,
                 f"optimiser state {name} of parameter {index} has shape {tuple(getattr(value, 'shape', ()))}, "
                 f"the parameter {tuple(params[index].shape)}")
    need(isinstance(state.get("schedule"), dict) and isinstance(state.get("scaler"), dict), "no schedule or scaler")
    need(rng(state.get("data_rng")) and rng(state.get("torch_rng")), "no random-number generator states")
    need(state.get("cuda_rng") is None or rng(state["cuda_rng"]), "a CUDA generator state that is not one")
    need(all(rng(r) for r in state.get("torch_rng_ranks") or []), "per-process generator states that are not ones")
    need(isinstance(state.get("loss_sum"), (int, float)) and isinstance(state.get("loss_count"), int)
         and all(isinstance(v, (int, float)) for v in state.get("loss_sum_ranks") or []), "no running loss")


def _legacy_trainer(data: bytes) -> dict:
    """The ``trainer.pt`` of an older icmix, read with ``weights_only=True``: tensors and plain
    containers only (a pickle that would build anything else, or run code, is refused)."""
    try:
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - the restricted unpickler's and zip's errors of a bad file
        # torch's own text explains how to load the file anyway: only what it refused is shown
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        why = (f"it would call or build {refused.group(1)}" if refused
               else next((line for line in text.splitlines() if line.strip()), ""))
        raise ValueError(f"{LEGACY_TRAINER} (a checkpoint of an older icmix) holds something other than "
                         f"tensors and plain values, or is damaged; it was not loaded "
                         f"({type(err).__name__}: {why})") from None


def read_trainer(path: Path) -> dict:
    """The trainer state of the checkpoint folder ``path`` (no checksum check: see ``read_checkpoint``)."""
    path = Path(path)
    if (path / TRAINER_STATE).exists() or not (path / LEGACY_TRAINER).exists():
        return decode_trainer((path / TRAINER_TENSORS).read_bytes(), (path / TRAINER_STATE).read_bytes())
    return _legacy_trainer((path / LEGACY_TRAINER).read_bytes())


def step_dirs(root: Path) -> list[Path]:
    """``step_*`` folders under ``root`` (a run's ``checkpoints/``), newest step first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


@dataclass
class Checkpoint:
    """One checkpoint as ``read_checkpoint`` validated it: its ``step_N`` folder ``path``, the
    training ``step``, the model ``weights`` (a state dict), the ``trainer`` state (optimiser,
    schedule, generators, running loss), the config the run was trained with as YAML
    (``config_yaml``) and ``skipped``, the newer damaged checkpoints passed over to reach it."""

    path: Path
    step: int
    weights: dict
    trainer: dict
    config_yaml: str | None  # None for checkpoints written before the config was recorded
    skipped: list = field(default_factory=list)  # newer, damaged checkpoints passed over


def set_aside(skipped: list[Path]) -> list[Path]:
    """Rename damaged checkpoints ``step_N`` to ``damaged_step_N`` (kept for inspection), so that
    neither a later resume nor the pruning of old checkpoints counts them as the newest."""
    moved = []
    for path in skipped:
        target = path.with_name(f"damaged_{path.name}")
        if target.exists():
            shutil.rmtree(target)
        os.rename(path, target)
        moved.append(target)
    return moved


def read_checkpoint(path: Path, model: torch.nn.Module, check_config=None) -> Checkpoint:
    """Read and validate one checkpoint; ``ValueError`` saying what is wrong with it.

    ``check_config(recorded_yaml, path)``, if given, is called once the files are known to be
    intact and before the weights are compared with ``model``, so that an edited config is
    reported as such (it raises ``ConfigChanged``) rather than as a mismatched checkpoint."""
    path = Path(path)
    m = STEP_DIR.match(path.name)
    if m is None:
        raise ValueError("not a step_NNNNNNN folder")
    legacy = not (path / TRAINER_STATE).exists() and (path / LEGACY_TRAINER).exists()
    trainer_files = (LEGACY_TRAINER,) if legacy else (TRAINER_TENSORS, TRAINER_STATE)
    data = {}
    for f in (WEIGHTS, *trainer_files, CONFIG, CHECKSUMS):
        try:
            data[f] = (path / f).read_bytes()
        except FileNotFoundError:
            if f in (WEIGHTS, *trainer_files):
                raise ValueError(f"{f} is missing") from None
        except OSError as err:
            raise Unreadable(f"{f} cannot be read ({err.strerror or err})") from None
    if CHECKSUMS in data:
        try:
            sums = {f: (int(want["bytes"]), str(want["sha256"])) for f, want in json.loads(data[CHECKSUMS]).items()}
        except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
            raise ValueError(f"{CHECKSUMS} is damaged") from None
        for f, (size, digest) in sums.items():
            if f not in data:
                raise ValueError(f"{f} is missing")
            if len(data[f]) != size:
                raise ValueError(f"{f} has {len(data[f]):,} bytes, {size:,} were written (truncated?)")
            if hashlib.sha256(data[f]).hexdigest() != digest:
                raise ValueError(f"{f} does not match its checksum (corrupted)")
    if check_config is not None and CONFIG in data:
        check_config(data[CONFIG].decode(), path / CONFIG)
    try:
        weights = load_safetensors(data[WEIGHTS])
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error type for bad bytes
        raise ValueError(f"{WEIGHTS} cannot be read ({type(err).__name__}: {err})") from None
    expected = model.state_dict()
    if set(weights) != set(expected) or any(weights[k].shape != expected[k].shape for k in weights):
        raise ValueError(f"{WEIGHTS} does not match the model the run's config describes")
    if legacy:
        trainer = _legacy_trainer(data[LEGACY_TRAINER])
    else:
        trainer = decode_trainer(data[TRAINER_TENSORS], data[TRAINER_STATE])
    step = int(m.group(1))
    if not isinstance(trainer, dict) or trainer.get("step") != step:
        raise ValueError(f"{trainer_files[-1]} is not the trainer state of step {step}")
    check_trainer_state(trainer, model)
    config = data.get(CONFIG)
    return Checkpoint(path, step, weights, trainer, config.decode() if config is not None else None)


def resumable_checkpoint(run_dir: Path, model: torch.nn.Module, check_config=None) -> Checkpoint | None:
    """The newest valid checkpoint of a run, or ``None`` if it has none (a fresh start).

    Skips damaged ones with a ``CheckpointWarning`` naming each (``Checkpoint.skipped`` lists
    them; ``set_aside`` moves them out of the way); raises ``ValueError`` naming them all if
    checkpoints exist but none is valid.  ``check_config`` as in ``read_checkpoint`` (its
    ``ConfigChanged`` is raised at once).
    """
    root = Path(run_dir) / "checkpoints"
    problems, skipped = [], []
    for path in step_dirs(root):
        try:
            ckpt = read_checkpoint(path, model, check_config)
        except ConfigChanged:
            raise
        except ValueError as err:
            problems.append(f"{path}: {err}")
            if not isinstance(err, Unreadable):  # an I/O error may pass: only damage is set aside
                skipped.append(path)
            warnings.warn(f"skipping damaged checkpoint {path}: {err}", CheckpointWarning, stacklevel=2)
            continue
        ckpt.skipped = skipped
        return ckpt
    if problems:
        raise ValueError("no valid checkpoint to resume from:\n  " + "\n  ".join(problems)
                         + f"\nRestore them from a backup, or delete {root} to train the run again from step 0.")
    return None


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint ``LATEST`` names, if it exists (no validation; see ``resumable_checkpoint``)."""
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.is_dir() else None


__all__ = ["CheckpointWarning", "ConfigChanged", "Checkpoint", "save_checkpoint", "resumable_checkpoint", "read_checkpoint",
           "read_trainer", "encode_trainer", "decode_trainer", "latest_checkpoint", "step_dirs", "set_aside"]
