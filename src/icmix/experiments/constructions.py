"""The two hand-built transformers against their algorithms, as report entries.

- ``mtd-construction``: the 3-layer disentangled transformer of D'Angelo & Flammarion
  (``construct.mirror_descent_transformer``) against one step of mirror descent, in float64
  on fresh sequences, per seed and order (``construct.check.mtd_differential_check``): max
  error of the prediction, of layer 1's attention against the responsibilities and of
  layer 2's running mean.  Figure: the construction's attention maps for one sequence.
- ``mlr-construction``: the posterior-mean transformer (``construct.posterior_mean_transformer``,
  GELU MLPs) against ``posterior_mean`` on fresh prompts, unshifted and under the covariate and
  weight scalings (``construct.check.posterior_mean_check``), per seed and m.  Figure: the
  circuit (which block reads and writes which stream block) and the error against the GELU
  squaring knob ``eps``.

Neither trains anything; both take seconds.  The claims table reads their CSVs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch

from icmix._checks import check_order, check_positive, check_positive_int
from icmix.construct import mirror_descent_transformer, posterior_mean_transformer
from icmix.construct.check import knob_curve, mtd_differential_check, posterior_mean_check
from icmix.experiments.common import family_task
from icmix.experiments.figure import Figure, Result
from icmix.figures.attention import draw_attention_maps
from icmix.random import Stream, stream
from icmix.experiments.claims import Claim, read, verdict


@dataclass(frozen=True)
class MTDConfig:
    """Settings of ``mtd-construction``: ``vocab_size`` Q and the ``orders`` M checked; ``beta``: the construction's
    step-size scale (``eta = beta / (M N)``); ``n_sequences`` fresh sequences of ``length`` tokens per seed and
    order."""

    vocab_size: int = 10  # Q, the token values (>= 2)
    orders: tuple[int, ...] = (3, 5)  # the MTD orders M checked, one construction each
    beta: float = 4.0  # step-size scale (> 0) of the construction and of the MD step it must equal: eta = beta / (M N)
    length: int = 128  # tokens of each check sequence (> every order); the drawn attention shows at most 48
    n_sequences: int = 64  # fresh sequences per seed and order in the differential check
    seeds: tuple[int, ...] = (0, 1)  # seed s draws the transition matrix and the check sequences

    def __post_init__(self):
        check_positive_int("vocab_size", self.vocab_size, minimum=2)
        for m in self.orders:
            check_order(m, self.length)
        check_positive("beta", self.beta)
        check_positive_int("n_sequences", self.n_sequences)
        if not self.seeds or not self.orders:
            raise ValueError("seeds and orders must be non-empty")


@dataclass(frozen=True)
class MLRConfig:
    """Settings of ``mlr-construction``: ``dim`` d and the numbers of ``components`` m checked; ``noise``: the sigma
    the posterior mean assumes; ``n_prompts`` fresh prompts of ``n_points`` pairs per check; ``eps``: the GELU
    squaring knob of the construction."""

    dim: int = 8  # d, the covariate dimension
    components: tuple[int, ...] = (5, 20)  # the numbers m of components checked, one construction each
    noise: float = 1.0  # sigma > 0: the task's noise level and the one the posterior mean and construction assume
    n_points: int = 17  # (x, y) pairs per prompt, and the construction's maximum
    n_prompts: int = 256  # fresh prompts per seed, m and shift (unshifted, covariates x3, weights x3)
    eps: float = 1e-5  # the GELU MLPs' input scale (> 0): a square's relative error is about (eps r)^2 / 6
    seeds: tuple[int, ...] = (0, 1)  # seed s draws the components and the check prompts

    def __post_init__(self):
        for name in ("dim", "n_points", "n_prompts"):
            check_positive_int(name, getattr(self, name))
        check_positive("noise", self.noise)
        check_positive("eps", self.eps)
        if not self.seeds or not self.components:
            raise ValueError("seeds and components must be non-empty")


SHIFTS = {"unshifted": {}, "covariates x3": {"covariate_scale": 3.0}, "weights x3": {"weight_scale": 3.0}}


# --- the checks and pictures shared by the report entries and `icmix construct` ----------------

def attention_panel(model, task, length: int, generator: torch.Generator, title: str):
    """The constructed MTD model's attention maps on one fresh sequence of ``length`` tokens."""
    tokens, _ = task.sample(1, length, generator=generator)
    with torch.no_grad():
        _, patterns = model(tokens, return_attention=True)
    return draw_attention_maps([a[0] for a in patterns], title)


def shifted_checks(model, task, noise: float, n_prompts: int, n_points: int, generator):
    """``(label, xs, ys, posterior_mean_check report)`` on fresh prompts, unshifted and under each
    of ``SHIFTS``; ``generator()`` gives each its generator (the same prompts' noise for all)."""
    for label, shift in SHIFTS.items():
        xs, ys = task.sample(n_prompts, n_points, generator=generator(), **shift)
        yield label, xs, ys, posterior_mean_check(model, task.components, noise, xs, ys)


def circuit_and_knob(model, title: str, knob: pd.DataFrame | None = None, eps: float | None = None):
    """The posterior-mean construction's circuit, beside its error against the GELU knob ``eps``
    (``knob``: ``knob_curve`` rows, with ``n_components``) where given."""
    from icmix.figures.circuit import draw_circuit

    circuit = draw_circuit(model, title)
    if knob is None:
        return circuit
    circuit.canvas.draw()
    fig, (ax_img, ax_knob) = plt.subplots(1, 2, figsize=(15, 4.5), width_ratios=(2.2, 1))
    ax_img.imshow(circuit.canvas.buffer_rgba())
    ax_img.axis("off")
    plt.close(circuit)
    for m, part in knob.groupby("n_components"):
        ax_knob.loglog(part.eps, part.relative_error, "o-", label=f"m = {m}")
    ax_knob.axvline(eps, color="grey", ls=":", label=f"default eps = {eps:g}")
    ax_knob.set(xlabel="GELU squaring scale eps", ylabel="max relative error vs posterior mean",
                title="error against the knob (weights x3 prompts)")
    ax_knob.legend(fontsize=8)
    fig.tight_layout()
    return fig


class MTDConstruction(Figure):
    """``mtd-construction``: the 3-layer mirror-descent construction checked against one MD step (nothing trained)."""

    name = "mtd-construction"
    Config = MTDConfig
    presets = {"quick": MTDConfig(), "cpu": MTDConfig(length=256, n_sequences=256),
               "paper": MTDConfig(length=256, n_sequences=1000, seeds=(0, 1, 2))}
    demo = dict(length=128, n_sequences=64)  # the quick preset's

    def compute(self, cfg: MTDConfig, out: Path | None = None, progress: bool = True) -> Result:
        """One row per seed and order: the max errors of ``mtd_differential_check`` (the prediction, layer 1 against
        the responsibilities, layer 2 against their running mean) on fresh sequences, in float64."""
        rows = []
        for seed in cfg.seeds:
            for m in cfg.orders:
                task = family_task("mtd", vocab_size=cfg.vocab_size, order=m, seed=seed)
                model = mirror_descent_transformer(task.transition, m, cfg.beta, cfg.length)
                r = mtd_differential_check(model, task, cfg.beta, cfg.n_sequences, cfg.length,
                                           generator=stream(seed, Stream.CHECK))
                rows.append(dict(seed=seed, order=m, **r))
        return Result(pd.DataFrame(rows))

    def draw(self, result: Result, cfg: MTDConfig):
        """The construction's attention maps on one fresh sequence of at most 48 tokens (first order and seed),
        titled with the worst error in the table."""
        table = result.table
        m, seed = cfg.orders[0], cfg.seeds[0]
        task = family_task("mtd", vocab_size=cfg.vocab_size, order=m, seed=seed)
        model = mirror_descent_transformer(task.transition, m, cfg.beta, cfg.length)
        return attention_panel(model, task, min(48, cfg.length), stream(seed, Stream.ATTENTION_PANEL),
                               f"Constructed 3-layer transformer = one MD step (q={cfg.vocab_size}, m={m}, "
                               f"β={cfg.beta:g}); worst error over {len(table)} checks: {table.max_error.max():.1e}")

    def report(self, result: Result, cfg: MTDConfig) -> str:
        """The table of max errors against one-step mirror descent, as Markdown."""
        return ("Construction vs one-step mirror descent (float64, fresh sequences of length "
                f"{cfg.length})\n\n" + result.table.to_markdown(index=False, floatfmt=("g", "g", ".2e", ".2e", ".2e")))


class MLRConstruction(Figure):
    """``mlr-construction``: the posterior-mean transformer (GELU MLPs) checked against ``posterior_mean`` (nothing
    trained)."""

    name = "mlr-construction"
    Config = MLRConfig
    presets = {"quick": MLRConfig(), "cpu": MLRConfig(n_prompts=1024),
               "paper": MLRConfig(dim=20, n_points=41, n_prompts=1024, seeds=(0, 1, 2))}
    demo = dict(n_prompts=256)  # the quick preset's

    def compute(self, cfg: MLRConfig, out: Path | None = None, progress: bool = True) -> Result:
        """One row of ``posterior_mean_check`` errors per seed, m and prompt shift (``SHIFTS``); the ``knob`` extra
        table: the error against the GELU knob ``eps`` on 64 weight-scaled prompts of the first seed, per m."""
        rows, knobs = [], []
        for seed in cfg.seeds:
            for m in cfg.components:
                task = family_task("mixlinreg", dim=cfg.dim, n_components=m, noise=cfg.noise, seed=seed)
                model = posterior_mean_transformer(task.components, cfg.noise, cfg.n_points, mlp="gelu", eps=cfg.eps)
                checks = shifted_checks(model, task, cfg.noise, cfg.n_prompts, cfg.n_points,
                                        lambda: stream(seed, Stream.MLR_CHECK))
                for label, xs, ys, report in checks:
                    rows.append(dict(seed=seed, n_components=m, prompts=label, **report))
                    if label == "weights x3" and seed == cfg.seeds[0]:  # the knob curve on the hardest prompts
                        knobs.append(knob_curve(task.components, cfg.noise, xs[:64], ys[:64]).assign(n_components=m))
        return Result(pd.DataFrame(rows), {"knob": pd.concat(knobs, ignore_index=True)})

    def draw(self, result: Result, cfg: MLRConfig):
        """The first m's construction (first seed) as a circuit, beside its error against the GELU knob ``eps``."""
        task = family_task("mixlinreg", dim=cfg.dim, n_components=cfg.components[0], noise=cfg.noise,
                           seed=cfg.seeds[0])
        model = posterior_mean_transformer(task.components, cfg.noise, cfg.n_points, mlp="gelu", eps=cfg.eps)
        return circuit_and_knob(model, f"Posterior-mean transformer (d={cfg.dim}, m={cfg.components[0]})",
                                result.extra["knob"], cfg.eps)

    def report(self, result: Result, cfg: MLRConfig) -> str:
        """The table of errors against ``posterior_mean``, as Markdown."""
        return ("Posterior-mean construction vs `posterior_mean` (float64, GELU MLPs, eps = "
                f"{cfg.eps:g})\n\n" + result.table.to_markdown(index=False, floatfmt=".2e"))


mtd_construction = MTDConstruction()
mlr_construction = MLRConstruction()


# --- claims (``icmix.experiments.claims``) ------------------------------------------------

@mtd_construction.claim("MTD",
                        "The hand-built 3-layer disentangled transformer computes exactly one step of mirror descent",
                        "max |construction − one-step MD| over fresh sequences, orders and seeds (float64); holds if < 1e-10")
def construction_md(c: Claim, out: Path, cfg) -> Claim:
    """The worst error of the MTD construction against one MD step, over every check of ``mtd-construction``."""
    t = read(out, "mtd-construction")
    worst = t.groupby("seed")["max_error"].max()
    c.mean, c.value = float(worst.max()), f"{worst.max():.1e} (worst of {len(t)} checks, {len(worst)} seeds)"
    c.verdict = verdict(c.mean < 1e-10)
    return c


@mlr_construction.claim("MLR",
                        "A transformer can compute the posterior mean exactly (the paper's construction, built here)",
                        "max relative error of the GELU construction vs `posterior_mean`, shifted prompts included; holds if < 1e-4")
def construction_pm(c: Claim, out: Path, cfg) -> Claim:
    """The worst relative error of the posterior-mean construction, over every check of ``mlr-construction``."""
    t = read(out, "mlr-construction")
    c.mean = float(t.relative_error.max())
    c.value = f"{c.mean:.1e} (worst of {len(t)} checks, {t.seed.nunique()} seeds)"
    c.verdict = verdict(c.mean < 1e-4)
    return c
