"""Atomic checkpoints: ``checkpoints/step_NNNNNNN/`` holds the model (safetensors), the
trainer state (optimiser, schedule, RNG states, step) and the config; ``checkpoints/LATEST``
names the newest.  A checkpoint directory is written under a temporary name and renamed,
and LATEST is replaced by rename, so a kill at any moment leaves the previous checkpoint
intact and LATEST always names a complete one."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

LATEST = "LATEST"


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, trainer_state: dict, keep: int) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:07d}"
    tmp = root / f".tmp_{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    torch.save(trainer_state, tmp / "trainer.pt")
    for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(name)
    os.replace(pointer, root / LATEST)
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / "checkpoints" / LATEST
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.is_dir() else None


def load_checkpoint(path: Path, model: torch.nn.Module) -> dict:
    state = load_file(path / "model.safetensors")
    expected = model.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        raise ValueError(f"checkpoint {path} does not match the model its config describes")
    model.load_state_dict(state)
    # On the CPU whatever device wrote it: the optimiser's load_state_dict moves its state to
    # the parameters' device, so a run started on a GPU resumes on a CPU and vice versa.
    return torch.load(path / "trainer.pt", weights_only=False, map_location="cpu")
