"""Real text as MTD data (SPEC §3): a character corpus, its alphabet, a split by document, windows.

The default corpus ships with Python itself: the documentation topics of the standard
library's ``pydoc_data`` (79 documents, about 465k characters), so nothing is downloaded.
``TextCorpus.load(path)`` reads the user's own: a directory (each ``*.txt`` file one
document) or a file (documents separated by blank lines).

Text is lower-cased; the alphabet is the ``q - 1`` most frequent characters of the *training*
split (ties broken by code point) plus one "other" symbol (index ``q - 1``) for every other
character.  The split is by document: in a seeded permutation of the documents, each goes to the test
split if it still fits under ``test_fraction`` of the characters, so no window of the test
split shares a document with training.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from icmix._checks import check_positive_int
from icmix.random import make_generator

PYDOC = "pydoc"
OTHER = "⊥"  # how the "other" symbol prints


def pydoc_documents() -> list[str]:
    """The standard library's documentation topics, one document each, in topic order."""
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)]


def read_documents(path: str | Path) -> list[str]:
    """A directory's ``*.txt`` files (one document each, in name order), or a file's
    blank-line-separated blocks."""
    p = Path(path)
    if p.is_dir():
        docs = [f.read_text(encoding="utf-8", errors="replace") for f in sorted(p.glob("*.txt"))]
    elif p.is_file():
        text = p.read_text(encoding="utf-8", errors="replace")
        docs = [d for d in (block.strip("\n") for block in text.replace("\r\n", "\n").split("\n\n")) if d]
    else:
        raise ValueError(f"corpus not found: {path} (a text file, or a directory of .txt files)")
    docs = [d for d in docs if d]
    if len(docs) < 2:
        raise ValueError(f"corpus {path} has {len(docs)} document(s); a split by document needs at least 2")
    return docs


@dataclass(frozen=True)
class Alphabet:
    """``symbols``: the ``q - 1`` kept characters, most frequent first; index ``q - 1`` is "other"."""

    symbols: str

    @property
    def size(self) -> int:
        """``q``: the kept symbols plus the other symbol."""
        return len(self.symbols) + 1

    @classmethod
    def fit(cls, documents: list[str], q: int) -> Alphabet:
        """The ``q - 1`` most frequent characters of the lower-cased ``documents``, ties broken by
        code point; ``ValueError`` if they hold fewer distinct characters."""
        counts = collections.Counter()
        for d in documents:
            counts.update(d.lower())
        ranked = sorted(counts, key=lambda ch: (-counts[ch], ord(ch)))
        if len(ranked) < q - 1:
            raise ValueError(f"the training split has {len(ranked)} distinct characters; q = {q} needs at least {q - 1}")
        return cls("".join(ranked[: q - 1]))

    def encode(self, text: str) -> np.ndarray:
        """int64 codes of ``text`` (lower-cased)."""
        codes = np.frombuffer(text.lower().encode("utf-32-le"), dtype=np.uint32)
        top = max([0xFFFF, *map(ord, self.symbols), int(codes.max()) if codes.size else 0])
        table = np.full(top + 1, self.size - 1, dtype=np.int64)
        for i, ch in enumerate(self.symbols):
            table[ord(ch)] = i
        return table[codes]

    def decode(self, codes) -> str:
        """The text of ``codes``, the other symbol printed as ``OTHER``."""
        return "".join(self.symbols[c] if c < len(self.symbols) else OTHER for c in np.asarray(codes).tolist())


@dataclass
class TextCorpus:
    """A corpus split by document and encoded: ``train``/``test`` are lists of int64 arrays."""

    name: str
    alphabet: Alphabet
    train: list[np.ndarray]
    test: list[np.ndarray]

    @classmethod
    def load(cls, corpus: str = PYDOC, q: int = 32, test_fraction: float = 0.2, seed: int = 0) -> TextCorpus:
        """``corpus``: ``"pydoc"`` or a path (module docstring); ``q`` symbols; the split's seed."""
        q = check_positive_int("vocab_size", q, minimum=2)
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        docs = pydoc_documents() if corpus == PYDOC else read_documents(corpus)
        order = torch.randperm(len(docs), generator=make_generator(seed)).tolist()
        # Documents in permuted order go to the test split while they fit under the fraction
        # (the first always goes, so the test split is never empty); the rest train.
        total, held, test_ids = sum(map(len, docs)), 0, set()
        for i in order[:-1]:  # at least one training document
            if not test_ids or held + len(docs[i]) <= test_fraction * total:
                test_ids.add(i)
                held += len(docs[i])
        train_docs = [d for i, d in enumerate(docs) if i not in test_ids]
        alphabet = Alphabet.fit(train_docs, q)
        return cls(corpus, alphabet, [alphabet.encode(d) for d in train_docs],
                   [alphabet.encode(d) for i, d in enumerate(docs) if i in test_ids])

    @property
    def vocab_size(self) -> int:
        """``q``, the size of the alphabet (its other symbol included)."""
        return self.alphabet.size

    def split(self, name: str) -> list[np.ndarray]:
        """The encoded documents of the ``train`` or ``test`` split (``ValueError`` for another name)."""
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {name!r}")
        return self.train if name == "train" else self.test

    def windows(self, split: str, n: int, length: int, generator: torch.Generator | int | None = None) -> Tensor:
        """``n`` windows of ``length`` consecutive characters, int64 ``(n, length)``: a document
        of the split with probability proportional to its number of windows, then a uniform
        start within it (every window lies inside one document)."""
        docs = [d for d in self.split(split) if len(d) >= length]
        if not docs:
            raise ValueError(f"no {split} document has {length} characters; use shorter windows")
        g = make_generator(generator)
        starts = torch.tensor([len(d) - length + 1 for d in docs], dtype=torch.float64)
        flat = torch.multinomial(starts, n, replacement=True, generator=g) if len(docs) > 1 else torch.zeros(n, dtype=torch.int64)
        offset = (torch.rand(n, generator=g, dtype=torch.float64) * starts[flat]).long()
        out = np.stack([docs[d][o:o + length] for d, o in zip(flat.tolist(), offset.tolist())])
        return torch.from_numpy(out)

    def describe(self) -> str:
        """One line: the corpus's name, the number of training and test documents and their characters, and ``q``."""
        n = lambda docs: sum(map(len, docs))  # noqa: E731
        return (f"{self.name}: {len(self.train)} training documents ({n(self.train):,} characters), "
                f"{len(self.test)} test documents ({n(self.test):,}), q = {self.vocab_size}")
