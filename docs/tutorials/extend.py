# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Add a task family, a figure and a claim from outside `src/`
#
# Everything a researcher adds plugs in from outside the package: a task family
# (`icmix.families`), its predictors, a figure (`icmix.experiments.Figure`) and the claims the
# figure measures.  Training, evaluation, run naming, `icmix reproduce` and the report ask the
# registries; none of them branches on a task kind or a figure's name.  Every predictor has a stable
# `key` (`icmix.predictors.Key`: what it is, its steps, its tuning, a trained model's kind and
# depth) next to its display `name`; result tables carry the key's fields as columns, and figures
# and claims select by them, never by the label.
#
# This tutorial writes one module, `chain_example.py`, in its own folder, and runs it with
# `icmix --plugin`.  It trains three small GPTs (400 steps each, under a minute on 2 cores).
#
# ## A task family
#
# First-order Markov chains whose transition matrix is drawn per sequence (rows ~ Dirichlet(α)).
# A family names its Bayes-optimal predictor (here the posterior-mean transition probabilities from
# the prefix's counts): a run's convergence is judged by its excess over it, and is `unknown` for a
# family that has none.  A `SequenceFamily` gives `sample` and `true_predictive` and gets a
# next-token training objective and a KL evaluation for free.  The cell writes the module's first
# half to disk.

# %%
FAMILY = '''"""chain_example.py: Markov chains with a transition matrix per sequence, a figure and its claim."""
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch

from icmix.experiments import Figure, Result, register_figure
from icmix.experiments.claims import Claim, by_key, measured, read, select, trained_key
from icmix.experiments.common import trained_runs
from icmix.families import SequenceFamily, get_family, register_family
from icmix.predictors import Key
from icmix.random import categorical, dirichlet
from icmix.train import TrainConfig, TrainedPredictor

BAYES, UNIFORM = Key("bayes", "exact"), Key("uniform")


@dataclass(frozen=True)
class ChainSpec:  # the `task:` section of a training config
    kind: str = "chain"
    vocab_size: int = 4
    alpha: float = 1.0
    seed: int = 0
    length: int = 24  # training sequence length

    def model_fields(self):  # what the task sets in the model's config
        return {"vocab_size": self.vocab_size, "max_length": self.length}


@dataclass(frozen=True)
class ChainTask:
    vocab_size: int
    alpha: float

    def sample(self, n, length, generator):
        """tokens (n, length) and each sequence's transition matrix (n, Q, Q)."""
        q = self.vocab_size
        P = dirichlet(torch.full((n, q, q), self.alpha, dtype=torch.float64), generator)
        tokens = torch.empty(n, length, dtype=torch.long)
        tokens[:, 0] = torch.randint(q, (n,), generator=generator)
        for t in range(1, length):
            tokens[:, t] = categorical(P[torch.arange(n), tokens[:, t - 1]], generator)
        return tokens, P


class DirichletBayes:
    """The posterior mean of the next token: (count(a -> j) + α) / (count(a) + Q α), a = last token."""

    key, name = BAYES, "Bayes (Dirichlet counts)"

    def predict(self, tokens, task, lengths):  # (B, T) -> (B, P, Q), prefix by prefix
        q, rows = task.vocab_size, torch.arange(tokens.shape[0])
        out = []
        for L in lengths:
            x = tokens[:, :L]
            counts = torch.zeros(len(x), q, q, dtype=torch.float64)
            counts.index_put_((rows[:, None].expand_as(x[:, 1:]), x[:, :-1], x[:, 1:]),
                              torch.ones(x[:, 1:].shape, dtype=torch.float64), accumulate=True)
            c = counts[rows, x[:, -1]]
            out.append((c + task.alpha) / (c.sum(-1, keepdim=True) + q * task.alpha))
        return torch.stack(out, 1)


class Uniform:
    key, name = UNIFORM, "uniform"

    def predict(self, tokens, task, lengths):
        return torch.full((len(tokens), len(lengths), task.vocab_size), 1 / task.vocab_size, dtype=torch.float64)


class ChainFamily(SequenceFamily):
    kind, spec, models = "chain", ChainSpec, ("gpt",)

    def build(self, spec):
        return ChainTask(spec.vocab_size, spec.alpha)

    def sample(self, task, n, length, generator):
        return task.sample(n, length, generator)

    def true_predictive(self, task, tokens, P, lengths):  # the row of P at each prefix's last token
        rows = torch.arange(len(tokens))
        return torch.stack([P[rows, tokens[:, L - 1]] for L in lengths], 1)

    def bayes_predictor(self, task):
        return DirichletBayes()

    def predictors(self, task):
        return [DirichletBayes(), Uniform()]

    def run_name(self, cfg):
        return f"q{cfg.task.vocab_size}-T{cfg.task.length}-{cfg.loss}"


register_family(ChainFamily())
'''

# %% [markdown]
# ## A figure and its claim
#
# In the same module.  A figure has a frozen `Config`, the presets it has (here only `quick`), the
# training `runs` it needs (trained once under `OUT/runs`, shared with every figure that asks for
# the same run), `compute -> Result` and `draw`.  A claim is declared by the figure that measures
# it: a function that reads the figure's CSV with the public helpers of `icmix.experiments.claims`
# and fills in its value and verdict (`measured`: the mean over seeds, its 95 % interval, and the
# verdict that interval decides).

# %%
FIGURE = '''

@dataclass(frozen=True)
class ChainConfig:
    vocab_size: int = 4
    lengths: tuple[int, ...] = (4, 8, 16, 24)
    steps: int = 400
    n_sequences: int = 500
    seeds: tuple[int, ...] = (0, 1, 2)

    def runs(self):  # {key: TrainConfig}: a small GPT per seed
        return {seed: TrainConfig.from_dict({
            "task": {"kind": "chain", "vocab_size": self.vocab_size, "length": max(self.lengths)},
            "model": {"kind": "gpt", "n_layers": 2, "n_heads": 2, "d_model": 32},
            "steps": self.steps, "batch_size": 64, "loss": "ce", "optim": {"lr": 3e-3}, "eval_every": 100,
            "seed": seed}) for seed in self.seeds}


class ChainFigure(Figure):
    name, Config, presets = "chain", ChainConfig, {"quick": ChainConfig()}

    def runs(self, cfg):
        return cfg.runs()

    def compute(self, cfg, out, progress=True):
        family, tables = get_family("chain"), []
        for seed, run in trained_runs(out, cfg.runs(), progress=progress).items():
            task = family.build(family.spec(vocab_size=cfg.vocab_size))
            predictors = [*family.predictors(task), TrainedPredictor.from_run(run, "trained GPT")]
            table = family.evaluate(task, predictors, cfg.lengths, cfg.n_sequences, seed=seed)
            tables.append(table.assign(seed=seed))
        return Result(pd.concat(tables, ignore_index=True))

    def draw(self, result, cfg):
        fig, ax = plt.subplots()
        for label, rows in result.table.groupby("estimator"):
            ax.plot(*zip(*rows.groupby("length")["kl_mean"].mean().items()), marker="o", label=label)
        ax.set(xlabel="prefix length", ylabel="KL(true ‖ predicted)")
        ax.legend()
        return fig


FIGURE = ChainFigure()
register_figure(FIGURE)


@FIGURE.claim("Chains", "A small GPT learns Markov chains in context, between uniform and Bayes",
              "KL(trained GPT) at the longest length, as a fraction of the way from uniform (1) to Bayes (0); "
              "holds if < 1", trained=lambda tc, cfg: True)
def gpt_learns_chains(c: Claim, out: Path, cfg) -> Claim:
    t = select(read(out, "chain"), "chain", length=max(cfg.lengths))
    gpt = trained_key(t, "chain")
    kl = by_key(t, "seed", "kl_mean", [gpt, BAYES, UNIFORM], "chain")
    fraction = (kl[gpt] - kl[BAYES.id]) / (kl[UNIFORM.id] - kl[BAYES.id])  # per seed
    return measured(c, fraction, 1, "<")  # holds if its 95 % interval over seeds lies below 1
'''
from pathlib import Path

Path("chain_example.py").write_text(FAMILY + FIGURE)
print(f"chain_example.py: {len((FAMILY + FIGURE).splitlines())} lines")

# %% [markdown]
# ## Run it
#
# Without installing anything, from the folder that holds `chain_example.py`: `--plugin` loads a
# module for one command, as `pytest -p` does.  `--threads 1` trains each of these small models on
# one core, the fastest for them, and leaves the others to whatever else the machine runs.

# %%
import subprocess
import sys

command = ["--plugin", "chain_example", "reproduce", "chain", "--preset", "quick", "--out", "results/chain",
           "--threads", "1", "--no-progress"]
print("icmix " + " ".join(command))
done = subprocess.run([sys.executable, "-m", "icmix", *command], capture_output=True, text=True, check=True)
print(done.stdout)

# %%
from IPython.display import Image

Image("results/chain/chain.png", width=560)

# %% [markdown]
# After 400 steps the GPT sits between the uniform predictor and Bayes (KL about 0.26 against 0.13 and
# 0.31 at length 24), so the claim's fraction of the way from uniform to Bayes is about 0.7, and its
# interval over the three seeds lies below 1: the claim holds.  It approaches Bayes with longer training.

# %%
import pandas as pd

claim = pd.read_csv("results/chain/claims.csv").iloc[0]
print(claim.measured, "->", claim.verdict)
kl = pd.read_csv("results/chain/chain.csv").query("length == 24").groupby("estimator").kl_mean.mean()
print(kl.round(3).to_dict())
assert kl["Bayes (Dirichlet counts)"] < kl["trained GPT"] < kl["uniform"]
assert claim.verdict == "holds"

# %% [markdown]
# The report (`results/chain/report.html`) holds the figure, the claim and the runs table, which says
# whether each run converged against the family's Bayes predictor.
#
# ## In an installed package
#
# Name the modules in your package's `pyproject.toml` instead, and every icmix command (and
# `icmix reproduce all`) finds them:
#
# ```toml
# [project.entry-points."icmix.families"]
# chain = "mypackage.chain_example"
#
# [project.entry-points."icmix.figures"]
# chain = "mypackage.chain_example:FIGURE"
# ```
#
# (`tests/plugin/` in the repository is such a package, installed by `make test`: a family of
# i.i.d. sequences, a predictor, a figure with only a `quick` preset and its claim.)
#
# ## A new predictor for an existing family
#
# Subclass the family, add to its standard predictors and register it in place of the built-in.
# Every figure that asks the family for its predictors (`mtd-fig3`) then shows it, with no edit to
# a figure.  Here: the plug-in that puts all the weight on the first lag.

# %%
import torch

from icmix import MTDTask
from icmix.evaluate import evaluate_mtd
from icmix.families import get_family, register_family
from icmix.families.mtd import MTDFamily
from icmix.predictors import Key, LagPredictor


def first_lag(tokens, transition, order, lengths):  # lam (B, P, M): all weight on lag 1
    lam = torch.zeros(len(tokens), len(lengths), order, dtype=torch.float64)
    lam[..., 0] = 1.0
    return lam


class MyMTD(MTDFamily):
    def predictors(self, task, **options):
        return [*super().predictors(task, **options), LagPredictor(Key("first-lag"), first_lag, "first lag only")]


register_family(MyMTD(), replace=True)
task = MTDTask(vocab_size=6, order=2, seed=0)
mine = get_family("mtd").predictors(task, md_steps=(1,), include_gibbs=False, include_construction=False)
table = evaluate_mtd(task, mine, lengths=[8, 32], n_sequences=200, n_tune=100, progress=False)
print(table.pivot(index="estimator", columns="length", values="kl_mean").round(4))
