"""How long the command line takes to answer (issue 33): CPU seconds of a fresh interpreter, the
median of --repeats runs, side by side in one run.

    python benchmarks/bench_cli.py [--repeats 5]

- ``icmix --help`` as it is (the parser imports neither torch nor numpy);
- the same with torch and numpy imported first: what it cost before the parser stopped
  importing them (the package's ``__init__`` imported the tasks, and the parser the lag
  estimators and the training package);
- ``icmix reproduce --help``;
- ``icmix zoo list`` (it reads every shipped entry's provenance).

The last column is each time relative to ``icmix --help`` in the same run.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys

CASES = {
    "icmix --help": "from icmix.cli import main; main(['--help'])",
    "icmix --help, torch and numpy imported first (as before)":
        "import torch, numpy; from icmix.cli import main; main(['--help'])",
    "icmix reproduce --help": "from icmix.cli import main; main(['reproduce', '--help'])",
    "icmix zoo list": "from icmix.cli import main; main(['zoo', 'list'])",
}


def cpu_seconds(code: str) -> float:
    """User + system CPU seconds of one fresh interpreter running ``code``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", f"import sys\ntry:\n    {code}\nexcept SystemExit:\n    pass"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times = {name: statistics.median(cpu_seconds(code) for _ in range(args.repeats)) for name, code in CASES.items()}
    base = times["icmix --help"]
    print(f"{'command':60s} {'CPU s':>8s} {'× --help':>9s}")
    for name, t in times.items():
        print(f"{name:60s} {t:8.2f} {t / base:9.1f}")


if __name__ == "__main__":
    main()
