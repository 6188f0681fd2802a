"""Plumbing shared by every experiment: run names, training runs, output files."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
import time
from pathlib import Path

import pandas as pd

from icmix.io import staged


def family_task(kind: str, **spec):
    """The task of the registered family ``kind`` whose spec has the fields ``spec`` (the rest at
    their defaults): figures take their tasks from the family, as training does."""
    from icmix.families import get_family

    family = get_family(kind)
    return family.build(family.spec(**spec))


def environment() -> dict:
    """What a figure ran on, for ``NAME.json``: the Python, torch and numpy versions, the platform string and
    torch's thread count."""
    import numpy
    import torch

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
    }


def save_outputs(out: Path, name: str, cfg, table: pd.DataFrame, fig, wall_s: float,
                 extra: dict[str, pd.DataFrame] | None = None, summary: str | None = None) -> dict[str, Path]:
    """Write ``NAME.csv``, ``NAME.png`` and ``NAME.json`` (config, environment, wall time),
    ``NAME-<key>.csv`` for each extra table, and ``NAME.md`` with the summary (also printed).
    The files appear together or not at all (``icmix.io.staged``): a full disk or an error
    while writing leaves the folder as it was.  The figure is closed once saved."""
    import matplotlib.pyplot as plt

    out = Path(out)
    files = {"csv": f"{name}.csv", "png": f"{name}.png", "json": f"{name}.json"}
    files.update({key: f"{name}-{key}.csv" for key in extra or {}})
    if summary:
        files["md"] = f"{name}.md"
    meta = {"experiment": name, "config": dataclasses.asdict(cfg), "environment": environment(),
            "wall_seconds": round(wall_s, 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
    try:
        with staged(out) as stage:
            table.to_csv(stage / files["csv"], index=False)
            for key, extra_table in (extra or {}).items():
                extra_table.to_csv(stage / files[key], index=False)
            fig.savefig(stage / files["png"], dpi=150, bbox_inches="tight", format="png")
            (stage / files["json"]).write_text(json.dumps(meta, indent=2))
            if summary:
                (stage / files["md"]).write_text(f"# {name}\n\n{summary}\n")
    finally:
        plt.close(fig)  # free it either way (experiments run many figures in one process)
    if summary:
        print(summary)
    return {key: out / f for key, f in files.items()}


TAIL_STEPS = 1000  # a long-tier run keeps its checkpoint this many steps before its end (``zoo verify --tail``)


def cadence(steps: int, tail: bool = False) -> dict:
    """How often a figure's training run evaluates and checkpoints (``TrainConfig`` fields): 20
    evaluations, and a checkpoint every tenth of the run (the newest 2 kept), or, with ``tail``
    (the long tier), every ``TAIL_STEPS`` steps, so that the checkpoint ``TAIL_STEPS`` before the
    end is kept for the zoo to ship (``icmix zoo verify --tail`` resumes from it)."""
    if tail and (steps % TAIL_STEPS or steps <= TAIL_STEPS):
        raise ValueError(f"a run keeping its tail checkpoint needs steps a multiple of {TAIL_STEPS} above it, got {steps}")
    return {"eval_every": max(1, steps // 20), "checkpoint_every": TAIL_STEPS if tail else max(1, steps // 10)}


def run_name(tc) -> str:
    """A run directory name: what usually differs between runs, then a hash of the whole config
    (``disentangled5-m3-T32-mse-seed0-<hash>``, ``gpt-regression4-d8-m5-noise0.0-seed0-<hash>``,
    ``...-noise1.0-n4000-seed0-<hash>`` for a fixed training set).  Trackers are not part of
    it (``TrainConfig.identity``): a run tracked in W&B is the same run untracked."""
    depth = getattr(tc.model_config(), "n_layers", "")
    digest = hashlib.sha1(tc.identity().to_yaml().encode()).hexdigest()[:8]
    return f"{tc.model.kind}{depth}-{tc.family.run_name(tc)}-seed{tc.seed}-{digest}"


def train_runs(out: Path, configs: list, jobs: int = 1, progress: bool = True, launcher=None,
               group: str | None = None, tracking: tuple[str, ...] = ()) -> list[Path]:
    """Train (or resume, or reuse) each ``TrainConfig`` under ``OUT/runs/<run_name>``, ``jobs`` at a
    time (through ``launcher``, ``icmix.train.launch``, if given); the run directories, in order.
    Figures written to the same ``OUT`` share the runs they have in common.  ``tracking`` and
    ``group``: trackers for the runs, and their group there."""
    from icmix.train import train_many

    paths = [Path(out) / "runs" / run_name(tc) for tc in configs]
    unique = dict(zip(paths, configs))
    train_many([(tc, p) for p, tc in unique.items()], jobs, progress, launcher=launcher,
               groups=dict.fromkeys(unique, group) if group else None, tracking=tracking)
    return paths


def trained_runs(out: Path, runs: dict, jobs: int = 1, progress: bool = True) -> dict:
    """``train_runs`` over a ``{key: TrainConfig}`` map: ``{key: run directory}``."""
    return dict(zip(runs, train_runs(out, list(runs.values()), jobs, progress)))
