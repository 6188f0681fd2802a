"""Training-step time (forward + backward + Adam) of the MTD models on this machine.

    python benchmarks/bench_train_step.py [--batch 128] [--lengths 32 64] [--repeats 20]
                                          [--device cpu|cuda] [--precision fp32|bf16]

Prints the median step time of the 3-layer disentangled transformer and the standard
GPT-style transformer side by side, measured in one run, with their ratio.  On CUDA each
model is timed twice: batches sampled on the CPU and copied over (``data_device: cpu``), and
sampled on the GPU itself (``data_device: device``).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from icmix.train import TrainConfig, build_model, build_task
from icmix.train.loop import autocast
from icmix.train.objectives import loss_fn


def step_time(cfg: TrainConfig, repeats: int, device: torch.device) -> tuple[float, int]:
    """Median time of one step, new batch sampled included (as in training, on the CPU or,
    with ``cfg.data_device == "device"``, on ``device``)."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    task = build_task(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator(device=device if cfg.data_device == "device" else "cpu").manual_seed(0)
    mask = task.loss_mask(cfg.task.length, cfg.loss_positions).to(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(repeats + 3):
        sync()
        start = time.perf_counter()
        batch = task.next_token_batch(cfg.batch_size, cfg.task.length, gen)
        with autocast(device, cfg.precision):
            out = model(batch["inputs"].to(device))
            loss = loss_fn(out.float(), batch["targets"].to(device), mask, cfg.loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()
        if i >= 3:  # warm-up steps excluded
            times.append(time.perf_counter() - start)
    return statistics.median(times), sum(p.numel() for p in model.parameters())


MODELS = [
    ("disentangled 3-layer, one-hot pos. (paper)", {"kind": "disentangled", "n_layers": 3}),
    ("disentangled 3-layer, marker (quick preset)",
     {"kind": "disentangled", "n_layers": 3, "positions": "warmup", "value_offsets": 4}),
    ("standard GPT 3x64, 4 heads (paper preset)", {"kind": "gpt", "n_layers": 3, "d_model": 64, "n_heads": 4}),
    ("standard GPT 3x32, 4 heads (quick preset)", {"kind": "gpt", "n_layers": 3, "d_model": 32, "n_heads": 4}),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lengths", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}, {args.precision}, batch {args.batch}, q=10, m=3")
    head = f"{'model':<44}{'length':>7}{'params':>11}{'step (ms)':>11}"
    if device.type == "cuda":
        head += f"{'data on GPU':>13}{'gain':>10}"
    print(head)
    for length in args.lengths:
        base = {"task": {"vocab_size": 10, "order": 3, "length": length}, "batch_size": args.batch,
                "precision": args.precision}
        rows = {}
        for name, model in MODELS:
            cfg = TrainConfig.from_dict({**base, "model": model})
            t, n = step_time(cfg, args.repeats, device)
            rows[name] = t
            line = f"{name:<44}{length:>7}{n:>11,}{t * 1e3:>11.1f}"
            if device.type == "cuda":
                on_gpu, _ = step_time(TrainConfig.from_dict({**cfg.to_dict(), "data_device": "device"}),
                                      args.repeats, device)
                line += f"{on_gpu * 1e3:>13.1f}{t / on_gpu:>9.2f}x"
            print(line)
        a, b = rows[MODELS[0][0]], rows[MODELS[2][0]]
        print(f"{'ratio paper disentangled / GPT 3x64':<44}{length:>7}{'':>11}{a / b:>11.2f}")


if __name__ == "__main__":
    main()
