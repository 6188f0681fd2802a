"""Training runs shared by the MTD figures with trained models (fig5-fig8).

A figure's ``Config`` carries the training recipe as flat fields (so ``--set steps=...``
works): ``vocab_size, steps, batch_size, lr, warmup_steps, loss_positions, positions,
device, precision`` (and ``gpt_*`` for the standard transformer).  ``train_config`` turns it
into a ``TrainConfig`` for one model, order, length, loss and seed; ``train_runs`` trains
(or reuses) each under ``OUT/runs/<name>``, named by what differs and a hash of the whole
config, so figures written to the same ``OUT`` share runs they have in common.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from icmix.train import TrainConfig, train_many


def disentangled(n_layers: int, order: int, positions: str) -> dict:
    """The disentangled model of the figures: one head a layer; with the warm-up marker,
    value offsets ``0..M`` as in the construction."""
    spec = {"kind": "disentangled", "n_layers": n_layers, "n_heads": 1, "positions": positions}
    if positions == "warmup":
        spec["value_offsets"] = order + 1
    return spec


def gpt(cfg) -> dict:
    return {"kind": "gpt", "n_layers": cfg.gpt_layers, "d_model": cfg.gpt_width, "n_heads": cfg.gpt_heads}


def train_config(cfg, seed: int, model: dict, order: int, length: int, loss: str, steps: int | None = None
                 ) -> TrainConfig:
    steps = steps or cfg.steps
    return TrainConfig.from_dict({
        "task": {"kind": "mtd", "vocab_size": cfg.vocab_size, "order": order, "seed": seed, "length": length},
        "model": model,
        "optim": {"lr": cfg.lr, "schedule": "cosine", "warmup_steps": cfg.warmup_steps, "grad_clip": 1.0},
        "steps": steps, "batch_size": cfg.batch_size, "loss": loss, "loss_positions": cfg.loss_positions,
        "seed": seed, "eval_every": max(1, steps // 20), "checkpoint_every": max(1, steps // 10),
        "device": cfg.device, "precision": cfg.precision,
    })


def run_name(tc: TrainConfig) -> str:
    m = tc.model_config()
    depth = getattr(m, "n_layers", "")
    digest = hashlib.sha1(tc.to_yaml().encode()).hexdigest()[:8]
    return f"{tc.model.kind}{depth}-m{tc.task.order}-T{tc.task.length}-{tc.loss}-seed{tc.seed}-{digest}"


def train_runs(out: Path, configs: list[TrainConfig], jobs: int = 1, progress: bool = True) -> list[Path]:
    """Train (or resume, or reuse) each config under ``OUT/runs``; the run directories, in order."""
    paths = [Path(out) / "runs" / run_name(tc) for tc in configs]
    unique = dict(zip(paths, configs))
    train_many([(tc, p) for p, tc in unique.items()], jobs, progress)
    return paths
