"""Claims: each is one statement of a paper, tested by one quantity read off the figures' tables
(the CSVs ``icmix reproduce`` writes), with its mean and 95% Student-t interval over seeds and a
verdict: ``holds``, ``doesn't``, ``not converged`` (it fails, but on training runs that were
still improving, so more training may change it), ``not run`` (a figure it needs failed or was
not run) or ``no data``.  The ``converged`` column says whether the training runs a claim rests
on converged (``icmix.train.convergence.DEFINITION``: ``yes``, ``no`` or ``unknown``; ``–`` for
claims with no trained model).  Verdicts compare the mean over seeds with the stated threshold
(with two seeds a Student-t interval is too wide to decide anything); the d² ranking alone is a
paired test, over prompts.

A claim is declared by the figure that measures it, in the figure's own module, with the
figure's ``claim`` decorator::

    @FIGURE.claim("My paper", "The bigram predictor beats the unigram one at T={cfg.length}",
                  "KL(bigram) / KL(unigram) at the longest length; holds if < 1")
    def bigram_wins(c: Claim, out: Path, cfg) -> Claim:
        t = select(read(out, "my-fig"), "my-fig", length=cfg.length)
        ratio = by_key(t, "seed", "kl_mean", [BIGRAM, UNIGRAM], "my-fig")
        c.mean, c.ci, _, c.value = seeds(ratio[BIGRAM.id] / ratio[UNIGRAM.id])
        c.verdict = verdict(c.mean < 1)
        return c

The function fills in ``c`` from the tables under ``out``; ``cfg`` is the figure's config.  The
helpers here (``read``, ``select``, ``by_key``, ``trained_key``, ``seeds``, ``fmt``, ``verdict``, ``measured``)
are the public toolkit of claims, plugins' included.  Every test is stated in the row's
``test`` column, threshold included, so a reader can disagree with a threshold and still use
the number.  A claim reads only the CSVs under ``OUT``: the report can be rebuilt without
recomputing anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from icmix.metrics import mean_ci
from icmix.predictors import Key

HOLDS, FAILS, NOT_RUN, NO_DATA = "holds", "doesn't", "not run", "no data"
NOT_CONVERGED = "not converged"  # fails, but on training runs that were still improving


class MissingRows(LookupError):
    """A claim's figure ran, but its table has no rows the claim needs (a figure run with
    other settings, e.g. no m = 20).  Any other error in a claim is a bug and propagates."""


def select(t: pd.DataFrame, what: str, **where) -> pd.DataFrame:
    """The rows of ``t`` whose columns equal ``where`` (a ``Key`` matches the ``key`` column);
    ``MissingRows`` naming ``what`` if there are none."""
    mask = np.ones(len(t), bool)
    for col, value in where.items():
        if isinstance(value, Key):
            col, value = "key", value.id
        if col not in t.columns:  # the figure wrote the wrong table: a bug, not missing data
            raise KeyError(f"{what}: the table has no column {col!r}")
        mask &= (t[col] == value).to_numpy()
    if not mask.any():
        raise MissingRows(f"{what}: no rows with " + ", ".join(f"{k} = {v}" for k, v in where.items()))
    return t[mask]


def by_key(t: pd.DataFrame, index, values: str, keys: list, what: str) -> pd.DataFrame:
    """``values`` pivoted to one column per key (``Key`` or key-id string) in ``keys``, indexed by ``index``."""
    ids = [k.id if isinstance(k, Key) else k for k in keys]
    for k in ids:
        select(t, what, key=k)
    return t[t.key.isin(ids)].pivot_table(index=index, columns="key", values=values)[ids]


def trained_key(t: pd.DataFrame, what: str, **where) -> str:
    """The key id of the one trained model in ``t`` matching ``where`` (model_kind, depth, loss)."""
    ids = select(t, what, predictor="trained", **where)["key"].unique()
    if len(ids) > 1:  # the claim's selection is too loose for this table: a bug, not missing data
        raise ValueError(f"{what}: expected one trained model with {where}, found {list(ids)}")
    return ids[0]


@dataclass
class Claim:
    """One row of the claims table: the statement, its test, and what was measured."""

    paper: str
    claim: str
    test: str
    figures: tuple[str, ...]
    value: str = ""
    verdict: str = NOT_RUN
    mean: float = float("nan")
    ci: float = float("nan")
    note: str = ""
    converged: str = "–"  # yes / no / unknown for the trained runs the claim rests on; – where there are none


@dataclass(frozen=True)
class ClaimSpec:
    """A declared claim (``Figure.claim``): ``fn(c, out, cfg, **extra)`` tests it on the tables
    of ``figures`` (its own figure ``figure`` first), with ``figure``'s config ``cfg``.

    ``text`` and ``test`` may name ``{cfg.field}``, the ``extra`` keywords (``{m}``), ``{k}``
    (= 2 × ``cfg.dim``) and ``{n}`` (the smallest of ``cfg.n_trains``).  ``trained(tc, cfg,
    **extra)`` selects, among ``figure``'s training runs, those the claim rests on: their
    convergence fills the ``converged`` column, and a failing claim on unconverged runs reads
    ``not converged``."""

    fn: Callable
    paper: str
    text: str
    test: str
    figure: str
    figures: tuple[str, ...]
    trained: Callable | None = None
    extra: dict = field(default_factory=dict)

    def keys(self, cfg) -> dict:
        """The names ``text`` and ``test`` may use."""
        keys = dict(cfg=cfg, **self.extra)
        if cfg is not None and hasattr(cfg, "dim"):
            keys["k"] = 2 * cfg.dim
        if cfg is not None and hasattr(cfg, "n_trains"):
            keys["n"] = min(cfg.n_trains)
        return keys

    def blank(self, cfg) -> Claim:
        """The claim's row before it is tested (``not run``), its statements filled in from ``cfg``."""
        try:
            keys = self.keys(cfg)
            return Claim(self.paper, self.text.format(**keys), self.test.format(**keys), self.figures)
        except (AttributeError, KeyError, IndexError):
            return Claim(self.paper, self.text, self.test, self.figures)


def fmt(mean: float, ci: float, n: int, digits: int = 3) -> str:
    """``mean ± ci (n seeds)``, or ``mean (n seed)`` where there is no interval."""
    if n < 2 or not np.isfinite(ci):
        return f"{mean:.{digits}g} ({n} seed{'s' if n != 1 else ''})"
    return f"{mean:.{digits}g} ± {ci:.2g} ({n} seeds)"


def seeds(values) -> tuple[float, float, int, str]:
    """Mean, CI half-width, number of seeds and the formatted value of per-seed values."""
    v = np.asarray(list(values), dtype=np.float64)
    mean, _, ci = mean_ci(v)
    return mean, ci, v.size, fmt(mean, ci, v.size)


def measured(c: Claim, values, holds) -> Claim:
    """Fill in ``c`` from per-seed ``values``: their mean, 95% interval and formatted value, and
    the verdict ``holds(mean)`` (``holds``: a function of the mean, ``lambda r: r <= 1.1``)."""
    c.mean, c.ci, _, c.value = seeds(values)
    c.verdict = verdict(holds(c.mean))
    return c


def verdict(ok: bool) -> str:
    """``holds`` if ``ok``, else ``doesn't``."""
    return HOLDS if ok else FAILS


def read(out: Path, name: str) -> pd.DataFrame:
    """The table ``OUT/NAME.csv`` a figure wrote."""
    return pd.read_csv(Path(out) / f"{name}.csv")


def evaluate(out: Path, configs: dict, available: set[str], figures: Iterable) -> list[Claim]:
    """Every claim the ``figures`` (``Figure`` objects, in report order) declare, read off the CSVs
    under ``out``, each with its figure's config from ``configs``.  A claim needing a figure not
    in ``available`` (failed, or not run) comes back ``not run``, and one whose figure ran
    without the rows it needs (``MissingRows``: other settings) ``no data``, each with the
    reason in its note.  Any other error in a claim propagates: it is a bug, not a verdict."""
    claims = []
    for fig in figures:
        for spec in fig.claims:
            cfg = configs.get(spec.figure)
            c = spec.blank(cfg)
            missing = sorted(set(spec.figures) - available) + ([spec.figure] if cfg is None else [])
            if missing:
                c.note = "figure not available: " + ", ".join(sorted(set(missing)))
                c.converged = "?" if spec.trained else "–"
                claims.append(c)
                continue
            try:
                spec.fn(c, out, cfg, **spec.extra)
            except MissingRows as err:
                c.verdict, c.value, c.note = NO_DATA, "", str(err)
            if spec.trained:
                c.converged = _converged(out, claim_runs(spec, fig, cfg))
                if c.verdict == FAILS and c.converged == "no":
                    c.verdict = NOT_CONVERGED
            claims.append(c)
    return claims


def claim_runs(spec: ClaimSpec, figure, cfg) -> list[str]:
    """The run names (under ``OUT/runs``) among ``figure``'s runs at ``cfg`` that the claim rests on."""
    from icmix.experiments.common import run_name

    if cfg is None or spec.trained is None:
        return []
    return [run_name(tc) for tc in figure.runs(cfg).values() if spec.trained(tc, cfg, **spec.extra)]


def _converged(out: Path, names: list[str]) -> str:
    """``yes`` if every run the claim rests on converged (``icmix.train.convergence``), ``no``
    if one did not, ``unknown`` if one cannot be judged against an optimum, ``?`` if a run is
    missing or unreadable."""
    from icmix.train.convergence import combined_status, run_convergence

    if not names:
        return "?"
    try:
        return combined_status(run_convergence(Path(out) / "runs" / n).status for n in names)
    except (ValueError, OSError):
        return "?"


def table(claims: list[Claim]) -> pd.DataFrame:
    """The claims table (``claims.csv``): one row per claim."""
    return pd.DataFrame([{"paper": c.paper, "claim": c.claim, "test": c.test, "measured": c.value or "—",
                          "verdict": c.verdict, "converged": c.converged, "note": c.note,
                          "figures": ", ".join(c.figures)} for c in claims], columns=COLUMNS)


COLUMNS = ["paper", "claim", "test", "measured", "verdict", "converged", "note", "figures"]
