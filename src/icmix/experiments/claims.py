"""The claims table: each row is one claim of a paper, tested by one quantity read off the
figures' tables (the CSVs ``icmix reproduce`` writes), with its mean and 95% Student-t interval
over seeds and a verdict: ``holds``, ``doesn't``, ``not converged`` (it fails, but on training
runs that were still improving, so more training may change it), ``not run`` (a figure it needs
failed or was not run) or ``no data``.  The ``converged`` column says whether the training runs
a claim rests on converged (``icmix.train.convergence.DEFINITION``; ``–`` for claims with no
trained model).  Verdicts compare the mean over seeds with the stated threshold (with two seeds
a Student-t interval is too wide to decide anything); the d² ranking alone is a paired test,
over prompts.

Every test is stated in the row's ``test`` column, threshold included, so a reader can disagree
with a threshold and still use the number.  A claim reads only the CSVs under ``OUT``: the
report can be rebuilt without recomputing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from icmix.evaluate import Key
from icmix.families.mixlinreg import OLS, PM_EM, PM_ORACLE, PM_SA
from icmix.families.mtd import BAYES, MD1
from icmix.metrics import mean_ci

HOLDS, FAILS, NOT_RUN, NO_DATA = "holds", "doesn't", "not run", "no data"
NOT_CONVERGED = "not converged"  # fails, but on training runs that were still improving



class MissingRows(LookupError):
    """A claim's figure ran, but its table has no rows the claim needs (a figure run with
    other settings, e.g. no m = 20).  Any other error in a claim is a bug and propagates."""


def _select(t: pd.DataFrame, what: str, **where) -> pd.DataFrame:
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


def _by_key(t: pd.DataFrame, index, values: str, keys: list, what: str) -> pd.DataFrame:
    """``values`` pivoted to one column per key (``Key`` or key-id string) in ``keys``, indexed by ``index``."""
    ids = [k.id if isinstance(k, Key) else k for k in keys]
    for k in ids:
        _select(t, what, key=k)
    return t[t.key.isin(ids)].pivot_table(index=index, columns="key", values=values)[ids]


def _trained_key(t: pd.DataFrame, what: str, **where) -> str:
    """The key id of the one trained model in ``t`` matching ``where`` (model_kind, depth, loss)."""
    ids = _select(t, what, predictor="trained", **where)["key"].unique()
    if len(ids) > 1:  # the claim's selection is too loose for this table: a bug, not missing data
        raise ValueError(f"{what}: expected one trained model with {where}, found {list(ids)}")
    return ids[0]


@dataclass
class Claim:
    paper: str
    claim: str
    test: str
    figures: tuple[str, ...]
    value: str = ""
    verdict: str = NOT_RUN
    mean: float = float("nan")
    ci: float = float("nan")
    note: str = ""
    converged: str = "–"  # yes / no for the trained runs the claim rests on; – where there are none


def claim(paper: str, text: str, test: str, figures: tuple[str, ...], trained: tuple | None = None):
    """Attach a claim's statement to the function that tests it: ``fn(c, out, *configs)`` fills
    in ``c``'s value and verdict.  ``text`` and ``test`` may name ``{cfg.field}``, ``{m}``,
    ``{k}`` (= 2d) and ``{n}`` (the smallest fixed training set), filled in from the figure's config.

    ``trained = (figure, uses)`` names the training runs the claim rests on: the runs of
    ``figure`` whose ``TrainConfig`` satisfies ``uses(tc, cfg, **extra)``; their convergence
    fills the ``converged`` column, and a failing claim on unconverged runs reads ``not converged``."""
    def attach(fn):
        fn.claim = (paper, text, test, figures)
        fn.trained = trained
        return fn
    return attach


def _order(tc) -> int:
    return tc.task.order


def _depth(tc) -> int:
    return tc.model.params.get("n_layers")


def _fmt(mean: float, ci: float, n: int, digits: int = 3) -> str:
    if n < 2 or not np.isfinite(ci):
        return f"{mean:.{digits}g} ({n} seed{'s' if n != 1 else ''})"
    return f"{mean:.{digits}g} ± {ci:.2g} ({n} seeds)"


def _seeds(values) -> tuple[float, float, int, str]:
    """Mean, CI half-width, number of seeds and the formatted value of per-seed values."""
    v = np.asarray(list(values), dtype=np.float64)
    mean, _, ci = mean_ci(v)
    return mean, ci, v.size, _fmt(mean, ci, v.size)


def _verdict(ok: bool) -> str:
    return HOLDS if ok else FAILS


def _read(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(Path(out) / f"{name}.csv")


# --- MTD (D'Angelo & Flammarion) -------------------------------------------------------------

@claim("MTD", "The hand-built 3-layer disentangled transformer computes exactly one step of mirror descent",
       "max |construction − one-step MD| over fresh sequences, orders and seeds (float64); holds if < 1e-10",
       ("mtd-construction",))
def construction_md(c: Claim, out: Path) -> Claim:
    t = _read(out, "mtd-construction")
    worst = t.groupby("seed")["max_error"].max()
    c.mean, c.value = float(worst.max()), f"{worst.max():.1e} (worst of {len(t)} checks, {len(worst)} seeds)"
    c.verdict = _verdict(c.mean < 1e-10)
    return c


@claim("MTD", "One-step MD is close to Bayes at short lengths and falls behind at long lengths",
       "KL(MD 1-step) / KL(Bayes) at the shortest and longest length; holds if ≤ 1.1 at the shortest and "
       "at least 5% larger at the longest", ("mtd-fig3",))
def md_vs_bayes(c: Claim, out: Path) -> Claim:
    t = _read(out, "mtd-fig3")
    kl = _by_key(t, ["seed", "length"], "kl_mean", [MD1, BAYES], "mtd-fig3")
    ratio = (kl[MD1.id] / kl[BAYES.id]).unstack("length")
    short, long_ = ratio.iloc[:, 0], ratio.iloc[:, -1]
    ms, cs, n, _ = _seeds(short)
    ml, cl, _, _ = _seeds(long_)
    c.mean, c.ci = ml, cl
    c.value = (f"T={ratio.columns[0]}: {_fmt(ms, cs, n)}; T={ratio.columns[-1]}: {_fmt(ml, cl, n)}")
    c.verdict = _verdict(ms <= 1.1 and ml >= 1.05 * ms)
    return c


def _kl_ratio_to_md(out: Path, figure: str, length: int, by=("seed",), **model) -> pd.Series:
    """KL(trained model) / KL(one-step MD, tuned η) at ``length``, per ``by`` (seed, and order
    where a figure has several); ``model``: the trained model's key fields (model_kind, depth, loss)."""
    t = _select(_read(out, figure), figure, length=length)
    trained = _trained_key(t, figure, **model)
    at = _by_key(t, list(by), "kl_mean", [trained, MD1], figure)
    return at[trained] / at[MD1.id]


def _fig4_agreement(out: Path, metric: str, **where) -> pd.DataFrame:
    """The trained disentangled model's rows of ``metric`` in Fig. 4's agreement table."""
    return _select(_read(out, "mtd-fig4-agreement"), "mtd-fig4-agreement", model_kind="disentangled", metric=metric, **where)


@claim("MTD", "A trained 3-layer disentangled transformer predicts like the construction (one MD step)",
       "KL(true ‖ trained) / KL(true ‖ one-step MD, tuned η) at the training length T={cfg.length}; holds if ≤ 1.1",
       ("mtd-fig4",), trained=("mtd-fig4", lambda tc, cfg: tc.model.kind == "disentangled"))
def trained_vs_construction(c: Claim, out: Path, cfg) -> Claim:
    ratio = _kl_ratio_to_md(out, "mtd-fig4", cfg.length, model_kind="disentangled")
    c.mean, c.ci, _, c.value = _seeds(ratio)
    c.verdict = _verdict(c.mean <= 1.1)
    kl = _fig4_agreement(out, "kl_construction")["value"]
    c.note = f"KL(construction ‖ trained) = {_seeds(kl)[3]}"
    return c


@claim("MTD", "Its attention maps are the construction's, layer by layer",
       "cosine of the trained model's attention rows with the construction's, worst layer (mean over "
       "sequences); holds if ≥ 0.9", ("mtd-fig4",), trained=("mtd-fig4", lambda tc, cfg: tc.model.kind == "disentangled"))
def attention_vs_construction(c: Claim, out: Path) -> Claim:
    a = _fig4_agreement(out, "attention_cosine")
    worst = a.groupby("seed")["value"].min()
    c.mean, c.ci, _, c.value = _seeds(worst)
    per_layer = a.groupby("layer")["value"].mean()
    c.note = "; ".join(f"layer-{int(k)} {v:.3f}" for k, v in per_layer.items())
    c.verdict = _verdict(c.mean >= 0.9)
    return c


@claim("MTD", "Layer 1 attends to the m lagged tokens (the construction's support)",
       "layer-1 attention mass on lag offsets 1..m; holds if ≥ 0.9", ("mtd-fig4",),
       trained=("mtd-fig4", lambda tc, cfg: tc.model.kind == "disentangled"))
def layer1_lag_mass(c: Claim, out: Path) -> Claim:
    v = _fig4_agreement(out, "lag_mass", layer=1)
    c.mean, c.ci, _, c.value = _seeds(v.groupby("seed")["value"].mean())
    c.verdict = _verdict(c.mean >= 0.9)
    return c


@claim("MTD", "Layer 1's token-token scores learn the transition matrix π, better with longer training sequences",
       "mean row KL(π[a] ‖ softmax(A1ᵀ)[a]) at the longest training length, order 3; holds if below "
       "KL(π ‖ uniform) / 4 and below its value at the shortest length", ("mtd-fig7",),
       trained=("mtd-fig7", lambda tc, cfg: _order(tc) == min(cfg.orders)))
def layer1_is_pi(c: Claim, out: Path, cfg) -> Claim:
    from icmix.tasks import MTDTask

    t = _read(out, "mtd-fig7")
    m = sorted(t.order.unique())[0]
    t = t[t.order == m].pivot_table(index="seed", columns="length", values="row_kl")
    uniform = []
    for seed in t.index:
        pi = MTDTask(cfg.vocab_size, m, seed=int(seed)).transition.double().numpy()
        uniform.append(float((pi * np.log(pi * pi.shape[1])).sum(1).mean()))
    long_, short = t.iloc[:, -1], t.iloc[:, 0]
    c.mean, c.ci, n, _ = _seeds(long_)
    ms, cs, _, _ = _seeds(short)
    c.value = f"T={t.columns[-1]}: {_fmt(c.mean, c.ci, n)}; T={t.columns[0]}: {_fmt(ms, cs, n)}"
    c.note = f"KL(π ‖ uniform) = {np.mean(uniform):.3f}"
    c.verdict = _verdict(c.mean < np.mean(uniform) / 4 and c.mean < ms)
    return c


@claim("MTD", "A 5-layer transformer implements more than one MD step (it beats one-step MD)",
       "KL(5-layer) / KL(one-step MD, tuned η) at T={cfg.length}, and the k-step MD its predictions are "
       "closest to; holds if the ratio is below 1", ("mtd-fig5",),
       trained=("mtd-fig5", lambda tc, cfg: _depth(tc) == cfg.depth and tc.loss == cfg.loss))
def deeper_is_multistep(c: Claim, out: Path, cfg) -> Claim:
    ratio = _kl_ratio_to_md(out, "mtd-fig5", cfg.length, model_kind="disentangled", depth=cfg.depth, loss=cfg.loss)
    c.mean, c.ci, n, c.value = _seeds(ratio)
    track = _select(_read(out, "mtd-fig5-tracking"), "mtd-fig5-tracking", length=cfg.length)
    track = track.groupby("k")["kl_md_to_model"].mean()
    c.value += f"; closest to k = {int(track.idxmin())}"
    c.verdict = _verdict(c.mean < 1)
    return c


@claim("MTD (beyond)", "A standard GPT-style transformer also learns in context, at both orders",
       "KL(trained GPT) / KL(one-step MD, tuned η) at T={cfg.length}, worst order; holds if ≤ 1.25",
       ("mtd-fig6",), trained=("mtd-fig6", lambda tc, cfg: tc.model.kind == "gpt"))
def standard_transformer(c: Claim, out: Path, cfg) -> Claim:
    ratio = _kl_ratio_to_md(out, "mtd-fig6", cfg.length, ("seed", "order"), model_kind="gpt").groupby("seed").max()
    c.mean, c.ci, _, c.value = _seeds(ratio)
    c.verdict = _verdict(c.mean <= 1.25)
    return c


@claim("MTDg (beyond)", "With one transition matrix per lag, a transformer still computes one MD step exactly: "
       "the paper's 3 attention layers between two ReLU MLPs",
       "max |construction − one-step MD (per-lag π_g)| over fresh sequences and seeds (float64); holds if < 1e-10",
       ("mtdg",))
def mtdg_construction(c: Claim, out: Path) -> Claim:
    t = _read(out, "mtdg-check")
    c.mean = float(t["max_error"].max())
    c.value = f"{c.mean:.1e} (worst of {len(t)} seeds)"
    c.verdict = _verdict(c.mean < 1e-10)
    c.note = (f"the paper's single-head layer 1 cannot: log π_g has a lag × source × target interaction of "
              f"{t['three_way_interaction'].min():.2f}–{t['three_way_interaction'].max():.2f}")
    return c


@claim("MTDg (beyond)", "A standard GPT-style transformer learns MTDg in context",
       "KL(trained GPT) / KL(one-step MD with the per-lag π_g, tuned η) at T={cfg.length}; holds if ≤ 1.25",
       ("mtdg",), trained=("mtdg", lambda tc, cfg: tc.model.kind == "gpt"))
def mtdg_standard(c: Claim, out: Path, cfg) -> Claim:
    ratio = _kl_ratio_to_md(out, "mtdg", cfg.length, model_kind="gpt")
    c.mean, c.ci, _, c.value = _seeds(ratio)
    c.verdict = _verdict(c.mean <= 1.25)
    return c


@claim("MTDg (beyond)", "The paper's 3-layer single-head disentangled transformer predicts MTDg like one-step MD",
       "KL(trained 3-layer disentangled) / KL(one-step MD with the per-lag π_g, tuned η) at T={cfg.length}; "
       "holds if ≤ 1.1 (as on MTD)", ("mtdg",), trained=("mtdg", lambda tc, cfg: tc.model.kind == "disentangled"))
def mtdg_disentangled(c: Claim, out: Path, cfg) -> Claim:
    ratio = _kl_ratio_to_md(out, "mtdg", cfg.length, model_kind="disentangled")
    c.mean, c.ci, _, c.value = _seeds(ratio)
    c.verdict = _verdict(c.mean <= 1.1)
    c.note = "its layer 1 cannot score lags per matrix (see the construction's row), so it cannot be exact"
    return c


def _text_curve(t: pd.DataFrame, key: str, order: int, matrices: str) -> pd.Series:
    return _select(t, "text", key=key, order=order, matrices=matrices).groupby("length")["ce_mean"].mean()


@claim("Text (beyond)", "On real text, in-context lag weights beat one global λ from some window length on",
       "CE(global λ) − CE(in-context Bayes λ, empirical prior), paired over the same held-out windows, per-lag π_g, "
       "m = {cfg.model_order}; the shortest length from which its 95% interval stays above 0 (value: that length, "
       "and the gain at the longest); holds if there is one", ("text",))
def text_in_context(c: Claim, out: Path, cfg) -> Claim:
    g = _select(_read(out, "text-gain"), "text-gain", order=cfg.model_order, matrices="per-lag").set_index("length")
    above = g.gain_mean - g.gain_ci > 0
    ahead = [L for L in g.index if above.loc[L:].all()]
    last = g.iloc[-1]
    c.mean, c.ci = float(last.gain_mean), float(last.gain_ci)
    c.value = (f"from T = {ahead[0]} on" if ahead else "never") + \
        f"; gain at T={g.index[-1]}: {c.mean:+.4f} ± {c.ci:.4f} nats/char ({int(last.n)} windows)"
    c.verdict = _verdict(bool(ahead))
    return c


@claim("Text (beyond)", "A transformer trained only on synthetic MTDg (π_g fitted to the text) comes close to "
       "exact Bayes on the real text",
       "100 (CE(synthetic-trained GPT) / CE(exact Bayes, Dirichlet(1), per-lag π_g, m = {cfg.model_order}) − 1) "
       "at the longest window (%); holds if ≤ 5", ("text",),
       trained=("text", lambda tc, cfg: tc.task.kind == "mtdg-text"))
def text_synthetic(c: Claim, out: Path, cfg) -> Claim:
    from icmix.experiments.text import BAYES_UNIFORM, SYNTHETIC, bayes_key

    t, m = _read(out, "text"), cfg.model_order
    longest = t.length.max()
    bayes = _text_curve(t, bayes_key(t, m, BAYES_UNIFORM), m, "per-lag").loc[longest]
    synthetic = _select(t, "text", predictor="trained", variant=SYNTHETIC, length=longest)
    gap = 100 * (synthetic.groupby("matrices")["ce_mean"].mean() / bayes - 1)
    c.mean, c.ci, _, c.value = _seeds(gap)
    c.value += " %"
    c.verdict = _verdict(c.mean <= 5)
    return c


# --- Regression mixtures (Pathak et al.) -----------------------------------------------------

@claim("MLR", "A transformer can compute the posterior mean exactly (the paper's construction, built here)",
       "max relative error of the GELU construction vs `posterior_mean`, shifted prompts included; holds if < 1e-4",
       ("mlr-construction",))
def construction_pm(c: Claim, out: Path) -> Claim:
    t = _read(out, "mlr-construction")
    c.mean = float(t.relative_error.max())
    c.value = f"{c.mean:.1e} (worst of {len(t)} checks, {t.seed.nunique()} seeds)"
    c.verdict = _verdict(c.mean < 1e-4)
    return c


@claim("MLR", "The trained transformer is as good as the posterior mean (m = {m}, σ = 1)",
       "NMSE(transformer) / NMSE(posterior mean, oracle weights) at k = 2d = {k}; holds if ≤ 1.2",
       ("mlr-fig2",), trained=("mlr-fig2", lambda tc, cfg, m: tc.task.n_components == m and tc.task.noise == 1.0))
def transformer_vs_pm(c: Claim, out: Path, cfg, m: int) -> Claim:
    k = 2 * cfg.dim
    t = _read(out, "mlr-fig2")
    t = _select(t, f"mlr-fig2 (m = {m}, σ = 1)", n_components=m, noise=1.0, k=min(k, t.k.max()))
    trained = _trained_key(t, "mlr-fig2")
    at = _by_key(t, "seed", "nmse", [trained, PM_ORACLE, OLS], "mlr-fig2")
    c.mean, c.ci, _, c.value = _seeds(at[trained] / at[PM_ORACLE.id])
    c.note = f"OLS / posterior mean: {_seeds(at[OLS.id] / at[PM_ORACLE.id])[3]}"
    c.verdict = _verdict(c.mean <= 1.2)
    return c


@claim("MLR", "The transformer is closest (d²) to the posterior mean with the true weights (m = {m})",
       "share of k ≥ d/2 where no other of the six posterior-mean/argmin variants is significantly closer "
       "(paired interval of the excess d², pooled over seeds); holds if 100%", ("mlr-fig4",),
       trained=("mlr-fig4", lambda tc, cfg, m: tc.task.n_components == m))
def d2_ranking(c: Claim, out: Path, cfg, m: int) -> Claim:
    t = _select(_read(out, "mlr-fig4"), f"mlr-fig4 (m = {m})", n_components=m)
    t = t[(t.k >= cfg.dim / 2) & (t.other_key != PM_ORACLE.id)]
    if t.empty:
        raise MissingRows(f"mlr-fig4 has no rows with m = {m} and k >= d/2")
    g = t.groupby(["k", "other_key"])
    excess = g["excess"].mean()
    ci = g["excess_ci"].apply(lambda s: float(np.sqrt((s**2).sum())) / len(s))
    beaten = (excess + ci < 0).groupby("k").any()
    closest = (excess > 0).groupby("k").all()
    c.mean = float(1 - beaten.mean())
    c.value = (f"{100 * c.mean:.0f}% of {len(beaten)} k (strictly closest at {100 * closest.mean():.0f}%)")
    worst = excess[excess + ci < 0]
    if len(worst):
        labels = t.drop_duplicates("other_key").set_index("other_key")["other"]
        c.note = ("beaten by " + ", ".join(sorted({labels[o] for _, o in worst.index}))
                  + f" at k = {sorted({k for k, _ in worst.index})}")
    c.verdict = _verdict(not beaten.any())
    return c


@claim("MLR", "Trained on a fixed set of n prompts, the transformer is as sample-efficient as EM / SA plug-ins",
       "NMSE(transformer) / NMSE(best of the EM and SA posterior-mean plug-ins fitted on the same prompts) "
       "at k = 2d, smallest n = {n}; holds if ≤ 1.2", ("mlr-fig3",),
       trained=("mlr-fig3", lambda tc, cfg: tc.task.n_train == min(cfg.n_trains)))
def sample_efficiency(c: Claim, out: Path, cfg) -> Claim:
    k = 2 * cfg.dim
    n = min(cfg.n_trains)
    all_n = _read(out, "mlr-fig3")
    all_n = _select(all_n, "mlr-fig3", k=min(k, all_n.k.max()))
    trained = _trained_key(all_n, "mlr-fig3")
    t = _select(all_n, f"mlr-fig3 (n = {n})", n_train=n)
    at = _by_key(t, "seed", "nmse", [trained, PM_EM, PM_SA], "mlr-fig3")
    best = at[[PM_EM.id, PM_SA.id]].min(axis=1)
    c.mean, c.ci, _, c.value = _seeds(at[trained] / best)
    by_n = _by_key(all_n, ["n_train", "seed"], "nmse", [trained, PM_EM, PM_SA], "mlr-fig3")
    ratio = (by_n[trained] / by_n[[PM_EM.id, PM_SA.id]].min(axis=1)).groupby("n_train").mean()
    c.note = "by n: " + ", ".join(f"{n_}: {r:.2f}" for n_, r in ratio.items())
    c.verdict = _verdict(c.mean <= 1.2)
    return c


SMALL = {"covariate scale": (0.5, 2.0), "weight scale": (0.5, 2.0), "weight shift": (0.25,)}
LARGE = {"covariate scale": (1 / 3, 3.0), "weight scale": (1 / 3, 3.0), "weight shift": (1.0,)}


@claim("MLR", "The transformer is robust to small distribution shifts but not to large ones",
       "NMSE(transformer) / NMSE(posterior mean, oracle, under the same shift) at k = 2d, m = 5, σ = 1, worst "
       "of the small shifts (κ, α ∈ {{1/2, 2}}; ε = 1/4) and of the large (κ, α ∈ {{1/3, 3}}; ε = 1); "
       "holds if small ≤ 1.5 < large", ("mlr-fig5", "mlr-fig6", "mlr-fig7", "mlr-fig8", "mlr-fig9"),
       trained=("mlr-fig2", lambda tc, cfg: tc.task.n_components == 5 and tc.task.noise == 1.0))
def shift_robustness(c: Claim, out: Path, cfg) -> Claim:
    k = 2 * cfg.dim
    t = pd.concat([_read(out, f) for f in c.figures], ignore_index=True)
    t = _select(t, "mlr-fig5..9 (m = 5, σ = 1)", n_components=5, noise=1.0, k=min(k, t.k.max()))
    trained = _trained_key(t, "mlr-fig5..9")
    at = _by_key(t, ["seed", "shift", "value"], "nmse", [trained, PM_ORACLE], "mlr-fig5..9")
    ratio = (at[trained] / at[PM_ORACLE.id]).reset_index(name="ratio")

    def worst(kind):
        sel = np.zeros(len(ratio), bool)
        for shift, values in kind.items():
            sel |= (ratio["shift"] == shift).to_numpy() & np.isclose(ratio["value"].to_numpy()[:, None],
                                                                      np.array(values)[None]).any(1)
        return ratio[sel]

    small, large = worst(SMALL), worst(LARGE)
    ms, cs, n, _ = _seeds(small.groupby("seed")["ratio"].max())
    ml, cl, _, _ = _seeds(large.groupby("seed")["ratio"].max())
    c.mean, c.ci = ms, cs
    c.value = f"small: {_fmt(ms, cs, n)}; large: {_fmt(ml, cl, n)}"
    by_shift = lambda r: r.groupby(["shift", "value"])["ratio"].mean()  # noqa: E731
    c.note = ("worst small: {} {:.3g} ({:.3g}); worst large: {} {:.3g} ({:.3g})"
              .format(*by_shift(small).idxmax(), by_shift(small).max(), *by_shift(large).idxmax(), by_shift(large).max()))
    c.verdict = _verdict(ms <= 1.5 < ml)
    return c


# The claims table, in order: (test, the figure whose config it reads, extra keywords).
CLAIMS = [
    (construction_md, None, {}),
    (md_vs_bayes, None, {}),
    (trained_vs_construction, "mtd-fig4", {}),
    (attention_vs_construction, None, {}),
    (layer1_lag_mass, None, {}),
    (layer1_is_pi, "mtd-fig7", {}),
    (deeper_is_multistep, "mtd-fig5", {}),
    (standard_transformer, "mtd-fig6", {}),
    (mtdg_construction, None, {}),
    (mtdg_standard, "mtdg", {}),
    (mtdg_disentangled, "mtdg", {}),
    (text_in_context, "text", {}),
    (text_synthetic, "text", {}),
    (construction_pm, None, {}),
    (transformer_vs_pm, "mlr-fig2", {"m": 5}),
    (transformer_vs_pm, "mlr-fig2", {"m": 20}),
    (d2_ranking, "mlr-fig4", {"m": 5}),
    (d2_ranking, "mlr-fig4", {"m": 20}),
    (sample_efficiency, "mlr-fig3", {}),
    (shift_robustness, "mlr-fig2", {}),
]


def evaluate(out: Path, configs: dict, available: set[str]) -> list[Claim]:
    """Every claim of ``CLAIMS``, read off the CSVs under ``out``.  A claim needing a figure not
    in ``available`` (failed, or not run) comes back ``not run``, and one whose figure ran
    without the rows it needs (``MissingRows``: other settings) ``no data``, each with the
    reason in its note.  Any other error in a claim propagates: it is a bug, not a verdict."""
    claims = []
    for fn, config_of, extra in CLAIMS:
        paper, text, test, figures = fn.claim
        cfg = configs.get(config_of) if config_of else None
        keys = dict(cfg=cfg, **extra)
        if cfg is not None and hasattr(cfg, "dim"):
            keys["k"] = 2 * cfg.dim
        if cfg is not None and hasattr(cfg, "n_trains"):
            keys["n"] = min(cfg.n_trains)
        missing = sorted(set(figures) - available) + ([config_of] if config_of and cfg is None else [])
        try:
            c = Claim(paper, text.format(**keys), test.format(**keys), figures)
        except (AttributeError, KeyError, IndexError):
            c = Claim(paper, text, test, figures)
        if missing:
            c.note = "figure not available: " + ", ".join(sorted(set(missing)))
            c.converged = "?" if fn.trained else "–"
            claims.append(c)
            continue
        try:
            fn(c, out, *([cfg] if config_of else []), **extra)
        except MissingRows as err:
            c.verdict, c.value, c.note = NO_DATA, "", str(err)
        if fn.trained:
            c.converged = _converged(out, fn.trained, configs, extra)
            if c.verdict == FAILS and c.converged == "no":
                c.verdict = NOT_CONVERGED
        claims.append(c)
    return claims


def claim_runs(trained: tuple, configs: dict, extra: dict) -> list[str]:
    """The run names (under ``OUT/runs``) a claim's ``trained = (figure, uses)`` selects."""
    from icmix.experiments.common import run_name
    from icmix.experiments.figure import get_figure

    figure, uses = trained
    cfg = configs.get(figure)
    if cfg is None:
        return []
    return [run_name(tc) for tc in get_figure(figure).runs(cfg).values() if uses(tc, cfg, **extra)]


def _converged(out: Path, trained: tuple, configs: dict, extra: dict) -> str:
    """``yes`` if every run the claim rests on converged (``icmix.train.convergence``), ``no``
    if one did not, ``?`` if a run is missing or cannot be judged."""
    from icmix.train.convergence import run_convergence

    names = claim_runs(trained, configs, extra)
    if not names:
        return "?"
    try:
        verdicts = [run_convergence(Path(out) / "runs" / n).converged for n in names]
    except (ValueError, OSError):
        return "?"
    return "yes" if all(verdicts) else "no"


def table(claims: list[Claim]) -> pd.DataFrame:
    return pd.DataFrame([{"paper": c.paper, "claim": c.claim, "test": c.test, "measured": c.value or "—",
                          "verdict": c.verdict, "converged": c.converged, "note": c.note,
                          "figures": ", ".join(c.figures)} for c in claims])
