"""The model zoo: every training run of a preset, trained once and shipped with the package.

``icmix reproduce … --preset cpu`` takes a run from the zoo wherever it needs a run of the same
name (config hash) that ``OUT/runs`` lacks, so a newcomer sees the converged ``cpu`` results
in minutes; ``--no-zoo`` trains instead.  A zoo entry ``zoo/<preset>/<run name>/`` holds what
a finished run directory needs to be a predictor, and nothing to resume from:

- ``config.yaml``, ``metrics.jsonl`` (the deterministic record) and ``model/`` (safetensors +
  the model's config); no optimiser state, no checkpoints;
- ``provenance.json``: the command, git commit, torch and Python versions, CPU model, threads,
  wall time, the figures that use the run, and the SHA-256 of every file above.

An entry is *stale* (reported, never used) when the current code no longer gives its config
the same run name, or when a file's SHA-256 differs from its provenance.  ``verify`` retrains
a run from scratch (with the recorded number of threads) and compares the weights: identical
bits where the CPU and torch build match, otherwise the largest weight difference and the
eval-metric difference against stated tolerances.

Build the zoo with ``icmix zoo build --preset cpu`` (one run per process and core; a finished
entry is skipped, so an interrupted build loses at most the runs in flight).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ZOO_ROOT = Path(__file__).resolve().parent
FILES = ("config.yaml", "metrics.jsonl", "model/model.safetensors", "model/config.json")
PROVENANCE = "provenance.json"


def zoo_dir(preset: str, root: Path | None = None) -> Path:
    return Path(root or ZOO_ROOT) / preset


def preset_runs(preset: str, only: list[str] | None = None) -> dict[str, tuple]:
    """``{run name: (TrainConfig, [figure names])}``: every training run of ``preset`` over the
    registered figures (or those in ``only``), each once, in report order."""
    from icmix.experiments.common import run_name
    from icmix.experiments.figure import figure_names, get_figure

    runs: dict[str, tuple] = {}
    for name in only or figure_names():
        fig = get_figure(name)
        for tc in fig.runs(fig.presets[preset]).values():
            runs.setdefault(run_name(tc), (tc, []))[1].append(name)
    return runs


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit(path: Path = ZOO_ROOT) -> str:
    """The git commit of the source tree holding ``path`` (``unknown`` outside a checkout);
    ``+dirty`` when tracked files under ``src/`` differ from it."""
    try:
        head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
        top = subprocess.run(["git", "-C", str(path), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", top, "diff", "--quiet", "HEAD", "--", "src"]).returncode != 0
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def export(run: Path, dest: Path, provenance: dict) -> Path:
    """Copy a finished run's ``FILES`` into the zoo entry ``dest`` with ``provenance.json``
    (plus the files' SHA-256); the entry appears whole or not at all."""
    from icmix.io import staged_directory

    run, dest = Path(run), Path(dest)
    if not (run / "model" / "model.safetensors").exists():
        raise ValueError(f"{run} has not finished (no final model)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with staged_directory(dest, replaces=(*FILES, PROVENANCE, "model")) as stage:
        for rel in FILES:
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run / rel, stage / rel)
        record = {**provenance, "sha256": {rel: sha256(stage / rel) for rel in FILES}}
        (stage / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")
    return dest


def train_entry(name: str, tc, figures: list[str], work: Path, dest: Path, threads: int = 1,
                command: str | None = None) -> Path:
    """Train the run ``name`` from scratch (or resume it) under ``work/name`` with ``threads``
    torch threads, then export it to ``dest``."""
    import torch

    from icmix.train import train

    torch.set_num_threads(threads)
    run = Path(work) / name
    start = time.time()
    train(tc, run, resume=(run / "config.yaml").exists(), progress=False)
    wall = time.time() - start
    prov = {
        "run": name, "figures": figures, "steps": tc.steps,
        "command": command or shlex.join(["icmix", *sys.argv[1:]]),
        "git_commit": git_commit(), "torch": torch.__version__, "python": platform.python_version(),
        "cpu": cpu_model(), "threads": torch.get_num_threads(), "wall_seconds": round(wall, 1),
        "trained": time.strftime("%Y-%m-%dT%H:%M:%S"),
        # wall time of this process only; a resumed run's earlier part is in its progress.jsonl
        "resumed": (run / "history.jsonl").exists(),
    }
    return export(run, dest, prov)


def build(preset: str, work: Path, root: Path | None = None, only: list[str] | None = None,
          names: list[str] | None = None, threads: int = 1, progress: bool = True) -> list[Path]:
    """Train and export every run of ``preset`` (of the figures ``only``, or the runs ``names``)
    that the zoo lacks, one after another; the new entries."""
    from tqdm.auto import tqdm

    runs = preset_runs(preset, only)
    if names:
        unknown = sorted(set(names) - set(runs))
        if unknown:
            raise ValueError(f"not a run of the {preset} preset: {', '.join(unknown)}")
        runs = {n: runs[n] for n in names}
    todo = {n: v for n, v in runs.items() if not (zoo_dir(preset, root) / n / PROVENANCE).exists()}
    done = []
    for name, (tc, figures) in tqdm(todo.items(), desc=f"zoo {preset}", disable=not progress):
        done.append(train_entry(name, tc, figures, Path(work), zoo_dir(preset, root) / name, threads))
    return done
