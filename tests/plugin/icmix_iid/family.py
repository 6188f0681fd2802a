"""The ``iid`` task family: each sequence draws its token distribution p ~ Dirichlet(α) and then
its tokens i.i.d. from p.  The Bayes-optimal next-token predictor is the posterior mean of p,
``(count(j) + α) / (L + Q α)`` after a prefix of length L (Laplace's rule for α = 1); the
Krichevsky–Trofimov estimator (add ½) is the plugin's other predictor."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from icmix.families import SequenceFamily, register_family
from icmix.predictors import Key
from icmix.random import categorical, dirichlet

BAYES, KT, UNIFORM = Key("bayes", "exact"), Key("add-constant", "kt"), Key("uniform")


@dataclass(frozen=True)
class IIDSpec:
    kind: str = "iid"
    vocab_size: int = 3
    alpha: float = 1.0
    seed: int = 0
    length: int = 16

    def model_fields(self) -> dict:
        return {"vocab_size": self.vocab_size, "max_length": self.length}


@dataclass(frozen=True)
class IIDTask:
    vocab_size: int
    alpha: float


class AddConstant:
    """``(count(j) + c) / (L + Q c)`` after each prefix: the posterior mean under Dirichlet(c)."""

    def __init__(self, key: Key, name: str, constant: float):
        self.key, self.name, self.constant = key, name, constant

    def predict(self, tokens, task, lengths):  # (B, T) -> (B, P, Q), each prefix on its own
        counts = torch.nn.functional.one_hot(tokens, task.vocab_size).double().cumsum(1)  # (B, T, Q)
        at = counts[:, torch.tensor(list(lengths)) - 1]  # the counts of each prefix
        c = self.constant
        return (at + c) / (at.sum(-1, keepdim=True) + task.vocab_size * c)


class Uniform:
    key, name = UNIFORM, "uniform"

    def predict(self, tokens, task, lengths):
        return torch.full((len(tokens), len(lengths), task.vocab_size), 1 / task.vocab_size, dtype=torch.float64)


class IIDFamily(SequenceFamily):
    kind, spec, models = "iid", IIDSpec, ("gpt",)

    def build(self, spec: IIDSpec) -> IIDTask:
        return IIDTask(spec.vocab_size, spec.alpha)

    def sample(self, task: IIDTask, n: int, length: int, generator):
        p = dirichlet(torch.full((n, task.vocab_size), task.alpha, dtype=torch.float64), generator)
        tokens = categorical(p[:, None, :].expand(n, length, task.vocab_size), generator)
        return tokens, p

    def true_predictive(self, task: IIDTask, tokens, p, lengths):
        return p[:, None, :].expand(-1, len(lengths), -1)

    def bayes_predictor(self, task: IIDTask):
        return AddConstant(BAYES, "Bayes (Dirichlet posterior mean)", task.alpha)

    def predictors(self, task: IIDTask) -> list:
        return [self.bayes_predictor(task), AddConstant(KT, "Krichevsky–Trofimov (add ½)", 0.5), Uniform()]

    def run_name(self, cfg) -> str:
        return f"q{cfg.task.vocab_size}-T{cfg.task.length}-{cfg.loss}"


@dataclass(frozen=True)
class NoBayesSpec(IIDSpec):
    kind: str = "iid-nobayes"


class NoBayesIIDFamily(IIDFamily):
    """The same sequences, from a family that names no Bayes-optimal predictor: its runs'
    convergence is ``unknown``."""

    kind, spec = "iid-nobayes", NoBayesSpec

    def bayes_predictor(self, task):
        return None


register_family(IIDFamily())
register_family(NoBayesIIDFamily())
