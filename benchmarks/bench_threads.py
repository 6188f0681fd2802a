"""Two runs at once on this machine, with and without ``--threads 1`` (issue 33), side by side.

    python benchmarks/bench_threads.py [--steps 300] [--runs 2]

Starts ``--runs`` ``icmix train`` processes at the same time on the same config (the GPT-style
model on MTD, m = 3, T = 32, batch 64; each its own run folder), first without ``--threads``
(each process takes torch's default, every core, so they oversubscribe the machine), then with
``--threads 1``; then the same runs as one ``icmix sweep --jobs RUNS`` (a grid over the seed),
whose default shares the cores among its runs, with and without ``--threads 1``.  It prints each
setting's wall milliseconds per step and its ratio to ``--threads 1``.  Run it on an otherwise idle
machine: the point is how the runs share its cores.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = """task: {kind: mtd, vocab_size: 10, order: 3, seed: 0, length: 32}
model: {kind: gpt, n_layers: 3, d_model: 64, n_heads: 4}
loss: mse
loss_positions: all
steps: STEPS
batch_size: 64
eval_every: STEPS
eval_size: 64
checkpoint_every: STEPS
"""


def together(config: Path, out: Path, runs: int, threads: list[str]) -> float:
    """Wall seconds for ``runs`` concurrent ``icmix train`` processes to finish."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ICMIX_THREADS")}
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "icmix", "train", str(config), "--out", str(out / f"run{i}"),
                               "--no-progress", *threads], env=env, stdout=subprocess.DEVNULL)
             for i in range(runs)]
    if any(p.wait() for p in procs):
        raise SystemExit("a training run failed")
    return time.perf_counter() - start


def swept(config: Path, out: Path, runs: int, threads: list[str]) -> float:
    """Wall seconds of one ``icmix sweep`` of ``runs`` seeds, ``runs`` at a time."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "ICMIX_THREADS")}
    seeds = ",".join(str(i) for i in range(runs))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "icmix", "sweep", str(config), "--grid", f"seed={seeds}", "--jobs",
                           str(runs), "--out", str(out), "--no-progress", *threads], env=env, stdout=subprocess.DEVNULL)
    if done.returncode:
        raise SystemExit("the sweep failed")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tmp / "config.yaml"
        config.write_text(CONFIG.replace("STEPS", str(args.steps)))
        rows = {}
        settings = (("separate `icmix train`s, torch's default threads", together, []),
                    ("separate `icmix train`s, --threads 1", together, ["--threads", "1"]),
                    ("`icmix sweep --jobs N`, its default", swept, []),
                    ("`icmix sweep --jobs N`, --threads 1", swept, ["--threads", "1"]))
        for i, (label, how, threads) in enumerate(settings):
            rows[label] = 1000 * how(config, tmp / f"s{i}", args.runs, threads) / args.steps
    print(f"{args.runs} runs at once on {os.cpu_count()} cores, {args.steps} steps each (start-up included)")
    print(f"{'setting':55s} {'ms/step':>8s} {'× --threads 1':>14s}")
    for i, (label, ms) in enumerate(rows.items()):
        base = list(rows.values())[i | 1]  # the same launch with --threads 1
        print(f"{label:55s} {ms:8.1f} {ms / base:14.2f}")


if __name__ == "__main__":
    main()
