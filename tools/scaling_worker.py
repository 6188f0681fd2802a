"""Maintainers: train the claims-scaling figure's runs (the long tier's recipe at every budget), one
process per core on one list (a run another worker holds is skipped: its lock says so), so that an
interrupted build (a session's end) loses at most the run in flight.  A run of the long tier itself (the full budget) is exported to the shipped zoo with
its tail checkpoint where it ships one, and committed with the package's manifest, as it finishes;
the smaller budgets' runs stay under OUT/runs (the zoo ships their measurements, not their weights).
A finished run is skipped, an unfinished one resumes from its checkpoint.

    .venv/bin/python tools/scaling_worker.py --list [FIGURE ...] > runs.txt   # what is left (see --list)
    OMP_NUM_THREADS=1 .venv/bin/python tools/scaling_worker.py runs.txt OUT    # one worker per core

Then ``icmix reproduce claims-scaling --preset long --out OUT`` measures the claims (the cpu tier's
runs come from the zoo), and copying ``OUT/claims-scaling-measured.csv`` into ``src/icmix/zoo/long/``
followed by ``icmix zoo manifest --write`` ships the measurements.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def scaling_runs(figures: list[str] | None = None) -> dict:
    """``{run name: TrainConfig}`` of the claims-scaling figure's runs (of ``figures`` only, if given)."""
    from icmix.experiments.common import run_name
    from icmix.experiments.figure import get_figure
    from icmix.experiments.scaling import Config

    cfg = Config(figures=tuple(figures or ()))
    return {run_name(tc): tc for tc in get_figure("claims-scaling").runs(cfg).values()}


def commit(entry: Path) -> bool:
    """Seal the shipped zoo's manifest and commit the entry with it (retried: another worker may
    hold git's index lock for a moment)."""
    shipped = "src/icmix/zoo/shipped.py"
    for _ in range(30):
        from icmix import zoo

        try:
            zoo.write_manifest()
            rel = str(entry.relative_to(ROOT))
            subprocess.run(["git", "-C", str(ROOT), "add", "--", rel, shipped], check=True)
            subprocess.run(["git", "-C", str(ROOT), "commit", "-q", "-m", f"zoo (long): {entry.name}", "--", rel,
                            shipped], check=True)
            return True
        except (subprocess.CalledProcessError, ValueError) as err:
            print(f"{time.strftime('%T')} commit of {entry.name} failed ({err}); retrying", flush=True)
            time.sleep(5)
    return False


def main(argv: list[str]) -> int:
    import os

    import torch

    os.environ.pop("ICMIX_ZOO", None)  # this builds the shipped zoo

    from icmix import zoo
    from icmix.train import train

    if argv and argv[0] == "--list":
        # the long tier's runs first (they ship, and move the demo to the long tier once a figure has
        # them all), then the smaller budgets', cheapest first
        runs = scaling_runs(argv[1:])
        have, long = set(zoo.entries()), zoo.preset_runs("long")
        for name, tc in sorted(runs.items(), key=lambda item: (item[0] not in long, item[1].steps)):
            if name not in have:
                print(name)
        return 0
    run_list, out = Path(argv[0]), Path(argv[1])
    torch.set_num_threads(1)
    runs = scaling_runs()
    long = zoo.preset_runs("long")
    for name in [n.strip() for n in run_list.read_text().splitlines() if n.strip()]:
        tc = runs[name]
        run = out / "runs" / name
        dest = zoo.zoo_dir("long") / name
        if (run / "model" / "model.safetensors").exists() and (name not in long or (dest / zoo.PROVENANCE).exists()):
            continue
        print(f"{time.strftime('%T')} start {name}", flush=True)
        try:
            if name in long and not (dest / zoo.PROVENANCE).exists():
                tail = tc.steps - zoo.TAIL_STEPS if zoo.ships_tail("long", tc) else None
                zoo.train_entry(name, tc, long[name][1], out / "runs", dest, threads=1, tail=tail,
                                command=shlex.join(["icmix", "zoo", "build", "--preset", "long", "--runs", name]))
                print(f"{time.strftime('%T')} {'committed' if commit(dest) else 'NOT COMMITTED'} {name}", flush=True)
            else:
                train(tc, run, resume=(run / "config.yaml").exists(), progress=False)
                print(f"{time.strftime('%T')} done {name}", flush=True)
        except Exception as err:  # noqa: BLE001 - one failed run must not stop the others
            print(f"{time.strftime('%T')} FAILED {name}: {type(err).__name__}: {err}", flush=True)
    print(f"{time.strftime('%T')} worker done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
