"""Cost against the vocabulary size q (issue 21): q = 10, 32, 64 side by side in one run.

    python benchmarks/bench_vocab.py [--quick] [--repeats 3]

For MTD (one shared matrix) and MTDg (one per lag), order m = 3, length T = 128, it times
(median of --repeats runs, seconds): sampling a batch, one-step MD, exact Bayes, Gibbs
(200 draws), building the one-step-MD construction and running it on the batch (and its
max error against one-step MD), and one training step of the 3-layer disentangled model and
of a 3-layer width-64 GPT (batch 128, T = 32).  The last column gives each time relative to
q = 10 from the same run.  Set OMP_NUM_THREADS to fix the threads.
"""

from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch

from icmix import MTDTask
from icmix.construct import md_transformer
from icmix.construct.check import md_reference
from icmix.estimators.mtd import bayes_exact, bayes_gibbs, mirror_descent
from icmix.train import TrainConfig
from icmix.train.loop import build_model


def timed(fn, repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls after one untimed warm-up call, and the last result."""
    fn()
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def train_step_time(kind: str, q: int, per_lag: bool, repeats: int) -> float:
    model = ({"kind": "disentangled", "n_layers": 3, "positions": "warmup", "value_offsets": 4} if kind == "disentangled"
             else {"kind": "gpt", "n_layers": 3, "d_model": 64, "n_heads": 4})
    cfg = TrainConfig.from_dict({"task": {"kind": "mtdg" if per_lag else "mtd", "vocab_size": q, "order": 3, "length": 32},
                                 "model": model, "steps": 10, "batch_size": 128})
    net = build_model(cfg)
    objective = cfg.family.objective(cfg.family.build(cfg.task), cfg)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    batch = objective.batch(0, 128, torch.Generator().manual_seed(0))

    def step():
        opt.zero_grad()
        objective.loss(net, batch, torch.device("cpu")).backward()
        opt.step()

    return timed(step, repeats)[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a smaller batch (smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    b, t, m = (16 if args.quick else 128), 128, 3
    rows = []
    for per_lag in (False, True):
        for q in (10, 32, 64):
            task = MTDTask(q, m, seed=0, per_lag=per_lag)
            pi = task.transition
            sample_s, (tokens, _) = timed(lambda: task.sample(b, t, generator=torch.Generator().manual_seed(1)),
                                          args.repeats)
            row = {"family": "mtdg" if per_lag else "mtd", "q": q, "sample": sample_s,
                   "md_1step": timed(lambda: mirror_descent(tokens, pi, m, 0.01), args.repeats)[0],
                   "bayes_exact": timed(lambda: bayes_exact(tokens, pi, m), args.repeats)[0],
                   "gibbs_200": timed(lambda: bayes_gibbs(tokens, pi, m, num_samples=200, burn_in=50, generator=0),
                                      args.repeats)[0]}
            build_s, model = timed(lambda: md_transformer(pi, m, 8.0, t), args.repeats)
            with torch.no_grad():
                run_s, out = timed(lambda: model(tokens), args.repeats)
            row.update(construction_build=build_s, construction_run=run_s,
                       construction_max_error=(out[:, m:] - md_reference(tokens, pi, m, 8.0)).abs().max().item(),
                       train_step_disentangled=train_step_time("disentangled", q, per_lag, args.repeats),
                       train_step_gpt=train_step_time("gpt", q, per_lag, args.repeats))
            rows.append(row)
            print(f"done: {row['family']} q={q}", flush=True)
    table = pd.DataFrame(rows).set_index(["family", "q"])
    print(f"\nseconds (median of {args.repeats}); batch {b}, m = {m}, T = {t} (training: batch 128, T = 32); "
          f"threads = {torch.get_num_threads()}\n")
    print(table.to_markdown(floatfmt=".3g"))
    times = table.drop(columns="construction_max_error")
    print("\nrelative to q = 10 of the same family and run:\n")
    print((times / times.groupby(level="family").transform("first")).to_markdown(floatfmt=".2f"))


if __name__ == "__main__":
    main()
