"""Claims: each is one statement of a paper, tested by one quantity read off the figures' tables
(the CSVs ``icmix reproduce`` writes), with its mean and 95% Student-t interval over seeds and a
verdict decided from that interval (``RULE``): ``holds``, ``doesn't``, ``inconclusive`` (the
interval straddles the threshold; the note says how many seeds would settle it), ``not
converged`` (it fails, but on training runs that were still improving, so more training may
change it: unless its scaling data, ``icmix.experiments.scaling``, extrapolate to a failure at the
paper's budget too), ``not run`` (a figure it needs failed or was not run) or ``no data``.  The ``converged`` column says whether the training runs a claim rests
on converged (``icmix.train.convergence.DEFINITION``: ``yes``, ``no`` or ``unknown``; ``–`` for
claims with no trained model).

A claim is declared by the figure that measures it, in the figure's own module, with the
figure's ``claim`` decorator::

    @FIGURE.claim("My paper", "The bigram predictor beats the unigram one at T={cfg.length}",
                  "KL(bigram) / KL(unigram) at the longest length; holds if < 1")
    def bigram_wins(c: Claim, out: Path, cfg) -> Claim:
        t = select(read(out, "my-fig"), "my-fig", length=cfg.length)
        kl = by_key(t, "seed", "kl_mean", [BIGRAM, UNIGRAM], "my-fig")
        return measured(c, kl[BIGRAM.id] / kl[UNIGRAM.id], 1, "<")  # per seed; holds if the interval is below 1

The function fills in ``c`` from the tables under ``out``; ``cfg`` is the figure's config.  The
helpers here (``read``, ``select``, ``by_key``, ``trained_key``, ``seeds``, ``fmt``, ``measured``, ``judge``, ``verdict``)
are the public toolkit of claims, plugins' included.  Every test is stated in the row's
``test`` column, threshold included, so a reader can disagree with a threshold and still use
the number.  A claim reads only the CSVs under ``OUT``: the report can be rebuilt without
recomputing anything.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from icmix.metrics import mean_ci
from icmix.predictors import Key

HOLDS, FAILS, NOT_RUN, NO_DATA = "holds", "doesn't", "not run", "no data"
INCONCLUSIVE = "inconclusive"  # the interval straddles the threshold
NO_FIT = "the budgets support no model to extrapolate"  # a scaled claim no model fits (scaling.extrapolate)
NOT_CONVERGED = "not converged"  # fails, but on training runs that were still improving
RULE = ("a claim measured over seeds holds when the whole 95 % Student-t interval of its measure lies on the "
        "claim's side of its threshold, doesn't when the whole interval lies on the other side, and is "
        "inconclusive otherwise (one seed gives no interval), with the number of seeds that would settle it if "
        "the spread across seeds stayed the same; a claim of several statements holds when all hold and doesn't "
        "when one doesn't. Exact checks (the worst case over every check) and the paired d² test decide by their "
        "own stated test")


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
    n: int = 0  # seeds behind the measure
    settle: str = ""  # inconclusive: what would settle it
    threshold: float = float("nan")  # of the measure (the first statement's), and the claim's side of it
    side: str = ""


@dataclass(frozen=True)
class ClaimSpec:
    """A declared claim (``Figure.claim``): ``fn(c, out, cfg, **extra)`` tests it on the tables
    of ``figures`` (its own figure ``figure`` first), with ``figure``'s config ``cfg``.

    ``text`` and ``test`` may name ``{cfg.field}``, the ``extra`` keywords (``{m}``), ``{k}``
    (= 2 × ``cfg.dim``) and ``{n}`` (the smallest of ``cfg.n_trains``).  ``trained(tc, cfg,
    **extra)`` selects, among ``figure``'s training runs, those the claim rests on: their
    convergence fills the ``converged`` column, and a failing claim on unconverged runs reads
    ``not converged``.  ``bounds``: the values the measure can take (a ratio of errors ``(0, inf)``,
    a cosine ``(-1, 1)``, an attention mass ``(0, 1)``); the claims-scaling fit keeps its limit
    within them."""

    fn: Callable
    paper: str
    text: str
    test: str
    figure: str
    figures: tuple[str, ...]
    trained: Callable | None = None
    extra: dict = field(default_factory=dict)
    bounds: tuple[float, float] = (-math.inf, math.inf)

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


SIDES = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


def decide(mean: float, ci: float, n: int, threshold: float, side: str) -> str:
    """The verdict of a measure over ``n`` seeds with mean ``mean`` and 95% half-width ``ci``,
    for the claim ``measure SIDE threshold`` (``RULE``): ``holds`` when the whole interval is
    on the claim's side, ``doesn't`` when it is all on the other side, else ``inconclusive``
    (one seed has no interval: inconclusive)."""
    if side not in SIDES:
        raise ValueError(f"side must be one of {list(SIDES)}, got {side!r}")
    if n < 2 or not (np.isfinite(mean) and np.isfinite(ci)):
        return INCONCLUSIVE
    ok = SIDES[side]
    ends = (ok(mean - ci, threshold), ok(mean + ci, threshold))
    return HOLDS if all(ends) else FAILS if not any(ends) else INCONCLUSIVE


def seeds_to_settle(mean: float, ci: float, n: int, threshold: float, most: int = 1000) -> int | None:
    """The fewest seeds whose 95% interval would clear ``threshold``, if the mean and the spread
    across seeds stayed what ``n`` seeds show; ``None`` if no number up to ``most`` would."""
    from scipy import stats

    if n < 2 or not (np.isfinite(mean) and np.isfinite(ci)) or mean == threshold:
        return None
    spread = ci * np.sqrt(n) / stats.t.ppf(0.975, n - 1)
    for m in range(n + 1, most + 1):
        if stats.t.ppf(0.975, m - 1) * spread / np.sqrt(m) < abs(mean - threshold):
            return m
    return None


def judge(c: Claim, *parts: tuple) -> Claim:
    """The verdict of a claim that is one or more statements ``(per-seed values, threshold,
    side)``: ``doesn't`` if one doesn't hold, ``holds`` if all do, else ``inconclusive``, with
    the seeds that would settle each undecided part in ``c.settle``.  ``c``'s mean and interval
    are the first part's unless already set."""
    verdicts, settle = [], []
    for i, (values, threshold, side) in enumerate(parts):
        mean, ci, n, _ = seeds(values)
        if i == 0 and not np.isfinite(c.mean):
            c.mean, c.ci = mean, ci
        if i == 0 and not c.side:
            c.threshold, c.side = float(threshold), side
        c.n = max(c.n, n)
        verdicts.append(decide(mean, ci, n, threshold, side))
        if verdicts[-1] == INCONCLUSIVE:
            needed = seeds_to_settle(mean, ci, n, threshold)
            settle.append(f"{'measure' if len(parts) == 1 else f'part {i + 1}'} {side} {threshold:g}: "
                          + ("one seed gives no interval: 2 or more would" if n < 2 else
                             f"about {needed} seeds would settle it, if the spread stays" if needed else
                             "more seeds at this budget would not settle it"))
    c.verdict = FAILS if FAILS in verdicts else HOLDS if all(v == HOLDS for v in verdicts) else INCONCLUSIVE
    c.settle = "; ".join(settle) if c.verdict == INCONCLUSIVE else ""
    return c


def measured(c: Claim, values, threshold: float, side: str) -> Claim:
    """Fill in ``c`` from per-seed ``values``: their mean, 95% interval and formatted value, and
    the verdict of ``mean SIDE threshold`` by ``RULE`` (``judge``)."""
    c.mean, c.ci, c.n, c.value = seeds(values)
    return judge(c, (values, threshold, side))


def verdict(ok: bool) -> str:
    """``holds`` if ``ok``, else ``doesn't``: for a statement with no interval over seeds (an
    exact check's worst case, a paired test that states its own intervals)."""
    return HOLDS if ok else FAILS


def read(out: Path, name: str) -> pd.DataFrame:
    """The table ``OUT/NAME.csv`` a figure wrote."""
    return pd.read_csv(Path(out) / f"{name}.csv")


def evaluate(out: Path, configs: dict, available: set[str], figures: Iterable, statements: dict | None = None) -> list[Claim]:
    """Every claim the ``figures`` (``Figure`` objects, in report order) declare, read off the CSVs
    under ``out``, each with its figure's config from ``configs``.  A claim needing a figure not
    in ``available`` (failed, or not run) comes back ``not run`` (its statements filled in from
    the config ``statements`` gives its figure where ``configs`` has none), and one whose figure ran
    without the rows it needs (``MissingRows``: other settings) ``no data``, each with the
    reason in its note.  Any other error in a claim propagates: it is a bug, not a verdict."""
    claims = []
    scaling = _scaling(out)
    for fig in figures:
        for spec in fig.claims:
            cfg = configs.get(spec.figure)
            c = spec.blank(cfg if cfg is not None else (statements or {}).get(spec.figure))
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
                scaled = scaling.get(c.claim)
                steps = max((tc.steps for tc in fig.runs(cfg).values() if spec.trained(tc, cfg, **spec.extra)),
                            default=None)
                scaled = scaled if scaled is not None and scaled["steps"] == steps else None  # at this very budget
                if scaled is not None and scaled["converged"] in ("yes", "no"):
                    _with_scaling(c, scaled)
                # More training could change a failing claim on unconverged runs, unless its scaling data
                # extrapolate to a failure at the paper's budget too.
                if c.verdict == FAILS and c.converged == "no" and (
                        scaled is None or scaled.get("verdict_extrapolated") != FAILS):
                    c.verdict = NOT_CONVERGED
            claims.append(c)
    return claims


SCALING_FITS = "claims-scaling-fits.csv"  # written by the claims-scaling figure (icmix.experiments.scaling)


def _scaling(out: Path) -> dict[str, dict]:
    """The claims-scaling figure's fits under ``out``, by claim (empty if it did not run)."""
    path = Path(out) / SCALING_FITS
    if not path.exists() or not path.stat().st_size or not path.read_text().strip():
        return {}
    return {row["claim"]: row for row in pd.read_csv(path).to_dict("records")}


def _with_scaling(c: Claim, f: dict) -> None:
    """A claim measured by the claims-scaling figure too: its convergence is the scaling data's
    (doubling the budget moved the measure by less than its interval), and the note says how its
    budgets extrapolate it (the model they support, ``scaling.extrapolate``), what the verdict
    would be at the paper's budget and, if undecided, what would settle it."""
    c.converged = f["converged"]
    text = lambda key: f.get(key) if isinstance(f.get(key), str) else ""  # noqa: E731  (empty in a CSV: NaN)
    extrapolated = NO_FIT
    if text("model") and text("extrapolation"):
        extrapolated = "; ".join(p for p in (f"{f['extrapolation']}, {f['verdict_extrapolated']} there",
                                             text("settle")) if p)
    elif "model" not in f and np.isfinite(f.get("extrapolated", np.nan)):  # fits written before models had names
        extrapolated = (f"extrapolated to {f['target_steps']:.0f} steps: {f['extrapolated']:.3g} "
                        f"[{f['lo']:.3g}, {f['hi']:.3g}], {f['verdict_extrapolated']} there")
    unlisted = "scaling measured by a zoo the package's manifest does not list" \
        if f.get("measurements") == "unlisted zoo" else ""
    moved = f"doubling the steps moved it by {f['moved_by_doubling']:.2g}" \
        if np.isfinite(f.get("moved_by_doubling", np.nan)) else ""  # no half budget measured
    c.note = "; ".join(p for p in (c.note, moved, extrapolated, unlisted) if p)


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


def table(claims: list[Claim], tiers: dict[str, str] | None = None) -> pd.DataFrame:
    """The claims table (``claims.csv``): one row per claim.  ``tiers``: ``{figure: tier}`` (the
    preset whose training runs it evaluated), shown with the seeds in the ``basis`` column of the
    claims on trained models."""
    def basis(c: Claim) -> str:
        if c.converged == "–":
            return "–"
        tier = (tiers or {}).get(c.figures[0], "")
        seeds = f"{c.n} seed{'s' if c.n != 1 else ''}" if c.n else ""
        return ", ".join(p for p in (f"{tier} tier" if tier else "", seeds) if p) or "–"

    return pd.DataFrame([{"paper": c.paper, "claim": c.claim, "test": c.test, "measured": c.value or "—",
                          "verdict": c.verdict, "converged": c.converged, "basis": basis(c),
                          "note": "; ".join(p for p in (c.note, c.settle) if p),
                          "figures": ", ".join(c.figures)} for c in claims], columns=COLUMNS)


COLUMNS = ["paper", "claim", "test", "measured", "verdict", "converged", "basis", "note", "figures"]
