"""Benchmark the MTD estimators at the sizes named in the foundation issue.

    python benchmarks/bench_mtd_estimators.py [--quick]

Prints wall-clock seconds per estimator (median of --repeats runs) and, side by side in
the same run, the speed-up of the vectorised one-step MD over a per-sequence Python loop.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from icmix import MTDTask
from icmix.estimators.mtd import bayes_exact, bayes_gibbs, mirror_descent


def timed(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def loop_one_step_md(tokens: np.ndarray, pi: np.ndarray, m: int, eta: float) -> np.ndarray:
    """The straightforward per-sequence implementation, for the side-by-side ratio."""
    out = np.empty((len(tokens), m))
    for b, seq in enumerate(tokens):
        c = np.stack([pi[seq[m - g : len(seq) - g], seq[m:]] for g in range(1, m + 1)], -1)
        gamma = c / c.sum(1, keepdims=True)
        logits = eta * m * gamma.sum(0)
        out[b] = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10x smaller batches (smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    q, m, T = 10, 3, 256
    task = MTDTask(q, m, seed=0)
    gen = torch.Generator().manual_seed(0)
    n_md, n_bayes = 100_000 // scale, 1_000 // scale
    tokens_md, _ = task.sample(n_md, T, generator=gen)
    tokens, _ = task.sample(n_bayes, T, generator=gen)
    pi = task.transition
    grid = [8, 16, 32, 64, 128, 256]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; q={q}, m={m}, T={T}")
    rows = []
    t = timed(lambda: mirror_descent(tokens_md, pi, m, 0.01), args.repeats)
    rows.append((f"one-step MD, {n_md:,} sequences", t))
    n_loop = min(2_000, n_md)
    t_vec = timed(lambda: mirror_descent(tokens_md[:n_loop], pi, m, 0.01), args.repeats)
    t_loop = timed(lambda: loop_one_step_md(tokens_md[:n_loop].numpy(), pi.numpy(), m, 0.01), 1)
    rows.append((f"  per-sequence loop, {n_loop:,} sequences", t_loop))
    rows.append((f"  vectorised, same {n_loop:,} sequences", t_vec))
    t = timed(lambda: bayes_exact(tokens, pi, m), 1)
    rows.append((f"exact Bayes, {n_bayes:,} sequences, length {T}", t))
    t = timed(lambda: bayes_exact(tokens, pi, m, lengths=grid), 1)
    rows.append((f"exact Bayes, {n_bayes:,} sequences, length grid {grid} (one DP pass)", t))
    t = timed(lambda: bayes_gibbs(tokens, pi, m, num_samples=1000, burn_in=200, generator=0), 1)
    rows.append((f"Gibbs (1000 draws + 200 burn-in), {n_bayes:,} sequences, length {T}", t))
    width = max(len(r[0]) for r in rows)
    for name, secs in rows:
        print(f"{name:<{width}}  {secs:9.3f} s")
    print(f"{'vectorised / loop speed-up (one-step MD)':<{width}}  {t_loop / t_vec:9.1f} x")


if __name__ == "__main__":
    main()
