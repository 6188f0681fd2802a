"""Training-step time (forward + backward + Adam) of the MTD models on this machine.

    python benchmarks/bench_train_step.py [--batch 128] [--lengths 32 64] [--repeats 20]
                                          [--device cpu|cuda] [--precision fp32|bf16]

    python benchmarks/bench_train_step.py --preset paper [--repeats 20] [--device cuda]

    python benchmarks/bench_train_step.py --hooks [--repeats 60]

Prints the median step time of the 3-layer disentangled transformer and the standard
GPT-style transformer side by side, measured in one run, with their ratio.  On CUDA each
model is timed twice: batches sampled on the CPU and copied over (``data_device: cpu``), and
sampled on the GPU itself (``data_device: device``).

``--preset P`` instead times every distinct training run of ``icmix reproduce all --preset
P`` (runs that differ only in seed, task seed or step count share a row) and projects the
hours each figure's training needs at that speed, one run at a time.

``--hooks`` prints what the named hook points (``icmix.models.hooks``) cost with nothing
attached: each model's step beside the same model with every hook point replaced by a plain
identity function (no module call, never watched), steps alternating so that both see the same
machine load, and the ratio of the medians; an A/A column (the hooked model against a copy of
itself) shows the noise floor.  Run it on idle cores.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from icmix.train import TrainConfig, build_model, build_task
from icmix.train.loop import autocast, build_objective


def step_time(cfg: TrainConfig, repeats: int, device: torch.device) -> tuple[float, int]:
    """Median time of one step, new batch sampled included (as in training, on the CPU or,
    with ``cfg.data_device == "device"``, on ``device``), at the last curriculum stage."""
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    objective = build_objective(build_task(cfg), cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator(device=device if cfg.data_device == "device" else "cpu").manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(repeats + 3):
        sync()
        start = time.perf_counter()
        batch = objective.batch(cfg.steps - 1, cfg.batch_size, gen)
        with autocast(device, cfg.precision):
            loss = objective.loss(model, batch, device)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()
        if i >= 3:  # warm-up steps excluded
            times.append(time.perf_counter() - start)
    return statistics.median(times), sum(p.numel() for p in model.parameters())


def bench_preset(preset: str, repeats: int, device: torch.device, precision: str, data_device: str) -> None:
    """Step time of each distinct run of a preset, and the training hours it projects."""
    import dataclasses

    from icmix.experiments.common import run_name
    from icmix.report import configs_for, figure_runs

    def shape(tc: TrainConfig) -> str:  # what sets the step's cost
        plain = dataclasses.replace(tc, seed=0, steps=1, task=dataclasses.replace(tc.task, seed=0))
        return plain.to_yaml()

    rows: dict[str, dict] = {}
    for figure, cfg in configs_for(preset).items():
        for tc in figure_runs(figure, cfg):
            tc = dataclasses.replace(tc, precision=precision, data_device=data_device)
            row = rows.setdefault(shape(tc), {"config": tc, "steps": {}, "figures": set()})
            row["steps"][run_name(tc)] = tc.steps  # a run shared by figures counts once
            row["figures"].add(figure)
    print(f"{'run (model, task)':<58}{'runs':>5}{'step (ms)':>11}{'hours':>8}  figures")
    total = 0.0
    for row in sorted(rows.values(), key=lambda r: -sum(r["steps"].values())):
        tc = row["config"]
        t, _ = step_time(tc, repeats, device)
        hours = t * sum(row["steps"].values()) / 3600
        total += hours
        model = tc.model_config()
        what = (f"{tc.model.kind} {getattr(model, 'n_layers', '')}x{getattr(model, 'd_model', '')}, "
                + (f"T {tc.task.length}, m {tc.task.order}" if tc.task.kind == "mtd" else
                   f"d {tc.task.dim}, N {tc.task.n_points}, m {tc.task.n_components}"
                   + (f", n {tc.task.n_train}" if tc.task.n_train else "")) + f", B {tc.batch_size}")
        print(f"{what[:57]:<58}{len(row['steps']):>5}{t * 1e3:>11.1f}{hours:>8.2f}  {', '.join(sorted(row['figures']))}")
    print(f"{'all runs, one at a time':<58}{sum(len(r['steps']) for r in rows.values()):>5}{'':>11}{total:>8.2f}")


class _Bare:
    """What replaces a hook point in ``without_hook_points``: an identity function, never watched."""

    watched = False

    def __call__(self, x):
        return x


def without_hook_points(model: torch.nn.Module) -> torch.nn.Module:
    """``model`` (in place) with every ``HookPoint`` child replaced by a plain identity function."""
    from icmix.models.hooks import HookPoint

    for parent in list(model.modules()):
        for name, child in list(parent._modules.items()):
            if isinstance(child, HookPoint):
                del parent._modules[name]
                object.__setattr__(parent, name, _Bare())
    return model


def hook_overhead(cfg: TrainConfig, repeats: int, device: torch.device) -> tuple[float, float, float]:
    """Median step times ``(with hook points, without, with again)`` of ``cfg``'s model: three
    copies of one model, their steps taken in turn (the order rotating) on the same batches.  The
    third is the noise floor: the same model as the first, timed as a separate copy."""
    import copy

    torch.manual_seed(0)
    base = build_model(cfg)
    models = [copy.deepcopy(base).to(device), without_hook_points(copy.deepcopy(base)).to(device),
              copy.deepcopy(base).to(device)]
    objective = build_objective(build_task(cfg), cfg)
    pairs = [(m, torch.optim.Adam(m.parameters(), lr=1e-3)) for m in models]
    gen = torch.Generator().manual_seed(0)
    times: list[list[float]] = [[], [], []]
    for i in range(repeats + 3):
        batch = objective.batch(cfg.steps - 1, cfg.batch_size, gen)
        for k in (i % 3, (i + 1) % 3, (i + 2) % 3):
            model, opt = pairs[k]
            start = time.perf_counter()
            loss = objective.loss(model, batch, device)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= 3:
                times[k].append(time.perf_counter() - start)
    return tuple(statistics.median(t) for t in times)


HOOK_MODELS = [
    ("disentangled 3-layer (MTD, T 32)", {"task": {"vocab_size": 10, "order": 3, "length": 32},
                                          "model": {"kind": "disentangled", "n_layers": 3}}),
    ("standard GPT 3x64, 4 heads (MTD, T 32)", {"task": {"vocab_size": 10, "order": 3, "length": 32},
                                                "model": {"kind": "gpt", "n_layers": 3, "d_model": 64, "n_heads": 4}}),
]


def bench_hooks(repeats: int, device: torch.device) -> None:
    """The hook points' cost per training step, model by model (``--hooks``)."""
    from icmix.experiments.common import run_name  # noqa: F401 - registers the families
    from icmix.report import configs_for, figure_runs

    regression = figure_runs("mlr-fig2", configs_for("cpu")["mlr-fig2"])[0]
    rows = [(name, TrainConfig.from_dict({**spec, "batch_size": 64})) for name, spec in HOOK_MODELS]
    rows.append((f"regression GPT {regression.model_config().n_layers}x{regression.model_config().d_model} (cpu preset)",
                 regression))
    print(f"{'model':<44}{'hook points':>12}{'with (ms)':>11}{'without':>10}{'overhead':>10}{'A/A':>9}")
    for name, cfg in rows:
        n = sum(1 for m in build_model(cfg).modules() if type(m).__name__ == "HookPoint")
        with_, without, again = hook_overhead(cfg, repeats, device)
        print(f"{name:<44}{n:>12}{with_ * 1e3:>11.2f}{without * 1e3:>10.2f}{(with_ / without - 1) * 100:>9.2f}%"
              f"{(again / with_ - 1) * 100:>8.2f}%")
    print("overhead: with / without - 1; A/A: a second copy of the hooked model against the first, the noise floor")


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
    parser.add_argument("--preset", choices=("quick", "cpu", "paper"),
                        help="time the training runs of this reproduce-all preset instead")
    parser.add_argument("--data-device", choices=("cpu", "device"), default="cpu", help="with --preset")
    parser.add_argument("--hooks", action="store_true",
                        help="the cost of the hook points: each model with and without them, side by side")
    args = parser.parse_args()
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    if args.hooks:
        print(f"torch {torch.__version__}, {where}; steps alternate between the two models, medians of "
              f"{args.repeats}")
        bench_hooks(args.repeats, device)
        return
    if args.preset:
        print(f"torch {torch.__version__}, {where}; the training runs of preset {args.preset!r}")
        bench_preset(args.preset, args.repeats, device, args.precision, args.data_device)
        return
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
