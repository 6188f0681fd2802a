"""The ``markov`` task family: in-context learning of random Markov chains, the testbed of
statistical induction heads (Edelman et al. 2024).

Each sequence draws its own transition matrix ``P``, every row from Dirichlet(α) over the ``k =
vocab_size`` states, starts from ``P``'s stationary distribution (``start = stationary``, the
testbed's) or uniformly (``start = uniform``), and runs the chain.  A predictor must infer ``P``
from the prefix: the next token after a prefix ending in state ``a`` is ``P[a]``.

Predictors (keys as named here), each on the prefix contract ``predict(tokens (B, T), task,
lengths) -> (B, P, k)``:

- ``uniform``: ``1/k``;
- ``unigram``: the in-context unigram posterior predictive under Dirichlet(α),
  ``(n_b + α) / (L + k α)`` with ``n_b`` the count of state ``b`` in the prefix;
- ``bigram``: the in-context bigram posterior predictive under Dirichlet(α) rows,
  ``(n_{ab} + α) / (n_{a·} + k α)`` with ``a`` the prefix's last state and ``n_{ab}`` its
  transitions ``a → b``.  It is the exact posterior predictive, the Bayes-optimal predictor, when
  the first state carries no evidence about ``P`` (``start = uniform``).  Under the stationary
  start the first state is one more observation, of ``P``'s stationary distribution, which the
  bigram ignores: the tests measure the difference by quadrature (k = 2), largest on short prefixes
  and shrinking as the transitions pile up.

``true`` (the chain's own row ``P[a]``) is the floor ``icmix baselines`` adds for every sequence
family; the family's evaluation scores KL(true ‖ predicted).

Training (``MarkovObjective``) also logs, at every evaluation, each attention head's
previous-token and induction score (``icmix.interp.scores``) on the first ``HEAD_SEQUENCES``
chains of the run's evaluation batch, as ``L{layer}H{head}_previous_token`` and
``L{layer}H{head}_induction`` in ``metrics.jsonl``: the heads' course over training, which the
plateaus of the loss follow, kept with the run (and shipped with it in the zoo) without keeping its
checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from icmix._checks import check_positive, check_positive_int, prefix_lengths
from icmix.families.base import NextTokenObjective, SequenceFamily, register_family
from icmix.predictors import Key
from icmix.random import categorical, dirichlet

STARTS = ("stationary", "uniform")
UNIFORM, UNIGRAM, BIGRAM = Key("uniform"), Key("unigram"), Key("bigram")
HEAD_SEQUENCES = 64  # chains of the evaluation batch the heads' scores are measured on


@dataclass(frozen=True)
class MarkovSpec:
    """A ``markov`` task: ``vocab_size`` states, rows of ``P`` from Dirichlet(``alpha``),
    sequences of ``length`` input tokens (``length + 1`` are drawn in training) from ``start``."""

    kind: str = "markov"
    vocab_size: int = 3  # k, the states
    length: int = 100  # T, input tokens of a training sequence; the model's max_length
    alpha: float = 1.0  # Dirichlet concentration of each row of P
    start: str = "stationary"  # the first state: from P's stationary distribution, or uniform

    def __post_init__(self):
        if check_positive_int("task.vocab_size", self.vocab_size) < 2:
            raise ValueError(f"task.vocab_size must be at least 2, got {self.vocab_size}")
        check_positive_int("task.length", self.length)
        check_positive("task.alpha", self.alpha)
        if self.start not in STARTS:
            raise ValueError(f"task.start must be one of {', '.join(STARTS)}, got {self.start!r}")

    def model_fields(self) -> dict:
        """The model config fields the task sets: ``vocab_size`` and ``max_length``."""
        return {"vocab_size": self.vocab_size, "max_length": self.length}


@dataclass(frozen=True)
class MarkovTask:
    """The prior over chains: ``vocab_size`` states, Dirichlet(``alpha``) rows, and the start."""

    vocab_size: int
    alpha: float = 1.0
    start: str = "stationary"


def stationary(P: Tensor, squarings: int = 64) -> Tensor:
    """``(B, k)``: a stationary distribution of each ``(B, k, k)`` row-stochastic ``P``, by repeated
    squaring of the lazy chain ``(P + I) / 2`` (the same ``π``, and aperiodic, so that a periodic
    ``P`` converges too): its ``2^64``-th power, rows renormalised after each product, then the mean
    of its rows.

    For an irreducible chain every row of the power is ``π``.  A chain that is nearly reducible in
    floating point (small ``alpha``: rows whose entries underflow) may not mix within ``2^64``
    steps; the rows are then its classes' own stationary distributions, and their mean is
    stationary up to the underflowed transition probabilities.  (A linear solve of ``π (P − I) =
    0`` fails there: it returned uniform ``π`` for chains with a transient state.)"""
    m = (P + torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)) / 2  # lazy: the same π, and aperiodic
    for _ in range(squarings):
        m = m @ m
        m = m / m.sum(-1, keepdim=True)
    pi = m.mean(1)
    return pi / pi.sum(-1, keepdim=True)


def sample_chains(task: MarkovTask, n: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``n`` sequences of ``length`` states and the transition matrix each was drawn with:
    ``(tokens (n, length) int64, P (n, k, k) float64)``."""
    n, length = check_positive_int("n", n), check_positive_int("length", length)
    k, dev = task.vocab_size, generator.device  # sampled where the generator lives
    P = dirichlet(torch.full((n, k, k), float(task.alpha), dtype=torch.float64, device=dev), generator)
    first = stationary(P) if task.start == "stationary" else torch.full((n, k), 1 / k, dtype=torch.float64, device=dev)
    tokens = torch.empty(n, length, dtype=torch.int64, device=dev)
    tokens[:, 0] = categorical(first, generator)
    rows = torch.arange(n, device=dev)
    for t in range(1, length):
        tokens[:, t] = categorical(P[rows, tokens[:, t - 1]], generator)
    return tokens, P


def _lengths(tokens: Tensor, lengths: Sequence[int]) -> Tensor:
    return prefix_lengths(lengths, tokens.shape[1])


class Uniform:
    """``1/k`` for every next state."""

    key, name = UNIFORM, "uniform"

    def predict(self, tokens: Tensor, task: MarkovTask, lengths: Sequence[int]) -> Tensor:
        """``(B, P, k)`` of ``1/k``."""
        lengths = _lengths(tokens, lengths)
        return torch.full((tokens.shape[0], len(lengths), task.vocab_size), 1 / task.vocab_size, dtype=torch.float64)


class Unigram:
    """The unigram posterior predictive under Dirichlet(α): ``(n_b + α) / (L + k α)``."""

    key, name = UNIGRAM, "unigram (Dirichlet posterior)"

    def predict(self, tokens: Tensor, task: MarkovTask, lengths: Sequence[int]) -> Tensor:
        """``(B, P, k)``: the counts of each state in each prefix, smoothed by ``alpha``."""
        lengths = _lengths(tokens, lengths)
        counts = torch.nn.functional.one_hot(tokens, task.vocab_size).double().cumsum(1)[:, lengths - 1]
        return (counts + task.alpha) / (lengths[None, :, None].double() + task.vocab_size * task.alpha)


class Bigram:
    """The bigram posterior predictive under Dirichlet(α) rows: ``(n_{ab} + α) / (n_{a·} + k α)``
    with ``a`` the prefix's last state."""

    key, name = BIGRAM, "bigram (Dirichlet posterior)"

    def predict(self, tokens: Tensor, task: MarkovTask, lengths: Sequence[int]) -> Tensor:
        """``(B, P, k)``: the transitions out of each prefix's last state within the prefix, smoothed."""
        lengths = _lengths(tokens, lengths)
        b, t = tokens.shape
        last = tokens[:, lengths - 1]  # (B, P)
        inside = torch.arange(t - 1)[None, :] < (lengths - 1)[:, None]  # (P, T-1): transition i -> i+1 in the prefix
        from_last = (tokens[:, None, :-1] == last[..., None]) & inside[None]  # (B, P, T-1)
        nxt = torch.nn.functional.one_hot(tokens[:, 1:], task.vocab_size).double()  # (B, T-1, k)
        counts = from_last.double() @ nxt  # (B, P, k)
        return (counts + task.alpha) / (counts.sum(-1, keepdim=True) + task.vocab_size * task.alpha)


def head_metric(layer: int, head: int, score: str) -> str:
    """The ``metrics.jsonl`` key of one head's score (``previous_token`` or ``induction``)."""
    return f"L{layer}H{head}_{score}"


class MarkovObjective(NextTokenObjective):
    """Next-token prediction on Markov chains; ``evaluate`` adds each head's previous-token and
    induction score on the evaluation batch's first ``HEAD_SEQUENCES`` chains (``head_metric``),
    where they can be scored: chains of 2 states or more in which some state recurs."""

    def evaluate(self, model, batch: dict, device) -> dict[str, float]:
        """``NextTokenObjective.evaluate``'s metrics and every head's two scores."""
        from icmix.interp.scores import attention_patterns, induction_score, previous_token_score

        row = super().evaluate(model, batch, device)
        tokens = batch["inputs"][:HEAD_SEQUENCES].to(device)
        t = tokens.shape[1]
        earlier = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril(-2)  # [i, j]: j <= i - 2
        # the induction score needs a query whose state occurred before its previous position
        if not ((tokens[:, :, None] == tokens[:, None, :]) & earlier).any():  # (chains too short, or too varied)
            return row
        with torch.no_grad():
            patterns = attention_patterns(model, tokens)
        for layer, p in enumerate(patterns):
            for name, score in (("previous_token", previous_token_score(p)), ("induction", induction_score(p, tokens))):
                row.update({head_metric(layer, h, name): float(v) for h, v in enumerate(score.tolist())})
        return row


class MarkovFamily(SequenceFamily):
    """Random Markov chains learned in context (Edelman et al. 2024), by a GPT (``gpt``) trained on
    next-token prediction; the bigram posterior predictive is its Bayes predictor."""

    kind = "markov"
    spec = MarkovSpec
    models = ("gpt",)

    def build(self, spec: MarkovSpec) -> MarkovTask:
        """The ``MarkovTask`` (the prior over chains) of the spec."""
        return MarkovTask(spec.vocab_size, spec.alpha, spec.start)

    def sample(self, task: MarkovTask, n: int, length: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(tokens (n, length), P (n, k, k))`` (``sample_chains``)."""
        return sample_chains(task, n, length, generator)

    def true_predictive(self, task: MarkovTask, tokens: Tensor, P: Tensor, lengths: Sequence[int]) -> Tensor:
        """``(B, P, k)``: the chain's own row ``P[a]`` of each prefix's last state ``a``."""
        lengths = _lengths(tokens, lengths)
        last = tokens[:, lengths - 1]  # (B, P)
        return torch.gather(P, 1, last[..., None].expand(-1, -1, task.vocab_size))

    def objective(self, task: MarkovTask, cfg) -> MarkovObjective:
        """Next-token prediction, evaluated with the heads' scores too (``MarkovObjective``)."""
        return MarkovObjective(self, task, cfg)

    def bayes_predictor(self, task: MarkovTask):
        """The bigram posterior predictive (exact Bayes under the uniform start; see the module docstring)."""
        return Bigram()

    def predictors(self, task: MarkovTask) -> list:
        """``uniform``, ``unigram`` and ``bigram``."""
        return [Uniform(), Unigram(), Bigram()]

    def run_name(self, cfg) -> str:
        """``markov-k{vocab_size}-T{length}-{loss}`` (``-uniform-start`` for the uniform start)."""
        t = cfg.task
        return f"markov-k{t.vocab_size}-T{t.length}-{cfg.loss}" + ("-uniform-start" if t.start == "uniform" else "")


register_family(MarkovFamily())
