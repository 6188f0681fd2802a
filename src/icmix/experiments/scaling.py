"""``claims-scaling``: each trained-model claim's measure against the training budget, fitted and
extrapolated to the paper's budget.

For every figure with a ``long`` preset, the figure is run at several budgets: the long preset
with its steps (and its GPT's) cut to each fraction in ``budgets`` (1/8, 1/4, 1/2 and all of them),
each budget its own training runs with the recipe's cosine schedule fitted to that budget (the
budget of 1/2 is the ``cpu`` preset, whose runs the cpu zoo tier holds).  The runs are this
figure's ``runs``, trained or taken from the zoo like any figure's, under ``OUT/runs``; each budget's
figure outputs go to ``OUT/scaling/<fraction>`` and its claims (``claims.evaluate``) into
``claims-scaling-measured.csv``: one row per claim and budget with the mean, 95 % interval and
seeds.  Then, per claim, the figure fits

    measure(steps) = floor + amplitude · (steps / largest budget) ^ (−exponent)

by least squares weighted by each budget's interval (``fit``), extrapolates it to the paper's
budget (the figure's ``paper`` preset), with a 95 % interval from refitting on means redrawn
within their intervals (a parametric bootstrap), and says what the claim's verdict would be there.
Where no power law fits, the largest three budgets decide (``extrapolate``, ``MODELS``): a plateau,
extrapolated as a constant, or a trend, which gives the range the measure lies in if it goes on.
An undecided extrapolation says what would settle it (``settle``): a budget, or seeds.

The same data judge a claim's convergence (``CONVERGENCE``): ``yes`` when doubling the budget (half
the steps to all of them) moved the measure by less than the 95 % interval of that change (the two
budgets' half-widths added in quadrature: their runs are independent).
The claims table (``claims.evaluate``) takes a claim's convergence and extrapolation from
``claims-scaling-fits.csv`` where it finds the claim there.

The zoo ships the long tier (the largest budget) but not the smaller budgets' runs (they would not
fit its size cap); it ships their measurements instead.  The ``demo`` preset (``train=False``)
trains nothing: it fits and draws from ``claims-scaling-measured.csv`` in ``OUT`` (``make demo``
copies the zoo's there), once it has checked that the file was measured on the runs, evaluation
configs and claims this code names (``runs_digest``).  ``icmix reproduce claims-scaling --preset
long`` measures the figures the file lacks, and again those whose digest differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from icmix._checks import check_positive_int
from icmix.experiments.claims import FAILS, HOLDS, INCONCLUSIVE, NO_FIT, SIDES, evaluate, seeds_to_settle
from icmix.experiments.common import run_name
from icmix.experiments.figure import Figure, Result, figure_names, figures_with, get_figure

NAME = "claims-scaling"
MEASURED = f"{NAME}-measured.csv"
MEASURED_COLUMNS = ["claim", "figure", "fraction", "steps", "mean", "ci", "n", "threshold", "side", "verdict", "runs"]
FITS = f"{NAME}-fits.csv"
# Beside a copy of the zoo's measurements in OUT (``icmix.report.take_measurements``): where it came
# from, its SHA-256 and whether the package's manifest lists it.
SOURCE = f"{NAME}-measured.source.json"
CONVERGENCE = ("a claim's measure has converged when doubling the training budget (half the long tier's steps to "
               "all of them, each budget its own runs) moved it by less than the 95 % interval of that change")


@dataclass(frozen=True)
class Config:
    """``figures``: those whose claims are measured (empty: every figure with a ``long`` preset);
    ``budgets``: fractions of the long preset's steps (4 or more, 1/2 and 1 among them); ``train``:
    train (or take from the zoo) every budget's runs and measure, or (``False``: the demo) only fit
    the measurements found in ``OUT``; ``n_boot``: bootstrap refits."""

    figures: tuple[str, ...] = ()
    budgets: tuple[float, ...] = (1 / 8, 1 / 4, 1 / 2, 1.0)
    train: bool = True
    n_boot: int = 400  # bootstrap refits per claim, on means redrawn from their t intervals (the 95% band)
    seed: int = 0  # seeds the bootstrap's draws (numpy's default_rng)

    def __post_init__(self):
        if len(self.budgets) < 4 or not all(0 < q <= 1 for q in self.budgets) or 1.0 not in self.budgets:
            raise ValueError(f"budgets must be 4 or more fractions in (0, 1], 1 among them, got {self.budgets}")
        if 0.5 not in self.budgets:
            raise ValueError("budgets must include 1/2: convergence compares half the steps with all of them")
        check_positive_int("n_boot", self.n_boot)


def long_figures(cfg: Config) -> list[Figure]:
    """The figures whose claims are measured."""
    names = cfg.figures or tuple(n for n in figures_with("long") if n != NAME)
    return [get_figure(n) for n in names]


def figures_run(cfg: Config) -> list[Figure]:
    """The figures run at every budget: those whose claims are measured, then the other figures
    their claims read (``needs``: the shift claim of ``mlr-fig5`` reads ``mlr-fig6`` to ``fig9``)."""
    figures = long_figures(cfg)
    names = [f.name for f in figures]
    needed = [n for f in figures for spec in f.claims for n in spec.figures if n not in names]
    return figures + [get_figure(n) for n in dict.fromkeys(needed)]


def origin(out: Path) -> str:
    """Where ``OUT``'s measurements come from: ``zoo`` (a copy of the package's zoo's, unchanged),
    ``unlisted zoo`` (copied, in whole or in part, from a zoo the package's manifest does not
    list: ``ICMIX_ZOO``) or ``OUT`` (measured there, or changed since the copy)."""
    import json

    path = Path(out) / MEASURED
    try:
        record = json.loads((Path(out) / SOURCE).read_text())
        copied = isinstance(record, dict) and record.get("sha256") == hashlib.sha256(path.read_bytes()).hexdigest()
    except (OSError, ValueError):
        return "OUT"
    if record.get("listed") is not True:  # copied from a zoo of one's own: so are the rows not measured again
        return "unlisted zoo"
    return "zoo" if copied else "OUT"


def budget_config(figure: Figure, fraction: float, demo: bool = True):
    """``figure``'s long preset with its training steps (and its GPT's, ``gpt_steps``) cut to
    ``fraction`` of them, the tail checkpoint kept only at the full budget; with ``demo``, at
    the demo's evaluation sizes (what ``make demo`` evaluates the long tier at)."""
    long = figure.preset("long")
    changes = {"steps": round(fraction * long.steps)}
    if getattr(long, "gpt_steps", None):
        changes["gpt_steps"] = round(fraction * long.gpt_steps)
    if hasattr(long, "tail"):
        changes["tail"] = long.tail and fraction == 1.0
    cfg = dataclasses.replace(long, **changes)
    return dataclasses.replace(cfg, **figure.demo) if demo else cfg


def runs_digest(figure: Figure, cfg: Config) -> str:
    """A digest of what ``figure``'s measurements rest on: at every budget, the configs it is
    evaluated at (recipe and evaluation sizes) and the names of its runs, for it and every figure
    its claims read (where they run left out: ``WHERE_FIELDS``); and each claim's statement, test
    and code (its syntax tree, so comments and layout do not count).  ``compute`` measures a figure
    whose digest differs from this code's again, or, without training (the demo), refuses it.  (The
    figures' own code and the predictors they compare with are not in it: after changing what a
    figure computes, measure again.)"""
    from icmix.experiments.common import run_name

    parts = []
    for name in sorted({figure.name, *(n for spec in figure.claims for n in spec.figures)}):
        other = figure if name == figure.name else get_figure(name)
        if "long" not in other.presets:
            continue
        for q in sorted(cfg.budgets):
            c = budget_config(other, q)
            fields = {k: v for k, v in dataclasses.asdict(c).items() if k not in WHERE_FIELDS}
            parts.append(f"{name} {q!r} {sorted(fields.items())!r}")
            parts += sorted(run_name(tc) for tc in other.runs(c).values())
    for spec in figure.claims:
        parts += [spec.text, spec.test, repr(sorted(spec.extra.items())), _code(spec.fn), _code(spec.trained)]
    return hashlib.sha1("\n".join(parts).encode()).hexdigest()[:12]


WHERE_FIELDS = ("jobs", "device")  # of a figure's config: where it runs, not what it computes


def _code(fn) -> str:
    """What a claim's function computes: its syntax tree (comments, layout and docstring left out,
    and its declaration's ``bounds``, which only the fit reads), or its name where its source cannot
    be read (a function made at run time)."""
    import ast
    import textwrap

    if fn is None:
        return ""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if ast.get_docstring(node) is not None:
                    node.body = node.body[1:] or [ast.Pass()]
                for call in node.decorator_list:  # the measure's range shapes the fit, not what is measured
                    if isinstance(call, ast.Call):
                        call.keywords = [k for k in call.keywords if k.arg != "bounds"]
        return ast.dump(tree)
    except (OSError, TypeError, SyntaxError):  # (a lambda's source is its whole statement: SyntaxError
        return getattr(fn, "__qualname__", repr(fn))  # where that statement is cut mid-expression)


def measure(cfg: Config, out: Path, progress: bool = True) -> pd.DataFrame:
    """Every claim of the figures at every budget (their runs trained under ``OUT/runs``): one row
    per (claim, budget) with its mean, 95 % half-width, seeds, threshold and side, verdict, and
    the digest of the runs it rests on."""
    from tqdm.auto import tqdm

    figures, ran = long_figures(cfg), figures_run(cfg)
    digests = {f.name: runs_digest(f, cfg) for f in figures}
    runs = Path(out) / "runs"
    rows = []
    bar = tqdm(total=len(cfg.budgets) * len(ran), desc=NAME, disable=not progress)
    for q in sorted(cfg.budgets):
        view = Path(out) / "scaling" / f"{q:.4g}"
        view.mkdir(parents=True, exist_ok=True)
        if not (view / "runs").exists():  # every budget's figures share OUT/runs
            (view / "runs").symlink_to(Path("..") / ".." / "runs", target_is_directory=True)
        configs = {f.name: budget_config(f, q) for f in ran}
        steps = {f.name: max(tc.steps for tc in f.runs(configs[f.name]).values()) for f in figures}
        for f in ran:
            with contextlib.redirect_stdout(io.StringIO()):  # each figure prints its summary
                f.run(configs[f.name], view, progress=False)
            bar.update()
        for c in evaluate(view, configs, set(configs), figures):
            if not c.side or c.converged == "–":  # not a claim on trained models measured over seeds
                continue
            figure = c.figures[0]
            rows.append({"claim": c.claim, "figure": figure, "fraction": q, "steps": steps[figure],
                         "mean": c.mean, "ci": c.ci, "n": c.n, "threshold": c.threshold, "side": c.side,
                         "verdict": c.verdict, "runs": digests[figure]})
    bar.close()
    if not runs.exists():
        raise ValueError(f"no training runs under {runs}")
    return pd.DataFrame(rows, columns=MEASURED_COLUMNS)


EXPONENT_BOUNDS = (0.0, 3.0)  # of the fitted power law; a fit that ends on one is no fit


def power_law(steps, floor, amplitude, exponent, scale):
    """``floor + amplitude · (steps / scale) ^ (−exponent)``, elementwise over ``steps``."""
    return floor + amplitude * (np.asarray(steps, float) / scale) ** (-exponent)


def fit(steps, mean, ci, n, target: float, n_boot: int = 400, seed: int = 0,
        bounds: tuple[float, float] = (-np.inf, np.inf)) -> dict:
    """Fit ``floor + amplitude · (steps / max steps) ^ (−exponent)`` to per-budget means, weighted
    by their standard errors (95 % half-width / t), and extrapolate it to ``target`` steps.
    ``lo``/``hi``: the 2.5 / 97.5 % points of the extrapolation over ``n_boot`` refits on means
    redrawn from their Student-t intervals.  Parameters NaN where the fit fails.

    ``bounds``: the values the measure can take (``ClaimSpec.bounds``: a ratio of errors is ≥ 0, a
    cosine ≤ 1).  The floor, the curve's limit, is fitted within them, so the extrapolation (between
    the fitted value at the largest budget and the floor) stays within them too, and each
    extrapolation is clipped to them as well.  A best fit whose floor ends on one of them is no fit:
    the points head beyond what the measure can take."""
    from scipy import optimize, stats

    low, high = (float(b) for b in bounds)
    if not low < high:
        raise ValueError(f"bounds must be (low, high) with low < high, got {bounds}")
    steps, mean, ci, n = (np.asarray(a, float) for a in (steps, mean, ci, n))
    scale = steps.max()
    t = stats.t.ppf(0.975, np.maximum(n - 1, 1))
    se = np.where(np.isfinite(ci) & (ci > 0), ci / t, np.nan)
    se = np.where(np.isfinite(se), se, np.nanmax(np.r_[se, 1e-12]))
    se = np.maximum(se, 1e-9 * max(np.abs(mean).max(), 1e-12))
    limits = ([low, -np.inf, EXPONENT_BOUNDS[0]], [high, np.inf, EXPONENT_BOUNDS[1]])

    def one(values):
        start = float(np.clip(values[-1], np.nextafter(low, high), np.nextafter(high, low)))  # strictly inside
        p0 = (start, values[0] - values[-1], 0.5)
        try:
            p, _ = optimize.curve_fit(lambda s, a, b, c: power_law(s, a, b, c, scale), steps, values, p0=p0,
                                      sigma=se, absolute_sigma=True, bounds=limits, maxfev=20_000)
        except (RuntimeError, ValueError):
            return None
        return p

    best = one(mean)
    out = {"floor": np.nan, "amplitude": np.nan, "exponent": np.nan, "extrapolated": np.nan, "lo": np.nan,
           "hi": np.nan, "target_steps": target}
    # No fit where the power law does not describe the data: its exponent pinned at a bound (a
    # trend that is not a power law, or points that do not decrease towards a floor), its floor
    # pinned at the end of the measure's range (points that head beyond what the measure can take),
    # or budgets without an interval (one seed) to weight it and bound the extrapolation.
    tol = 1e-6 * max(np.abs(mean).max(), 1.0)
    if best is None or not (EXPONENT_BOUNDS[0] + 1e-3 < best[2] < EXPONENT_BOUNDS[1] - 1e-3) \
            or not low + tol < best[0] < high - tol or not np.isfinite(np.asarray(ci, float)).any():
        return out
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(n_boot):
        p = one(mean + se * rng.standard_t(np.maximum(n - 1, 1)))
        if p is not None:
            draws.append(power_law(target, *p, scale))
    lo, hi = np.clip(np.percentile(draws, [2.5, 97.5]), low, high) if draws else (np.nan, np.nan)
    return {**out, "floor": best[0], "amplitude": best[1], "exponent": best[2],
            "extrapolated": float(np.clip(power_law(target, *best, scale), low, high)), "lo": float(lo), "hi": float(hi)}


POWER_LAW, PLATEAU, TREND = "power law", "plateau", "trend"  # the models ``extrapolate`` chooses from
TAIL = 3  # the largest budgets that judge a plateau or a trend where no power law fits
TAIL_DRAWS = 20_000  # bootstrap draws of the tail's line (cheap: a closed form, vectorised)
MODELS = (f"each claim's measure is extrapolated to the paper's budget by what its budgets support: a power law with a "
          f"floor where one fits; else, over the largest {TAIL} budgets, a weighted straight line in log steps: "
          "where the 95 % interval of its slope covers 0 and the budgets agree with a constant, a plateau (their "
          "inverse-variance mean, with an interval wide enough for the line too, carried to the paper's budget), "
          "and where the slope's interval excludes 0 and the budgets agree with the line, a trend, which gives no "
          "value, only a range if it goes on: "
          "from the largest budget's interval (on the side the trend leaves) to the end of the measure's range "
          "(on the side it heads to)")


def extrapolate(steps, mean, ci, n, target: float, n_boot: int = 400, seed: int = 0,
                bounds: tuple[float, float] = (-np.inf, np.inf)) -> dict:
    """Extrapolate a claim's measure (per-budget means, 95 % half-widths, seeds) to ``target``
    steps by what the data support (``MODELS``), and say which: ``model`` is

    - ``POWER_LAW``: ``fit``'s power law with a floor, where it fits (4 budgets or more);
    - else the largest ``TAIL`` budgets judge, by their weighted least-squares line in log₂ steps
      (weights 1/se², se = half-width / t), its ``slope`` per doubling with the 95 % interval
      ``slope_lo``…``slope_hi`` of ``TAIL_DRAWS`` refits on means redrawn from their Student-t
      intervals:
    - ``PLATEAU``: the slope's interval covers 0 and the budgets agree with a constant (their χ²
      about their inverse-variance mean within its 95 % point under the redraws' Student-t noise):
      the extrapolation is that mean, and
      its interval spans both the mean's (under the same redraws) and the line's at ``target``: a
      slope not told from 0 is not known to be 0;
    - ``TREND``: the slope's interval excludes 0 and the budgets agree with the line (their χ²
      about it, likewise), so the measure is still moving: no value
      (``extrapolated`` NaN), only the range it lies in if it goes on, from the largest budget's
      interval on the side the trend leaves to the end of ``bounds`` it heads to (infinite for an
      unbounded measure);
    - ``""``: nothing the budgets support: fewer than ``TAIL`` budgets with a mean and an interval
      (two seeds or more) among the largest, or a tail that does not fit its model (a zig-zag).

    ``level`` and ``slope`` are the line's at the largest budget (a plateau's ``level``: its mean);
    ``last`` is that budget's steps, ``last_mean`` and ``last_ci`` its measure.  Intervals are clipped
    to ``bounds``."""
    from scipy import stats

    low, high = (float(b) for b in bounds)
    steps, mean, ci, n = (np.asarray(a, float) for a in (steps, mean, ci, n))
    out = {"model": "", **dict.fromkeys(("floor", "amplitude", "exponent", "level", "slope", "slope_lo", "slope_hi",
                                          "extrapolated", "lo", "hi"), np.nan),
           "target_steps": target, **dict.fromkeys(("last", "last_mean", "last_ci"), np.nan)}
    measured = np.isfinite(mean)
    steps, mean, ci, n = steps[measured], mean[measured], ci[measured], n[measured]
    if len(steps) >= 4:
        law = fit(steps, mean, ci, n, target, n_boot, seed, bounds)
        if np.isfinite(law["floor"]):
            return {**out, **law, "model": POWER_LAW}
    tail = np.argsort(steps, kind="stable")[-TAIL:]
    steps, mean, ci, n = steps[tail], mean[tail], ci[tail], n[tail]
    if len(steps) < TAIL or not (np.isfinite(ci) & (ci > 0) & (n >= 2)).all():
        return out
    x = np.log2(steps / steps.max())
    se = ci / stats.t.ppf(0.975, n - 1)
    w = 1 / se**2
    draws = mean + se * np.random.default_rng(seed).standard_t(n - 1, size=(max(n_boot, TAIL_DRAWS), len(x)))

    def line(y):  # weighted least squares in x, per row of y: (value at x = 0, slope)
        y = np.atleast_2d(y)
        xm, ym = (w * x).sum() / w.sum(), (y * w).sum(-1) / w.sum()
        slope = ((w * (x - xm)) * (y - ym[:, None])).sum(-1) / (w * (x - xm) ** 2).sum()
        return ym - slope * xm, slope

    def misfit(y, slope: bool):  # χ² of y about its weighted mean (slope=False) or its weighted line, per row
        y = np.atleast_2d(y)
        at, b = line(y)
        centre = at[:, None] + b[:, None] * x if slope else ((y * w).sum(-1) / w.sum())[:, None]
        return (w * (y - centre) ** 2).sum(-1)

    level, slope = (float(v[0]) for v in line(mean))
    levels, slopes = line(draws)
    slope_lo, slope_hi = (float(v) for v in np.percentile(slopes, [2.5, 97.5]))
    out = {**out, "level": level, "slope": slope, "slope_lo": slope_lo, "slope_hi": slope_hi,
           "last": float(steps[-1]), "last_mean": float(mean[-1]), "last_ci": float(ci[-1])}
    # Does the model fit the budgets at all?  Their χ² about it against its 95 % point under the same
    # Student-t noise as the redraws (``draws - mean``; χ² tables would assume the se's exact, and reject
    # far more often than 5 % at 4 seeds).
    trend = not slope_lo <= 0 <= slope_hi
    if misfit(mean, trend)[0] > np.percentile(misfit(draws - mean, trend), 95):
        return out  # a zig-zag: neither a constant nor a line: nothing to carry forward
    if not trend:
        constant = float((w * mean).sum() / w.sum())
        ahead = levels + slopes * np.log2(target / steps.max())  # the line, carried to the target
        lo, hi = np.percentile(np.c_[(draws * w).sum(-1) / w.sum(), ahead], [2.5, 97.5], axis=0)
        return {**out, "model": PLATEAU, "level": constant, "extrapolated": float(np.clip(constant, low, high)),
                "lo": float(np.clip(lo.min(), low, high)), "hi": float(np.clip(hi.max(), low, high))}
    last, half = mean[-1], ci[-1]
    lo, hi = (low, min(last + half, high)) if slope_hi < 0 else (max(last - half, low), high)
    return {**out, "model": TREND, "lo": float(lo), "hi": float(hi)}


def fitted(f, steps, scale: float):
    """The model ``f`` (a row of ``fits``) at ``steps``: the power law, the plateau's level or the
    trend's line (these two over the largest ``TAIL`` budgets only, where they were fitted)."""
    steps = np.asarray(steps, float)
    if f["model"] == POWER_LAW:
        return power_law(steps, f["floor"], f["amplitude"], f["exponent"], scale)
    if f["model"] == PLATEAU:
        return np.full(steps.shape, f["level"])
    if f["model"] == TREND:
        return f["level"] + f["slope"] * np.log2(steps / scale)
    return np.full(steps.shape, np.nan)


def _round(steps: float) -> str:
    return f"{float(f'{steps:.2g}'):,.0f}"


def describe(f) -> str:
    """In words, how ``f`` (a row of ``fits``) extrapolates its claim, and to what."""
    at = f"{f['target_steps']:,.0f} steps"
    slope = f"{f['slope']:+.2g} [{f['slope_lo']:+.2g}, {f['slope_hi']:+.2g}] per doubling"
    if f["model"] == POWER_LAW:
        return (f"a power law with a floor ({f['floor']:.3g}) extrapolates it to {at}: {f['extrapolated']:.3g} "
                f"[{f['lo']:.3g}, {f['hi']:.3g}]")
    if f["model"] == PLATEAU:
        return (f"a plateau over the largest {TAIL} budgets (slope {slope}) extrapolates it to {at}: "
                f"{f['extrapolated']:.3g} [{f['lo']:.3g}, {f['hi']:.3g}]")
    if f["model"] == TREND:
        way = "falling" if f["slope_hi"] < 0 else "rising"
        return (f"still {way} over the largest {TAIL} budgets ({slope}): in [{f['lo']:.3g}, {f['hi']:.3g}] at {at} "
                f"if it goes on {way}")
    return NO_FIT


def settle(f, threshold: float) -> tuple[str, float]:
    """What would settle an inconclusive extrapolation ``f`` (a row of ``fits``), and for a trend
    the budget: where the largest budget's interval, moved along the trend, would clear the
    threshold (at the fitted slope, and the range over the slope's interval); for a power law or a
    plateau, the seeds at each budget that would narrow its interval enough
    (``claims.seeds_to_settle``, from its half-width on the threshold's side)."""
    if f["model"] == TREND:
        falling = f["slope_hi"] < 0
        end = f["last_mean"] + f["last_ci"] if falling else f["last_mean"] - f["last_ci"]
        gap = threshold - end  # the way the trailing end has to move, at ``s`` per doubling
        at = [f["last"] * np.exp2(min(gap / s, 200.0)) if gap * s > 0 else f["last"] if gap == 0 else np.inf
              for s in (f["slope"], f["slope_lo"], f["slope_hi"])]  # (200 doublings: "over 100 × the paper's")
        lo, hi = sorted(at[1:])
        far = 100 * f["target_steps"]  # budgets beyond this are "never" for any purpose

        def budget(steps):
            return f"over {_round(far)}" if not steps <= far else _round(steps)

        when = (f"at about {budget(at[0])} steps" + (", beyond the paper's budget" if at[0] > f["target_steps"] else "")
                if np.isfinite(at[0]) else "never at its fitted slope")
        return (f"the trend, if it went on, would settle it {when} ({budget(lo)} to {budget(hi)} over its slope's "
                "interval)"), float(at[0])
    if f["model"] in (POWER_LAW, PLATEAU):
        x = f["extrapolated"]
        needed = seeds_to_settle(x, f["hi"] - x if x < threshold else x - f["lo"], int(f["n"]), threshold)
        return (f"about {needed} seeds at each budget would settle it, if the spread stays" if needed else
                f"over 1,000 seeds at each budget would be needed to settle it: it lies {abs(x - threshold):.2g} "
                "from the threshold"), np.nan
    return "", np.nan


def measure_bounds(figure: Figure, claim: str) -> tuple[float, float]:
    """The values the measure of ``figure``'s claim ``claim`` (its statement, as measured) can take:
    its ``ClaimSpec.bounds``; unbounded for a claim the figure no longer declares."""
    for spec in figure.claims:
        if spec.blank(budget_config(figure, 1.0)).claim == claim:
            return spec.bounds
    return (-np.inf, np.inf)


def interval_verdict(lo: float, hi: float, threshold: float, side: str) -> str:
    """``holds`` when the whole interval ``[lo, hi]`` is on the claim's side, ``doesn't`` when it
    is all on the other side, else ``inconclusive`` (the claims' ``RULE``)."""
    if np.isnan(lo) or np.isnan(hi):
        return INCONCLUSIVE
    ok = SIDES[side]
    ends = (ok(lo, threshold), ok(hi, threshold))
    return HOLDS if all(ends) else FAILS if not any(ends) else INCONCLUSIVE


def in_figure_order(measured: pd.DataFrame) -> pd.DataFrame:
    """The measurements with the figures in their registered order (each figure's rows as they
    were), whatever order they were measured in: the fits, the curves and the panels follow it."""
    position = {name: i for i, name in enumerate(figure_names())}
    key = measured.figure.map(lambda f: position.get(f, len(position)))
    return measured.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def fits(measured: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """One row per claim: its verdict at the largest budget, its convergence by doubling, the model
    the data support (``extrapolate``) and the extrapolation to the paper's budget with its verdict,
    in words (``extrapolation``), and, where that verdict is inconclusive, what would settle it
    (``settle``; ``settle_steps`` for a trend)."""
    rows = []
    for claim, t in measured.groupby("claim", sort=False):
        t = t.sort_values("steps")
        last, half = t.iloc[-1], t[t.fraction == 0.5]
        figure = get_figure(last.figure)
        # the paper's budget (the figure's paper preset), else ten times the largest measured
        target = float(getattr(figure.presets.get("paper"), "steps", 10 * t.steps.max()))
        ok = t[np.isfinite(t["mean"])]
        f = extrapolate(ok.steps, ok["mean"], ok.ci, ok.n, target, cfg.n_boot, cfg.seed, measure_bounds(figure, claim))
        moved = abs(last["mean"] - half["mean"].iloc[0]) if len(half) else np.nan
        # the 95 % half-width of the change: the two budgets' runs are independent
        spread = float(np.hypot(last.ci, half.ci.iloc[0])) if len(half) else np.nan
        converged = "?" if not (np.isfinite(moved) and np.isfinite(spread)) else "yes" if moved < spread else "no"
        row = {"claim": claim, "figure": last.figure, "steps": int(last.steps), "n": int(last.n),
               "mean": last["mean"], "ci": last.ci, "threshold": last.threshold, "side": last.side,
               "verdict": last.verdict, "moved_by_doubling": moved, "converged": converged, **f,
               "verdict_extrapolated": interval_verdict(f["lo"], f["hi"], last.threshold, last.side)}
        row["extrapolation"] = describe(row)
        seeds = int(ok.n.iloc[-1]) if len(ok) else 0  # at the largest budget measured: its seeds would be added to
        row["settle"], row["settle_steps"] = settle({**row, "n": seeds}, last.threshold) \
            if row["verdict_extrapolated"] == INCONCLUSIVE else ("", np.nan)
        rows.append(row)
    return pd.DataFrame(rows)


def curves(measured: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """``claims-scaling.csv``: per claim, the measured points, the fitted model at each budget it was
    fitted on, and the extrapolation, one row each (``kind``: measured, fit, extrapolated; ``model``:
    the fit's and the extrapolation's, ``extrapolate``)."""
    rows = []
    for _, f in table.iterrows():
        t = measured[measured.claim == f.claim].sort_values("steps")
        ok = t[np.isfinite(t["mean"])]  # the budgets the model was fitted on
        scale = ok.steps.max()
        along = set(ok.steps) if f.model == POWER_LAW else set(ok.steps.iloc[-TAIL:])
        for _, r in t.iterrows():
            rows.append({"claim": f.claim, "figure": f.figure, "kind": "measured", "steps": int(r.steps),
                         "value": r["mean"], "lo": r["mean"] - r.ci, "hi": r["mean"] + r.ci, "n": int(r.n),
                         "threshold": f.threshold, "side": f.side, "verdict": r.verdict, "model": ""})
            if f.model and r.steps in along:
                rows.append({"claim": f.claim, "figure": f.figure, "kind": "fit", "steps": int(r.steps),
                             "value": float(fitted(f, r.steps, scale)), "lo": np.nan, "hi": np.nan, "n": int(r.n),
                             "threshold": f.threshold, "side": f.side, "verdict": "", "model": f.model})
        rows.append({"claim": f.claim, "figure": f.figure, "kind": "extrapolated", "steps": int(f.target_steps),
                     "value": f.extrapolated, "lo": f.lo, "hi": f.hi, "n": int(f.n), "threshold": f.threshold,
                     "side": f.side, "verdict": f.verdict_extrapolated, "model": f.model})
    return pd.DataFrame(rows)


class ClaimsScaling(Figure):
    """``claims-scaling``: every trained-model claim measured at several training budgets, fitted and extrapolated
    to the paper's budget."""

    name = NAME
    Config = Config
    presets = {"long": Config()}
    demo = {"train": False}  # the demo fits the zoo's measurements: it trains nothing
    zoo = False  # the zoo ships the long tier (the other figures' runs), not the smaller budgets

    def runs(self, cfg: Config) -> dict:
        """Every budget's training runs of every figure measured (none with ``train=False``)."""
        if not cfg.train:
            return {}
        return {(f.name, q, key): tc for f in figures_run(cfg) for q in cfg.budgets
                for key, tc in f.runs(budget_config(f, q)).items()}

    def compute(self, cfg: Config, out: Path, progress: bool = True) -> Result:
        """With ``train``, measure the figures whose rows in ``claims-scaling-measured.csv`` are missing or rest on
        other runs, configs or claims, and add them to the file; then fit each claim.  The table: ``curves``;
        extras: ``fits`` and ``measured``."""
        from icmix.experiments.common import train_runs
        from icmix.io import atomic_write

        out = Path(out)
        path = out / MEASURED
        figures = long_figures(cfg)
        # the whole file (other figures' rows are kept when it is written again), and these figures' rows
        kept = pd.read_csv(path, dtype={"runs": str, "figure": str, "claim": str}) if path.exists() else None
        measured = None
        if kept is not None:
            expected = {f.name: runs_digest(f, cfg) for f in figures}
            measured = kept[kept.figure.isin(expected)].reset_index(drop=True)
            digests = measured.groupby("figure").runs.unique()
            stale = sorted(f for f, d in digests.items() if list(d) != [expected[f]])
            if stale and cfg.train:  # measured on what this code no longer names: measured again
                if progress:
                    print(f"{NAME}: measuring {', '.join(stale)} again (their measurements in {path.name} rest on "
                          "other runs, evaluation configs or claims than this code names)")
                measured = measured[~measured.figure.isin(stale)].reset_index(drop=True)
                kept = kept[~kept.figure.isin(stale)].reset_index(drop=True)
            elif stale:
                raise ValueError(f"{path} was measured on other training runs, evaluation configs or claims than this "
                                 f"code names (figures {', '.join(stale)}): measure them again with "
                                 f"`icmix reproduce {NAME} --preset long`")
        elif not cfg.train:
            raise ValueError(f"no {MEASURED} in {out} to fit (the model zoo ships the long tier's; with train=True "
                             "the figure trains every budget's runs and measures them)")
        # With train, the figures the file lacks are measured and added (figures=... adds them one at a time).
        todo = tuple(f.name for f in figures  # (a figure's claims are filed under the figure declaring them)
                     if f.claims and (measured is None or f.name not in set(measured.figure)))
        if cfg.train and todo:
            more = dataclasses.replace(cfg, figures=todo)
            train_runs(out, list(self.runs(more).values()), progress=progress)  # reused where finished
            new = measure(more, out, progress)
            measured = new if measured is None else pd.concat([measured, new], ignore_index=True)
            kept = new if kept is None else pd.concat([kept, new], ignore_index=True)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda p: kept.to_csv(p, index=False))
        if measured is None or measured.empty:
            raise ValueError(f"{path} holds no measurements of {', '.join(f.name for f in figures)}")
        measured, kept = in_figure_order(measured), in_figure_order(kept)
        table = fits(measured, cfg).assign(measurements=origin(out))
        # ("measured" is saved as claims-scaling-measured.csv itself: the whole file, every figure's rows)
        return Result(curves(measured, table), extra={"fits": table, "measured": kept})

    def draw(self, result: Result, cfg: Config):
        """A panel per claim: the measure at each budget, the model fitted to it (``extrapolate``), the
        extrapolation's interval at the paper's budget, and the claim's threshold."""
        import matplotlib.pyplot as plt

        table = result.extra["fits"]
        k = max(len(table), 1)
        cols = min(3, k)
        rows = -(-k // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.6 * rows), squeeze=False)
        for ax in axes.flat[k:]:
            ax.axis("off")
        for ax, (_, f) in zip(axes.flat, table.iterrows()):
            t = result.table[result.table.claim == f.claim]
            m = t[t.kind == "measured"]
            ax.errorbar(m.steps, m.value, yerr=m.value - m.lo, fmt="o", color="black", capsize=3, label="measured")
            if f.model == POWER_LAW:
                grid = np.geomspace(m.steps.min(), f.target_steps, 100)
                shape = (f"floor {f.floor:.3g}, exponent {f.exponent:.2g}" if f.exponent >= 0.01 else
                         "a log-linear trend (exponent → 0)")
                ax.plot(grid, fitted(f, grid, m[np.isfinite(m.value)].steps.max()), color="tab:blue",
                        label=f"fit: {shape}")
            elif f.model:
                line = t[t.kind == "fit"]
                ax.plot(line.steps, line.value, color="tab:blue", lw=2,
                        label=f"{f.model} over the largest {TAIL} budgets ({f.slope:+.2g} per doubling)")
                if f.model == PLATEAU:
                    ax.plot([line.steps.max(), f.target_steps], [f.level] * 2, color="tab:blue", ls=":")
            if f.model:
                # The extrapolation's interval; an end beyond the panel (a trend's, at the end of the measure's
                # range) is an arrowhead at the panel's edge, labelled with its value.  A trend's has no point.
                bottom, top = ax.get_ylim()
                shown = [f.threshold, *([f.lo, f.hi] if f.model != TREND else [])]  # a trend's far end may be far
                bottom, top = min(bottom, *shown), max(top, *shown)
                margin = 0.03 * (top - bottom)
                bottom, top = bottom - margin, top + margin
                lo, hi = max(f.lo, bottom), min(f.hi, top)
                ax.vlines(f.target_steps, lo, hi, color="tab:blue", lw=2,
                          label=f"paper budget: {f.verdict_extrapolated}")
                for end, edge, marker, inside in ((f.lo, lo, "v", f.lo >= bottom), (f.hi, hi, "^", f.hi <= top)):
                    ax.plot([f.target_steps], [edge], "_" if inside else marker, color="tab:blue", ms=12 if inside else 7)
                    if not inside:
                        ax.annotate(f"{end:.3g}", (f.target_steps, edge), textcoords="offset points", xytext=(-22, -3),
                                    fontsize=7, color="tab:blue")
                if f.model != TREND:
                    ax.plot([f.target_steps], [f.extrapolated], "s", color="tab:blue")
                ax.set_ylim(bottom, top)
            ax.axhline(f.threshold, color="tab:red", ls="--", lw=1, label=f"threshold ({f.side} {f.threshold:g})")
            ax.set_xscale("log")
            ax.set_xlabel("training steps")
            ax.set_title("\n".join(_wrap(f.claim, 48)), fontsize=8)
            ax.legend(fontsize=6)
        fig.suptitle("Each claim's measure against the training budget (long tier), fitted and extrapolated")
        fig.tight_layout()
        return fig

    def report(self, result: Result, cfg: Config) -> str:
        """A Markdown row per claim: the measure at the largest budget, how far doubling moved it, whether it
        converged, and the extrapolation with its verdict."""
        table = result.extra["fits"]
        lines = ["| claim | at the largest budget | doubling moved it by | converged | extrapolated to the paper's "
                 "budget | verdict there |", "|---|---|---|---|---|---|"]
        for _, f in table.iterrows():
            settled = f": {f.settle}" if isinstance(f.settle, str) and f.settle else ""
            there = f"{f.extrapolation} | " + (f"{f.verdict_extrapolated}{settled}"
                                               if isinstance(f.model, str) and f.model else "–")
            value = f"{f['mean']:.3g} ± {f.ci:.2g}" if np.isfinite(f["mean"]) else "no data"
            moved = f"{f.moved_by_doubling:.2g}" if np.isfinite(f.moved_by_doubling) else "–"
            lines.append(f"| {f.claim} | {value} ({f.n} seeds, {f.steps} steps): {f.verdict} | {moved} | "
                         f"{f.converged} | {there} |")
        return "\n".join(lines) + f"\n\nConvergence: {CONVERGENCE}.\n\nExtrapolation: {MODELS}."


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width)[:3]


FIGURE = ClaimsScaling()
