"""icmix against the common ICL codebase's model, and vectorised estimators against loops.

    pip install -e ".[bench]"        # transformers: a benchmark-only extra
    python benchmarks/bench_vs_hf.py [--repeats 10] [--skip-estimators] [--device cpu|cuda]

Everything is measured side by side in one run:

(a) one training step (forward + backward + Adam) of icmix's ``RegressionGPT`` and of the
    Garg et al. / Pathak et al. model, Hugging Face's ``GPT2Model`` with linear read-in and
    read-out, at identical shape (layers, width, heads, MLP x4, interleaved x/y tokens, batch,
    prompt length): the paper shape (12 x 256, 8 heads, batch 64, 41 points, d = 20) and a
    small one (4 x 64);
(b) the same for the MTD standard transformer against a ``GPT2Model`` with a token embedding,
    at lengths 64 and 256;
(c) icmix's vectorised estimators against a per-prompt Python loop at batch 1,000.

(a)-(b) report the median step (the models are timed in alternating rounds, so a drift of
the machine's speed hits them alike), the ratio and the achieved FLOP/s (counted by
``torch.utils.flop_counter``) as a fraction of this machine's measured fp32 matmul peak.
On CPU a "ceiling" row divides HF's step by the time icmix spends in matmul and attention
kernels alone (torch.profiler): the speed-up that no implementation of the same FLOPs on this
machine could pass.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def matmul_peak(device: torch.device, sizes=(1024, 2048), repeats: int = 20) -> float:
    """Measured fp32 FLOP/s of square matmuls, the best of ``repeats`` at each size (the
    machine's practical peak; the benchmark measures it before and after, and keeps the max)."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
        a @ b
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            a @ b
            _sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(model: nn.Module, inputs: tuple, target: torch.Tensor, loss_fn):
    """A closure running one forward + backward + Adam step of ``model``."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        loss = loss_fn(model(*inputs), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def count_flops(step) -> float:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


# Kernels whose time no implementation of the same model can avoid: the matmuls of the
# linear layers and the attention kernels (the rest -- GELU, LayerNorm, residual adds,
# copies, Adam -- is what a faster implementation can shave).
_CORE_KERNELS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def core_kernel_seconds(step, steps: int = 3) -> float:
    """Seconds per step spent in matmul and attention kernels (torch.profiler, self time,
    the mean over ``steps`` steps)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return sum(e.self_cpu_time_total for e in prof.key_averages()
               if e.key in _CORE_KERNELS or e.key.startswith("aten::_scaled_dot_product")) / 1e6 / steps


def interleaved_medians(steps: dict, repeats: int, device: torch.device, warmup: int = 2) -> dict[str, float]:
    """Median seconds per step of each closure, timed in alternating rounds (A, B, A, B, ...)
    so that a drift of the machine's speed (shared cores, frequency) hits every model alike."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {who: [] for who in steps}
    for _ in range(repeats):
        for who, step in steps.items():
            _sync(device)
            t = time.perf_counter()
            step()
            _sync(device)
            times[who].append(time.perf_counter() - t)
    return {who: statistics.median(ts) for who, ts in times.items()}


class HFRegression(nn.Module):
    """The common codebase's model: read-in, ``GPT2Model`` on embeddings, read-out at x tokens."""

    def __init__(self, dim: int, n_points: int, n_layers: int, d_model: int, n_heads: int):
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        cfg = GPT2Config(n_positions=2 * n_points, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
        self.read_in, self.backbone, self.read_out = nn.Linear(dim, d_model), GPT2Model(cfg), nn.Linear(d_model, 1)

    def forward(self, xs, ys):
        b, n, d = xs.shape
        tokens = torch.stack([xs, nn.functional.pad(ys[..., None], (0, d - 1))], dim=2).reshape(b, 2 * n, d)
        h = self.backbone(inputs_embeds=self.read_in(tokens)).last_hidden_state
        return self.read_out(h[:, 0::2]).squeeze(-1)


class HFTokens(nn.Module):
    """``GPT2Model`` with a token embedding and a linear read-out to the vocabulary."""

    def __init__(self, vocab: int, length: int, n_layers: int, d_model: int, n_heads: int):
        super().__init__()
        from transformers import GPT2Config, GPT2Model

        cfg = GPT2Config(vocab_size=vocab, n_positions=length, n_embd=d_model, n_layer=n_layers, n_head=n_heads,
                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
        self.backbone, self.read_out = GPT2Model(cfg), nn.Linear(d_model, vocab)

    def forward(self, tokens):
        return self.read_out(self.backbone(input_ids=tokens).last_hidden_state)


def compare(name: str, ours: nn.Module, theirs: nn.Module, inputs: tuple, target, loss_fn, repeats: int,
            device: torch.device, peak: float, compiled: bool) -> None:
    """Rows for icmix, icmix under ``torch.compile`` (``icmix train --compile``) and the HF model,
    timed in alternating rounds, and the ceiling: HF's step over the time icmix spends in
    matmul and attention kernels alone (no implementation of the same FLOPs beats it)."""
    import copy

    models = {"icmix": ours}
    if compiled:
        models["icmix compiled"] = torch.compile(copy.deepcopy(ours))
    models["HF GPT2Model"] = theirs
    steps = {}
    for who, model in models.items():
        torch.manual_seed(0)
        steps[who] = train_step(model.to(device), inputs, target, loss_fn)
    flops = count_flops(steps["icmix"])  # the eager count (a compiled graph hides its ops from the counter)
    median = interleaved_medians(steps, repeats, device)
    for who, model in models.items():
        t = median[who]
        n = sum(p.numel() for p in model.parameters())
        print(f"  {name[:33]:<34}{who:<15}{n:>11,}{t * 1e3:>10.1f}{flops / t / 1e9:>10.1f}{flops / t / peak:>9.1%}")
    for who in median:
        if who != "HF GPT2Model":
            print(f"  {name[:33]:<34}{'speed-up':<15}{'':>11}{median['HF GPT2Model'] / median[who]:>9.2f}x  ({who} vs HF)")
    if device.type == "cpu":
        core = core_kernel_seconds(steps["icmix"])
        print(f"  {name[:33]:<34}{'ceiling':<15}{'':>11}{median['HF GPT2Model'] / core:>9.2f}x  (HF vs icmix's "
              f"matmul + attention kernels alone, {core * 1e3:.1f} ms: {core / median['icmix']:.0%} of its step)")


def bench_models(args, device: torch.device, peak: float) -> None:
    from icmix.models import GPTConfig, GPTTransformer, RegressionGPT, RegressionGPTConfig

    mse = nn.functional.mse_loss
    print(f"\n(a) regression transformer, one training step (fwd + bwd + Adam), fp32, {device}; "
          f"B 64, N 41, d 20 (HF's params include GPT-2's unused 50,257-token embedding)")
    print(f"  {'shape':<34}{'model':<15}{'params':>11}{'ms':>10}{'GFLOP/s':>10}{'of peak':>9}")
    for label, layers, width, heads in (("paper 12x256, 8 heads", 12, 256, 8), ("small 4x64, 4 heads", 4, 64, 4)):
        b, n, d = 64, 41, 20
        g = torch.Generator().manual_seed(0)
        xs, ys = torch.randn(b, n, d, generator=g).to(device), torch.randn(b, n, generator=g).to(device)
        ours = RegressionGPT(RegressionGPTConfig(dim=d, max_points=n, n_layers=layers, d_model=width, n_heads=heads))
        compare(f"{label}", ours, HFRegression(d, n, layers, width, heads), (xs, ys), ys, mse,
                args.repeats, device, peak, args.compile)

    print(f"\n(b) MTD standard transformer, one training step, q = 10, batch 128, fp32, {device}")
    print(f"  {'shape':<34}{'model':<15}{'params':>11}{'ms':>10}{'GFLOP/s':>10}{'of peak':>9}")

    def ce(out, target):
        return nn.functional.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))

    for length in (64, 256):
        tokens = torch.randint(10, (128, length), generator=torch.Generator().manual_seed(0)).to(device)
        ours = GPTTransformer(GPTConfig(vocab_size=10, n_layers=3, d_model=64, n_heads=4, max_length=length))
        compare(f"3x64, 4 heads, T {length}", ours, HFTokens(10, length, 3, 64, 4), (tokens,), tokens, ce,
                args.repeats, device, peak, args.compile)


def bench_estimators(args) -> None:
    import numpy as np

    from icmix.estimators import regression as reg
    from icmix.estimators.mtd import bayes_exact, bayes_gibbs, em, mirror_descent
    from icmix.tasks import MixLinRegTask, MTDTask

    b, n_loop = 1000, args.loop_prompts
    print(f"\n(c) estimators at batch {b}: vectorised vs a per-prompt Python loop "
          f"(the loop is timed on {n_loop} prompts and scaled to {b}: its cost is linear in the batch)")
    print(f"  {'estimator':<46}{'vectorised (s)':>15}{'loop (s)':>11}{'speed-up':>10}")
    task = MixLinRegTask(20, 5, 1.0, seed=0)
    xs, ys = task.sample(b, 41, generator=torch.Generator().manual_seed(1))
    w = task.components.numpy()

    def pm_loop(x, y):  # the straightforward implementation: one prompt and one prefix at a time
        out = np.zeros(y.shape)
        for i in range(len(x)):
            for j in range(x.shape[1]):
                sse = ((x[i, :j] @ w.T - y[i, :j, None]) ** 2).sum(0)
                p = np.exp(-(sse - sse.min()) / 2)
                out[i, j] = (p / p.sum()) @ (w @ x[i, j])
        return out

    xn, yn = xs.numpy(), ys.numpy()
    rows = [("regression posterior mean, every prefix (N = 41)", lambda: reg.posterior_mean(xs, ys, task.components, 1.0),
             lambda: pm_loop(xn[:n_loop], yn[:n_loop]))]
    mtd = MTDTask(10, 3, seed=0)
    tokens, _ = mtd.sample(b, 64, generator=torch.Generator().manual_seed(2))
    pi = mtd.transition

    def loop(fn):
        return lambda: [fn(tokens[i : i + 1]) for i in range(n_loop)]

    warnings.filterwarnings("ignore", message="EM did not reach")  # 200 iterations on purpose
    for name, fn in (
        ("MTD one-step MD (T = 64)", lambda t: mirror_descent(t, pi, 3, eta=0.05)),
        ("MTD EM, 200 iterations (T = 64)", lambda t: em(t, pi, 3, max_iter=200, tol=1e-300)),
        ("MTD exact Bayes posterior mean (T = 64)", lambda t: bayes_exact(t, pi, 3)),
        ("MTD Gibbs, 300 + 100 draws (T = 64)", lambda t: bayes_gibbs(t, pi, 3, num_samples=300, burn_in=100, generator=0)),
    ):
        rows.append((name, lambda fn=fn: fn(tokens), loop(fn)))
    for name, vec, lp in rows:
        # alternating rounds (vectorised, loop, vectorised, ...); medians of each
        times = interleaved_medians({"vec": vec, "loop": lp}, args.estimator_rounds, torch.device("cpu"), warmup=1)
        tv, tl = times["vec"], times["loop"] * b / n_loop
        print(f"  {name:<46}{tv:>15.3f}{tl:>11.2f}{tl / tv:>9.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--loop-prompts", type=int, default=100)
    parser.add_argument("--estimator-rounds", type=int, default=5, help="alternating rounds per estimator row")
    parser.add_argument("--skip-models", action="store_true")
    parser.add_argument("--skip-estimators", action="store_true")
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile rows")
    args = parser.parse_args()
    device = torch.device(args.device)
    peak = matmul_peak(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; measured fp32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    if not args.skip_models:
        bench_models(args, device, peak)
        after = matmul_peak(device)
        if after > 1.05 * peak:
            print(f"  (the matmul peak measured after the models is {after / 1e9:.1f} GFLOP/s: the fractions above "
                  f"are {peak / after:.2f}x too high)")
    if not args.skip_estimators:
        bench_estimators(args)


if __name__ == "__main__":
    main()
