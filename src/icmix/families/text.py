"""Real text as task families (SPEC §3).

- ``text``: next-character prediction on windows of a corpus's training split
  (``icmix.tasks.text``).  There is no true next-token distribution, so training is judged by
  the cross-entropy of the next character (``eval_loss``, nats/char) on a fixed batch of
  training-split windows; the figures and ``icmix baselines text`` score the held-out test split.
- ``mtdg-text``: synthetic MTDg sequences whose per-lag matrices are the skip-bigrams fitted to a
  corpus's training split (``icmix.estimators.mtd.fit.skip_bigrams``); a model trained on it
  and evaluated on the real text is "synthetic to real".
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor

from icmix._checks import check_positive, check_positive_int, prefix_lengths
from icmix.families.base import Objective, TaskFamily, register_family
from icmix.families.mtd import MTDgFamily, MTDgSpec
from icmix.metrics import cross_entropy
from icmix.tasks.mtd import MTDTask
from icmix.tasks.text import PYDOC, TextCorpus

KAPPA = 0.5  # add-kappa smoothing of fitted counts: the baselines', and the default of fitted MTDg and the text figure


@functools.lru_cache(maxsize=8)
def load_corpus(corpus: str, vocab_size: int, test_fraction: float, split_seed: int) -> TextCorpus:
    """``TextCorpus.load``, once per process for each setting."""
    return TextCorpus.load(corpus, vocab_size, test_fraction, split_seed)


@functools.lru_cache(maxsize=8)
def fitted_transitions(corpus: str, vocab_size: int, order: int, kappa: float, test_fraction: float,
                       split_seed: int) -> Tensor:
    """``(M, Q, Q)``: the smoothed lag-g skip-bigrams of the corpus's training split."""
    from icmix.estimators.mtd.fit import skip_bigrams

    return skip_bigrams(load_corpus(corpus, vocab_size, test_fraction, split_seed).train, vocab_size, order, kappa)


@dataclass(frozen=True)
class TextSpec:
    """Windows of ``length`` characters of a corpus (``pydoc`` or a path), ``vocab_size`` symbols."""

    kind: str = "text"  # the family's name in a task: section; must be text here
    # pydoc (the standard library's documentation topics, shipped with Python), or the path of a text file
    # (documents separated by blank lines) or of a directory (each *.txt file one document)
    corpus: str = PYDOC
    vocab_size: int = 32  # q: the q - 1 most frequent characters of the training split, plus one "other" symbol
    length: int = 256  # T, characters of a training window (T + 1 are read for the targets); the model's max_length
    test_fraction: float = 0.2  # in (0, 1): the share of the characters held out, as whole documents, for testing
    split_seed: int = 0  # seeds the permutation of the documents that picks the test split

    def __post_init__(self):
        if self.kind != "text":
            raise ValueError(f"task.kind must be 'text' here, got {self.kind!r}")
        check_positive_int("task.vocab_size", self.vocab_size, minimum=2)
        check_positive_int("task.length", self.length, minimum=2)
        check_positive("task.test_fraction", self.test_fraction)

    def model_fields(self) -> dict:
        """The model config fields the task sets: ``vocab_size`` and ``max_length`` (``length``)."""
        return {"vocab_size": self.vocab_size, "max_length": self.length}

    def corpus_data(self) -> TextCorpus:
        """The corpus, loaded, split and encoded once per process (``load_corpus``)."""
        return load_corpus(self.corpus, self.vocab_size, self.test_fraction, self.split_seed)


class TextObjective(Objective):
    """Cross-entropy (or the Brier score, ``loss: mse``) of the next character at every position
    of training-split windows; evaluation: the same on a fixed batch of training-split windows
    (the test split is left to the figures)."""

    progress_metric = "eval_loss"

    def __init__(self, corpus: TextCorpus, cfg):
        self.corpus, self.cfg = corpus, cfg
        self.mask = torch.ones(cfg.task.length, dtype=torch.bool)

    def batch(self, step: int, size: int, generator: torch.Generator) -> dict:
        """``inputs (B, T)`` and ``targets (B, T)`` (the next character at each position) from
        random training-split windows of ``T + 1`` characters; ``step`` is not used."""
        w = self.corpus.windows("train", size, self.cfg.task.length + 1, generator)
        return {"inputs": w[:, :-1], "targets": w[:, 1:]}

    def eval_batch(self, size: int, generator: torch.Generator) -> dict:
        """A batch as ``batch`` draws it (training-split windows), from the evaluation ``generator``."""
        return self.batch(self.cfg.steps, size, generator)

    def loss(self, model, batch: dict, device: torch.device) -> Tensor:
        """``cfg.loss`` of the model's outputs ``(B, T, Q)`` against the next characters,
        averaged over every position."""
        from icmix.objectives import loss_fn

        return loss_fn(model(batch["inputs"].to(device)).float(), batch["targets"].to(device), self.mask.to(device),
                       self.cfg.loss)

    def evaluate(self, model, batch: dict, device: torch.device) -> dict[str, float]:
        """``eval_loss``: the mean cross-entropy (nats/char) of the next character at every position, the
        outputs read as distributions as ``cfg.loss`` implies (so in nats whichever loss trained)."""
        from icmix.objectives import to_distribution

        with torch.no_grad():
            out = model(batch["inputs"].to(device)).cpu()
        p = to_distribution(out, self.cfg.loss)
        ce = cross_entropy(p, batch["targets"]).mean().item()
        return {"eval_loss": ce}


class Fitted:
    """A baseline of next characters fitted on the corpus's training split, under the prefix
    contract ``predict(tokens (B, T), corpus, lengths (P,)) -> (B, P, Q)``: ``uniform`` (``1/Q``),
    ``unigram`` (the split's add-``KAPPA`` character frequencies) or ``bigram`` (its add-``KAPPA``
    transitions ``pi_1[a, b]`` out of the prefix's last character ``a``)."""

    def __init__(self, name: str, corpus: TextCorpus):
        from icmix.estimators.mtd.fit import skip_bigrams, unigram
        from icmix.predictors import Key

        if name not in ("uniform", "unigram", "bigram"):
            raise ValueError(f"a fitted text baseline is uniform, unigram or bigram, got {name!r}")
        q = corpus.vocab_size
        self.key, self.name = Key(name), f"{name} (training split)" if name != "uniform" else name
        self.table = (torch.full((q,), 1 / q, dtype=torch.float64) if name == "uniform"
                      else unigram(corpus.train, q, KAPPA) if name == "unigram"
                      else skip_bigrams(corpus.train, q, 1, KAPPA)[0])

    def predict(self, tokens: Tensor, corpus: TextCorpus, lengths) -> Tensor:
        """``(B, P, Q)``: the fitted distribution of the character after each prefix."""
        q = self.table.shape[-1]
        if tokens.ndim != 2 or corpus.vocab_size != q:
            raise ValueError(f"expected tokens (B, T) of a corpus of {q} symbols, got {tuple(tokens.shape)} of "
                             f"{corpus.vocab_size}")
        lengths = prefix_lengths(lengths, tokens.shape[1])
        if self.table.dim() == 1:
            return self.table.expand(tokens.shape[0], len(lengths), -1).clone()
        return self.table[tokens[:, lengths - 1]]


class TextFamily(TaskFamily):
    """Next-character prediction on real text.  The text's own distribution is unknown, so the
    family names no Bayes-optimal predictor and its runs' convergence is ``unknown``; its
    baselines (``icmix baselines text``) are fitted on the training split and scored on
    held-out windows (``Fitted``)."""

    kind = "text"
    spec = TextSpec
    models = ("gpt", "disentangled")

    def build(self, spec: TextSpec) -> TextCorpus:
        """The spec's ``TextCorpus``: the corpus split by document and encoded (cached per process)."""
        return spec.corpus_data()

    def objective(self, task: TextCorpus, cfg) -> TextObjective:
        """A ``TextObjective`` on the corpus's training-split windows."""
        return TextObjective(task, cfg)

    def predictors(self, task: TextCorpus) -> list:
        """``uniform``, ``unigram`` and ``bigram``, fitted on the training split (``Fitted``)."""
        return [Fitted(name, task) for name in ("uniform", "unigram", "bigram")]

    def baseline_losses(self, task: TextCorpus, spec: TextSpec, predictors, n: int, generator: torch.Generator) -> dict:
        """The mean cross-entropy (nats/char) of the observed next character over every prefix (1 to
        ``spec.length``) of ``n`` windows of ``spec.length + 1`` characters of the *test* split, per
        predictor (there is no true distribution to add).  The windows are drawn from the one test
        split, so their standard error is conditional on that split."""
        windows = task.windows("test", n, spec.length + 1, generator)
        lengths = range(1, spec.length + 1)
        seen, targets = windows[:, :-1], windows[:, 1:]
        return {p.key.id: cross_entropy(p.predict(seen, task, lengths), targets).double().mean(1).numpy()
                for p in predictors}

    def run_name(self, cfg) -> str:
        """``text-{corpus}-q{vocab_size}-T{length}-{loss}``; a corpus given by path reads ``corpus``."""
        corpus = cfg.task.corpus if cfg.task.corpus == PYDOC else "corpus"
        return f"text-{corpus}-q{cfg.task.vocab_size}-T{cfg.task.length}-{cfg.loss}"

    def same_task(self, a: TextCorpus, b: TextCorpus) -> bool:
        """Same alphabet and the same training documents (another split could hold this one's test text)."""
        same = lambda x, y: len(x) == len(y) and all(np.array_equal(u, v) for u, v in zip(x, y))  # noqa: E731
        return a.alphabet == b.alphabet and same(a.train, b.train) and same(a.test, b.test)


@dataclass(frozen=True)
class FittedMTDgSpec(MTDgSpec):
    """MTDg whose per-lag matrices are fitted to a corpus's training split (add-``kappa``
    skip-bigrams at ``vocab_size`` symbols); the lag weights still come from Dirichlet(alpha).

    Args:
        vocab_size: q: the q - 1 most frequent characters of the training split, plus one "other" symbol.
        order: M, the number of lags; lag g's matrix is the skip-bigram of characters g apart (1 <= M < length).
        alpha: Dirichlet concentration (> 0) of each sequence's lag weights; 1: uniform on the simplex.
        seed: unused by the task (its matrices are fitted, not drawn); the run's own seed draws the sequences.
        length: T, input tokens of a synthetic training sequence (T + 1 are drawn); the model's max_length.
    """

    KIND: ClassVar[str] = "mtdg-text"
    kind: str = "mtdg-text"  # the family's name in a task: section; must be mtdg-text here
    corpus: str = PYDOC  # pydoc (the standard library's documentation topics), or a text file's or directory's path
    kappa: float = KAPPA  # add-kappa smoothing (> 0) of the skip-bigram counts: pi_g[a, b] ~ count(a, b) + kappa
    test_fraction: float = 0.2  # in (0, 1): the share of the characters held out as whole documents (not fitted)
    split_seed: int = 0  # seeds the permutation of the documents that picks the test split


class FittedMTDgFamily(MTDgFamily):
    """MTDg on real text's statistics (``mtdg-text``): synthetic sequences whose per-lag
    matrices are the skip-bigrams fitted to a corpus's training split (``FittedMTDgSpec``), lag
    weights from Dirichlet(alpha)."""

    kind = "mtdg-text"
    spec = FittedMTDgSpec

    def build(self, spec: FittedMTDgSpec) -> MTDTask:
        """The per-lag ``MTDTask`` whose ``(M, Q, Q)`` matrices are the corpus's add-``kappa``
        skip-bigrams (``fitted_transitions``, cached per process)."""
        pis = fitted_transitions(spec.corpus, spec.vocab_size, spec.order, spec.kappa, spec.test_fraction,
                                 spec.split_seed)
        return MTDTask(spec.vocab_size, spec.order, spec.alpha, seed=spec.seed, transition=pis, per_lag=True)

    def run_name(self, cfg) -> str:
        """``mtdg-{corpus}-m{order}-T{length}-{loss}``; a corpus given by path reads ``corpus``."""
        return f"mtdg-{cfg.task.corpus if cfg.task.corpus == PYDOC else 'corpus'}-m{cfg.task.order}-" \
               f"T{cfg.task.length}-{cfg.loss}"


register_family(TextFamily())
register_family(FittedMTDgFamily())
