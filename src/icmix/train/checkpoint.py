"""Atomic, self-checking checkpoints.

``checkpoints/step_NNNNNNN/`` holds

    model.safetensors   the model's weights
    trainer.pt          optimiser, schedule, RNG states, step, running loss
    config.yaml         the config the run was trained with up to this step (its identity)
    checksums.json      SHA-256 and size of the three files above

and ``checkpoints/LATEST`` names the newest.  A checkpoint is written under a temporary
name (``.tmp_step_*``, removed if the write fails, or by ``icmix.io.remove_stale_files`` if
the writer was killed) and published by rename, so a kill at any
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

from icmix.io import reporting_full_disk, write_bytes_durably

LATEST = "LATEST"
WEIGHTS, TRAINER, CONFIG, CHECKSUMS = "model.safetensors", "trainer.pt", "config.yaml", "checksums.json"
STEP_DIR = re.compile(r"^step_(\d+)$")


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
    tmp = root / f".tmp_{name}"
    files = {WEIGHTS: save_safetensors({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()})}
    buffer = io.BytesIO()
    torch.save(trainer_state, buffer)
    files[TRAINER] = buffer.getvalue()
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
            pointer = root / f".{LATEST}.tmp"
            pointer.write_text(name)
            os.replace(pointer, root / LATEST)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        (root / f".{LATEST}.tmp").unlink(missing_ok=True)
        raise
    for old in [p for p in step_dirs(root) if p != final][keep - 1:]:  # the newest `keep`, this one first
        shutil.rmtree(old)
    return final


def step_dirs(root: Path) -> list[Path]:
    """``step_*`` folders under ``root`` (a run's ``checkpoints/``), newest step first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


@dataclass
class Checkpoint:
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
    data = {}
    for f in (WEIGHTS, TRAINER, CONFIG, CHECKSUMS):
        try:
            data[f] = (path / f).read_bytes()
        except FileNotFoundError:
            if f in (WEIGHTS, TRAINER):
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
    try:
        trainer = torch.load(io.BytesIO(data[TRAINER]), weights_only=False, map_location="cpu")
    except Exception as err:  # noqa: BLE001 - pickle and zip errors of a damaged file
        raise ValueError(f"{TRAINER} cannot be read ({type(err).__name__}: {err})") from None
    step = int(m.group(1))
    if not isinstance(trainer, dict) or trainer.get("step") != step:
        raise ValueError(f"{TRAINER} is not the trainer state of step {step}")
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
           "latest_checkpoint", "step_dirs", "set_aside"]
