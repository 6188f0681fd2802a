"""The claims-scaling figure (``icmix.experiments.scaling``) and the long tier.

- the power law plus floor is recovered from exact points, and its bootstrap interval covers the
  truth; the interval verdict at its edges;
- the long preset's half budget is the cpu preset (the same run names), so the cpu zoo tier
  serves one budget;
- end to end on a tiny figure with a long preset: every budget's runs trained, each budget's claim
  equal to the mean over seeds read off the runs by hand, convergence by doubling, the fit and
  the extrapolation in ``claims-scaling.csv``, the claims table taking them, and the demo path
  (no training) fitting the same measurements; measurements of other runs are refused;
- ``zoo verify --tail`` resumes a run from its shipped tail checkpoint and ends bit-identical.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from icmix.experiments import figure as figure_mod
from icmix.experiments import scaling
from icmix.experiments.claims import Claim, evaluate, measured, read
from icmix.experiments.common import run_name, trained_runs
from icmix.experiments.figure import Result, TrainedFigure, get_figure, register_figure
from icmix.train import TrainConfig


def test_the_power_law_with_a_floor_is_recovered_and_extrapolated():
    steps = np.array([2500, 5000, 10_000, 20_000])
    truth = lambda s: 0.2 + 0.5 * (s / 20_000) ** -0.7  # noqa: E731
    f = scaling.fit(steps, truth(steps), np.full(4, 1e-4), np.full(4, 4), 500_000, n_boot=100)
    assert (f["floor"], f["amplitude"], f["exponent"]) == (pytest.approx(0.2, abs=1e-3), pytest.approx(0.5, abs=1e-3),
                                                            pytest.approx(0.7, abs=1e-3))
    assert f["extrapolated"] == pytest.approx(truth(500_000), rel=1e-3)
    assert f["lo"] <= truth(500_000) <= f["hi"] and f["hi"] - f["lo"] < 0.05
    # Noisier means give a wider interval around the same centre.
    wide = scaling.fit(steps, truth(steps), np.full(4, 0.05), np.full(4, 4), 500_000, n_boot=100)
    assert wide["hi"] - wide["lo"] > 5 * (f["hi"] - f["lo"])


def test_the_fit_keeps_the_floor_and_the_extrapolation_within_the_measures_range():
    # A ratio of errors near its floor: unconstrained, bootstrap refits put the floor (and the
    # extrapolation's interval) below 0, which a ratio cannot take.  Within [0, ∞) the interval
    # stays there and still covers the truth.
    steps, n = np.array([2500, 5000, 10_000, 20_000]), np.full(4, 4)
    truth = lambda s: 0.1 + 0.8 * (s / 20_000) ** -0.5  # noqa: E731
    ci = np.full(4, 0.15)
    free = scaling.fit(steps, truth(steps), ci, n, 500_000, n_boot=100)
    assert free["lo"] < 0  # what this guards against
    ratio = scaling.fit(steps, truth(steps), ci, n, 500_000, n_boot=100, bounds=(0.0, np.inf))
    assert ratio["floor"] == pytest.approx(0.1, abs=1e-3) and ratio["extrapolated"] == pytest.approx(truth(500_000))
    assert 0 <= ratio["lo"] <= truth(500_000) <= ratio["hi"]
    # Points heading below 0 (a ratio falling log-linearly): the free fit's floor is negative; within
    # the range the floor would end on 0, which is no fit (no extrapolation, an inconclusive verdict).
    steep = np.array([2.0, 1.55, 1.2, 0.9])
    assert scaling.fit(steps, steep, ci, n, 500_000, n_boot=20)["floor"] < 0
    none = scaling.fit(steps, steep, ci, n, 500_000, n_boot=20, bounds=(0.0, np.inf))
    assert np.isnan(none["floor"]) and np.isnan(none["extrapolated"]) and np.isnan(none["lo"])
    # A cosine rising towards a ceiling below 1 is fitted; one whose limit would pass 1 is not.
    rising = lambda s: 0.95 - 0.4 * (s / 20_000) ** -0.6  # noqa: E731
    cosine = scaling.fit(steps, rising(steps), np.full(4, 0.02), n, 500_000, n_boot=50, bounds=(0.0, 1.0))
    assert cosine["floor"] == pytest.approx(0.95, abs=1e-3) and cosine["hi"] <= 1
    past = scaling.fit(steps, np.array([0.3, 0.6, 0.8, 0.95]), np.full(4, 0.02), n, 500_000, n_boot=20,
                       bounds=(0.0, 1.0))
    assert np.isnan(past["floor"])
    with pytest.raises(ValueError, match="bounds"):
        scaling.fit(steps, steep, ci, n, 500_000, bounds=(1.0, 0.0))


def test_each_scaled_claim_declares_the_range_of_its_measure_and_fits_use_it():
    # Every claim the scaling figure measures says what values its measure can take; a ratio
    # of errors is ≥ 0, a cosine or an attention mass at most 1.
    figures = scaling.long_figures(scaling.Config())
    specs = {spec.blank(scaling.budget_config(f, 1.0)).claim: spec for f in figures for spec in f.claims
             if spec.trained}
    ratios = [s for s in specs.values() if s.test.startswith(("KL(", "NMSE(")) and ") / " in s.test]
    assert len(ratios) >= 8 and all(s.bounds == (0.0, np.inf) for s in ratios)
    maps = [s for s in specs.values() if "attention maps" in s.text or "attends" in s.text]
    assert len(maps) == 2 and all(s.bounds == (0.0, 1.0) for s in maps)
    # fits() looks each claim's range up: the steep ratio above, measured for the GPT-on-MTDg claim.
    claim = next(c for c, s in specs.items() if s.figure == "mtdg" and "GPT" in c)
    assert specs[claim].bounds == (0.0, np.inf)
    rows = [{"claim": claim, "figure": "mtdg", "fraction": q, "steps": int(q * 20_000), "mean": m, "ci": 0.15,
             "n": 4, "threshold": 1.25, "side": "<=", "verdict": "inconclusive", "runs": "x"}
            for q, m in ((0.125, 2.0), (0.25, 1.55), (0.5, 1.2), (1.0, 0.9))]
    t = scaling.fits(pd.DataFrame(rows), scaling.Config(n_boot=20))
    # Within [0, ∞) no power law fits; the trend, bounded by the ratio's 0, does (and holds below 1.25).
    assert np.isnan(t.floor[0]) and t.model[0] == scaling.TREND and t.lo[0] == 0.0
    assert t.verdict_extrapolated[0] == "holds"
    # The figure's report says so in words, never "nan"; a claim with too few budgets says there is no model.
    few = scaling.fits(pd.DataFrame(rows[2:]), scaling.Config(n_boot=20))
    text = scaling.FIGURE.report(Result(pd.DataFrame(), extra={"fits": pd.concat([t, few.assign(claim="few")])}),
                                 scaling.Config())
    row = next(line for line in text.splitlines() if line.startswith(f"| {claim} |"))
    assert "nan" not in row and "still falling" in row and "| holds |" in row, row
    row = next(line for line in text.splitlines() if line.startswith("| few |"))
    assert "nan" not in row and "the budgets support no model to extrapolate | – |" in row, row
    # The same points under a claim the figure does not declare (unbounded): the negative floor.
    t = scaling.fits(pd.DataFrame(rows).assign(claim="another claim"), scaling.Config(n_boot=20))
    assert t.floor[0] < 0


def test_the_extrapolated_verdict_is_decided_from_the_interval_at_its_edges():
    v = scaling.interval_verdict
    assert v(0.8, 0.95, 1.0, "<") == "holds" and v(0.8, 1.0, 1.0, "<") == "inconclusive"
    assert v(1.0, 1.2, 1.0, "<") == "doesn't" and v(1.0, 1.2, 1.0, "<=") == "inconclusive"
    assert v(0.91, 0.99, 0.9, ">=") == "holds" and v(float("nan"), 1.0, 1.0, "<") == "inconclusive"


def test_convergence_is_what_doubling_the_budget_moved_against_the_interval():
    rows = [{"claim": "c", "figure": "mtd-fig4", "fraction": q, "steps": int(q * 20_000), "mean": m, "ci": 0.05,
             "n": 4, "threshold": 0.9, "side": ">=", "verdict": "inconclusive", "runs": "x"}
            for q, m in ((0.125, 0.5), (0.25, 0.7), (0.5, 0.85), (1.0, 0.88))]
    t = scaling.fits(pd.DataFrame(rows), scaling.Config(n_boot=20))
    assert t.moved_by_doubling[0] == pytest.approx(0.03) and t.converged[0] == "yes"
    rows[2]["mean"] = 0.8  # moved by 0.08 > 0.05
    assert scaling.fits(pd.DataFrame(rows), scaling.Config(n_boot=20)).converged[0] == "no"


@pytest.mark.parametrize("name", ["mtd-fig4", "mtd-fig5", "mtd-fig6", "mtdg", "mlr-fig2", "mlr-fig3", "mlr-fig5"])
def test_the_half_budget_of_the_long_preset_is_the_cpu_preset(name):
    fig = get_figure(name)
    half = scaling.budget_config(fig, 0.5, demo=False)
    cpu = fig.preset("cpu")
    long = {run_name(tc) for tc in fig.runs(half).values()}
    first = {run_name(tc) for tc in fig.runs(half).values() if tc.seed < 2}  # cpu: seeds 0, 1; long: 0..3
    assert first <= {run_name(tc) for tc in fig.runs(cpu).values()} and len(long) == 2 * len(first)
    full = scaling.budget_config(fig, 1.0, demo=False)
    assert all(tc.checkpoint_every == 1000 and tc.steps % 1000 == 0 for tc in fig.runs(full).values())


# --- end to end, on a tiny figure ------------------------------------------------------------------

def tiny_run(seed: int, steps: int) -> TrainConfig:
    return TrainConfig.from_dict({
        "task": {"kind": "mtd", "vocab_size": 4, "order": 2, "seed": seed, "length": 8},
        "model": {"kind": "disentangled", "n_layers": 2, "n_heads": 1},
        "optim": {"lr": 0.01, "schedule": "cosine", "warmup_steps": 2},
        "steps": steps, "batch_size": 16, "eval_every": max(1, steps // 4), "eval_size": 32, "seed": seed,
        "checkpoint_every": steps})


@dataclass(frozen=True)
class TinyConfig:
    steps: int = 64
    seeds: tuple[int, ...] = (0, 1, 2)

    def runs(self) -> dict:
        return {s: tiny_run(s, self.steps) for s in self.seeds}


class TinyLong(TrainedFigure):
    name, Config, presets = "tiny-long", TinyConfig, {"long": TinyConfig()}

    def compute(self, cfg, out, progress=True):
        paths = trained_runs(out, cfg.runs(), progress=False)
        rows = [{"seed": s, "kl": final_kl(p)} for s, p in paths.items()]
        return Result(pd.DataFrame(rows))

    def draw(self, result, cfg):
        import matplotlib.pyplot as plt

        return plt.figure()


def final_kl(run: Path) -> float:
    return [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()][-1]["eval_kl"]


TINY = TinyLong()


@TINY.claim("Tiny", "The tiny model's final KL is below 10", "final eval KL; holds if < 10",
            trained=lambda tc, cfg: True)
def tiny_claim(c: Claim, out: Path, cfg) -> Claim:
    return measured(c, read(out, "tiny-long").kl, 10, "<")


@TINY.claim("Tiny", "The tiny model's final KL is below -1", "final eval KL; holds if < -1",
            trained=lambda tc, cfg: True)
def tiny_fails(c: Claim, out: Path, cfg) -> Claim:
    return measured(c, read(out, "tiny-long").kl, -1, "<")


@pytest.fixture
def tiny_figure():
    register_figure(TINY)
    yield TINY
    figure_mod._FIGURES.pop("tiny-long", None)


def test_claims_scaling_end_to_end_on_a_tiny_figure(tiny_figure, tmp_path):
    cfg = scaling.Config(figures=("tiny-long",), n_boot=50)
    fig = get_figure("claims-scaling")
    runs = fig.runs(cfg)
    assert sorted({tc.steps for tc in runs.values()}) == [8, 16, 32, 64] and len(runs) == 12
    out = tmp_path / "out"
    fig.run(cfg, out, progress=False)
    m = pd.read_csv(out / scaling.MEASURED)
    assert list(m.steps) == [8, 8, 16, 16, 32, 32, 64, 64] and set(m.n) == {3}
    assert list(m.verdict[1::2]) == ["doesn't"] * 4  # the second claim fails at every budget
    m = m[m.claim == "The tiny model's final KL is below 10"]
    for _, row in m.iterrows():  # each budget's claim: the mean over seeds of the runs' final KL, by hand
        kls = [final_kl(out / "runs" / run_name(tiny_run(s, int(row.steps)))) for s in (0, 1, 2)]
        assert row["mean"] == pytest.approx(np.mean(kls), rel=1e-9)
        assert row.ci == pytest.approx(4.302653 * np.std(kls, ddof=1) / np.sqrt(3), rel=1e-5)
    fits = pd.read_csv(out / "claims-scaling-fits.csv").iloc[:1]
    half, full = m[m.fraction == 0.5].iloc[0], m[m.fraction == 1.0].iloc[0]
    assert fits.moved_by_doubling[0] == pytest.approx(abs(full["mean"] - half["mean"]))
    assert fits.converged[0] == ("yes" if abs(full["mean"] - half["mean"]) < np.hypot(full.ci, half.ci) else "no")
    curves = pd.read_csv(out / "claims-scaling.csv")
    assert list(curves[(curves.kind == "measured") & (curves.claim == fits.claim[0])].steps) == [8, 16, 32, 64]
    assert list(curves[curves.kind == "extrapolated"].steps) == [640, 640]  # no paper preset: ten times the largest
    assert (out / "claims-scaling.png").exists()
    # The claims table takes the claim's convergence (and the fit's note) from the scaling data.
    top = tmp_path / "top"
    cfg_long = scaling.budget_config(TINY, 1.0)
    fig_tiny = get_figure("tiny-long")
    fig_tiny.run(cfg_long, out)
    c, failing = evaluate(out, {"tiny-long": cfg_long}, {"tiny-long"}, [fig_tiny])
    assert c.converged == fits.converged[0] and "doubling the steps moved it by" in c.note
    assert c.mean == pytest.approx(full["mean"])  # the demo's claim is the largest budget's measurement
    # A failing claim on a budget that had not converged reads "not converged", unless its fit
    # extrapolates to a failure at the target budget too.
    all_fits = pd.read_csv(out / "claims-scaling-fits.csv")
    for extrapolated, verdict in (("holds", "not converged"), ("inconclusive", "not converged"), ("doesn't", "doesn't")):
        all_fits.loc[1, ["converged", "verdict_extrapolated"]] = ["no", extrapolated]
        all_fits.to_csv(out / "claims-scaling-fits.csv", index=False)
        assert evaluate(out, {"tiny-long": cfg_long}, {"tiny-long"}, [fig_tiny])[1].verdict == verdict
    all_fits.loc[1, "steps"] = 32  # fits of another budget than the claim's runs are not this claim's
    all_fits.to_csv(out / "claims-scaling-fits.csv", index=False)
    assert "doubling" not in evaluate(out, {"tiny-long": cfg_long}, {"tiny-long"}, [fig_tiny])[1].note
    # The demo path trains nothing and fits the same measurements.
    top.mkdir()
    (top / scaling.MEASURED).write_bytes((out / scaling.MEASURED).read_bytes())
    demo = dataclasses.replace(cfg, train=False)
    assert fig.runs(demo) == {}
    fig.run(demo, top, progress=False)
    assert pd.read_csv(top / "claims-scaling-fits.csv").converged[0] == fits.converged[0]
    # Measurements of other runs (another recipe) are refused, and none at all too.
    m.assign(runs="0123456789ab").to_csv(top / scaling.MEASURED, index=False)
    with pytest.raises(ValueError, match="measured on other training runs"):
        fig.run(demo, top, progress=False)
    with pytest.raises(ValueError, match="no claims-scaling-measured.csv"):
        fig.run(demo, tmp_path / "empty", progress=False)
    # Measuring (train=True) measures such a figure again, from its runs: the same numbers; the
    # rows of figures not asked for stay in the file, and are not fitted.
    good = pd.read_csv(out / scaling.MEASURED, dtype={"runs": str})
    other_rows = good.assign(figure="tiny-other", runs="000000000012")
    pd.concat([good.assign(runs="0123456789ab", mean=good["mean"] + 1), other_rows]).to_csv(
        out / scaling.MEASURED, index=False)
    fig.run(cfg, out, progress=False)
    again = pd.read_csv(out / scaling.MEASURED, dtype={"runs": str})
    pd.testing.assert_frame_equal(again[again.figure == "tiny-long"].reset_index(drop=True), good)
    assert (again[again.figure == "tiny-other"].runs == "000000000012").all()  # a digest of digits stays a string
    assert set(pd.read_csv(out / "claims-scaling-fits.csv").figure) == {"tiny-long"}
    # A figure the file lacks is measured and added; the rows measured before stay as they were.
    (top / scaling.MEASURED).write_bytes((out / scaling.MEASURED).read_bytes())
    before = pd.read_csv(top / scaling.MEASURED)

    class Other(TinyLong):
        name, presets = "tiny-long-b", {"long": TinyConfig(steps=32)}

    other = Other()

    @other.claim("Tiny", "The other tiny model's final KL is below 10", "final eval KL; holds if < 10",
                 trained=lambda tc, cfg: True)
    def other_claim(c: Claim, out: Path, cfg) -> Claim:
        return measured(c, read(out, "tiny-long-b").kl, 10, "<")

    register_figure(other)
    try:
        fig.run(dataclasses.replace(cfg, figures=("tiny-long", "tiny-long-b")), top, progress=False)
    finally:
        figure_mod._FIGURES.pop("tiny-long-b", None)
    after = pd.read_csv(top / scaling.MEASURED)
    added = after.figure == "tiny-long-b"
    assert after[~added].reset_index(drop=True).equals(before) and list(after[added].steps) == [4, 8, 16, 32]
    # in the figures' registered order, one this code does not register (tiny-other) last
    assert list(dict.fromkeys(after.figure)) == ["tiny-long", "tiny-long-b", "tiny-other"]


def test_a_claim_reading_other_figures_is_measured_with_them(tmp_path):
    # The shift claim is declared by mlr-fig5 and reads mlr-fig6 to fig9 too: measuring its figure
    # runs the figures it needs at every budget (it used to be skipped, "not run", leaving no rows).
    class Needed(TinyLong):
        name, presets = "tiny-needed", {"long": TinyConfig(steps=32, seeds=(0, 1))}

    class Reader(TinyLong):
        name, presets = "tiny-reader", {"long": TinyConfig(steps=32, seeds=(0, 1))}

    needed, reader = Needed(), Reader()

    @reader.claim("Tiny", "The needed figure's KL is below 10", "final eval KL of tiny-needed; holds if < 10",
                  needs=("tiny-needed",), trained=lambda tc, cfg: True)
    def reads_needed(c: Claim, out: Path, cfg) -> Claim:
        return measured(c, read(out, "tiny-needed").kl, 10, "<")

    for f in (needed, reader):
        register_figure(f)
    try:
        cfg = scaling.Config(figures=("tiny-reader",), n_boot=20)
        assert {key[0] for key in get_figure("claims-scaling").runs(cfg)} == {"tiny-reader", "tiny-needed"}
        out = tmp_path / "out"
        get_figure("claims-scaling").run(cfg, out, progress=False)
    finally:
        for name in ("tiny-needed", "tiny-reader"):
            figure_mod._FIGURES.pop(name, None)
    m = pd.read_csv(out / scaling.MEASURED)
    assert list(m.figure) == ["tiny-reader"] * 4 and list(m.steps) == [4, 8, 16, 32] and set(m.n) == {2}
    for _, row in m.iterrows():  # the needed figure's runs at each budget, by hand
        kls = [final_kl(out / "runs" / run_name(tiny_run(s, int(row.steps)))) for s in (0, 1)]
        assert row["mean"] == pytest.approx(np.mean(kls), rel=1e-9)


def test_the_measurements_digest_covers_runs_evaluation_and_claims():
    """What measurements rest on: another evaluation config (same runs), another claim or a
    claim's changed code each give another digest; the same figure the same one, and a docstring
    added to a claim's function changes nothing."""
    cfg = scaling.Config(figures=("tiny-long",))

    @dataclass(frozen=True)
    class Evaluated(TinyConfig):
        n_eval: int = 100  # evaluation only: the runs are the same

    def below_10(c: Claim, out: Path, cfg) -> Claim:
        return measured(c, read(out, "tiny-digest").kl, 10, "<")

    def below_11(c: Claim, out: Path, cfg) -> Claim:
        return measured(c, read(out, "tiny-digest").kl, 11, "<")

    def documented():
        def below_10(c: Claim, out: Path, cfg) -> Claim:
            """A docstring says what the code does; it changes nothing the claim computes."""
            return measured(c, read(out, "tiny-digest").kl, 10, "<")
        return below_10

    def figure(n_eval: int, fn=None):
        class F(TinyLong):
            name, Config, presets = "tiny-digest", Evaluated, {"long": Evaluated(n_eval=n_eval)}

        f = F()
        if fn is not None:  # the same statement and test, other code
            f.claim("Tiny", "below", "final eval KL; holds if below the threshold", trained=lambda tc, cfg: True)(fn)
        return f

    def runs(f):
        return {run_name(tc) for q in cfg.budgets for tc in f.runs(scaling.budget_config(f, q)).values()}

    assert runs(figure(100)) == runs(figure(200))
    digests = [scaling.runs_digest(figure(*args), cfg) for args in ((100,), (100,), (200,), (100, below_10), (100, below_11))]
    assert digests[0] == digests[1] and len(set(digests[1:])) == 4
    assert scaling.runs_digest(figure(100, documented()), cfg) == digests[3]


def test_the_shipped_measurements_rest_on_what_this_code_names():
    """The zoo's claims measurements carry, per figure, the digest of its runs, evaluation configs
    and claims; the demo refuses them if the code names others (then measure them again)."""
    from icmix import zoo

    path = zoo.measurements("long")
    assert path is not None, "the shipped zoo has no long-tier claims measurements"
    shipped = pd.read_csv(path, dtype={"runs": str}).groupby("figure").runs.unique()
    now = {f: scaling.runs_digest(get_figure(f), scaling.Config()) for f in shipped.index}
    assert {f: list(d) for f, d in shipped.items()} == {f: [d] for f, d in now.items()}


def test_the_zoo_measurements_are_copied_refreshed_and_labelled(tmp_path, monkeypatch, capsys):
    """``take_measurements``: a copy of a zoo's measurements with its record; replaced when the
    zoo's change, kept when OUT's own differ; a zoo outside the package labelled unlisted, in
    the fits and the claims' notes; a linked tier folder or file refused."""
    from icmix import zoo
    from icmix.report import take_measurements

    root = tmp_path / "zoo"
    (root / "long").mkdir(parents=True)
    first = pd.DataFrame([{"claim": "c", "figure": "f", "fraction": 1.0, "steps": 8, "mean": 1.0, "ci": 0.1, "n": 4,
                           "threshold": 2.0, "side": "<", "verdict": "holds", "runs": "x"}])
    first.to_csv(root / "long" / zoo.MEASUREMENTS, index=False)
    monkeypatch.setenv("ICMIX_ZOO", str(root))
    out = tmp_path / "out"
    out.mkdir()
    dest = take_measurements(out, "demo")
    assert dest.read_bytes() == (root / "long" / zoo.MEASUREMENTS).read_bytes()
    assert "unlisted" in capsys.readouterr().out and scaling.origin(out) == "unlisted zoo"
    record = json.loads((out / scaling.SOURCE).read_text())
    assert record["listed"] is False and record["sha256"] == zoo.sha256(dest)
    assert take_measurements(out, "quick") == dest  # another preset: OUT's file as it is
    # The zoo's measurements changed (more figures measured): an untouched copy is replaced.
    first.assign(mean=1.5).to_csv(root / "long" / zoo.MEASUREMENTS, index=False)
    take_measurements(out, "demo")
    assert pd.read_csv(dest)["mean"][0] == 1.5
    # OUT's own measurements (changed since the copy) are kept, and are no longer the zoo's.
    first.assign(mean=1.7).to_csv(dest, index=False)
    take_measurements(out, "demo")
    assert pd.read_csv(dest)["mean"][0] == 1.7
    assert scaling.origin(out) == "unlisted zoo"  # rows from the unlisted zoo may remain: still labelled
    record["listed"] = True  # (as a copy of the package's zoo would be)
    (out / scaling.SOURCE).write_text(json.dumps(record))
    assert scaling.origin(out) == "OUT"
    # A tier folder or a file that is a link is no zoo's measurements.
    other = tmp_path / "zoo2"
    other.mkdir()
    (other / "long").symlink_to(root / "long", target_is_directory=True)
    assert zoo.measurements("long", other) is None
    (other / "long").unlink()
    (other / "long").mkdir()
    (other / "long" / zoo.MEASUREMENTS).symlink_to(root / "long" / zoo.MEASUREMENTS)
    assert zoo.measurements("long", other) is None
    # An unlisted zoo's scaling data say so in the claim's note.
    c = Claim("Tiny", "c", "t", ("tiny-long",))
    from icmix.experiments.claims import _with_scaling

    _with_scaling(c, {"converged": "yes", "moved_by_doubling": 0.1, "extrapolated": np.nan,
                      "measurements": "unlisted zoo"})
    assert "does not list" in c.note


# --- zoo verify --tail ---------------------------------------------------------------------------

def test_zoo_verify_tail_resumes_from_the_shipped_checkpoint_and_ends_bit_identical(tmp_path, capsys):
    from icmix import zoo
    from icmix.cli import main
    from icmix.train import train

    # the long tier's cadence, a tenth as long: a checkpoint every 100 steps, the last two (100, 200) kept
    tc = dataclasses.replace(tiny_run(5, 200), checkpoint_every=100)
    run = train(tc, tmp_path / "work" / run_name(tc), progress=False)
    root = tmp_path / "zoo"
    entry = zoo.export(run, root / "long" / run.name, {"run": run.name, "steps": tc.steps, "threads": 1}, tail=100)
    assert (entry / "tail" / "trainer.safetensors").exists() and json.loads((entry / "provenance.json").read_text())[
        "tail_step"] == 100
    assert main(["zoo", "verify", "--tail", run.name, "--root", str(root), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "PASS (bit-identical weights)" in text and "resumed from its tail (step 100)" in text
    # A damaged tail is an integrity failure, named, before any training.
    with open(entry / "tail" / "trainer.safetensors", "r+b") as fh:
        fh.seek(-4, 2)
        fh.write(b"\0\0\0\1")
    assert main(["zoo", "verify", "--tail", run.name, "--root", str(root), "--no-progress"]) == 1
    assert "tail/trainer.safetensors differs from the file shipped" in capsys.readouterr().out
    # An entry that stops shipping its tail (ships_tail changed) is sound without it, and says so.
    zoo.drop_tail(zoo.lookup(run.name, root))
    dropped = zoo.lookup(run.name, root)
    assert not (entry / "tail").exists() and "tail_step" not in dropped.provenance
    assert not set(zoo.TAIL_FILES) & set(dropped.provenance["sha256"]) and dropped.problems(manifest=False) == []
    assert main(["zoo", "verify", "--tail", run.name, "--root", str(root), "--no-progress"]) == 2
    assert "ships no tail checkpoint" in capsys.readouterr().err
    # A run that ships no tail is refused with the runs that do.
    plain = zoo.export(run, root / "long" / "other-run", {"run": "other-run"})
    assert main(["zoo", "verify", "--tail", plain.name, "--root", str(root), "--no-progress"]) == 2
    assert "ships no tail checkpoint" in capsys.readouterr().err


def test_zoo_verify_tail_on_another_cpu_needs_the_last_steps_redone(tmp_path, monkeypatch):
    """Where bits cannot match (another CPU), a tail resume passes on the metric only if its
    weights also end closer to the shipped ones than the tail's are: a resume that redid nothing
    (the tail's weights, the shipped metrics) fails; one that ends near the shipped weights passes."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    import icmix.train
    from icmix import zoo
    from icmix.train import train

    tc = dataclasses.replace(tiny_run(6, 200), checkpoint_every=100)
    run = train(tc, tmp_path / "work" / run_name(tc), progress=False)
    root = tmp_path / "zoo"
    entry = zoo.export(run, root / "long" / run.name, {"run": run.name, "steps": tc.steps, "threads": 1}, tail=100)
    monkeypatch.setattr(zoo, "cpu_model", lambda: "another CPU")

    def fake(weights):
        def resume(cfg, path, resume=False, progress=True):
            (Path(path) / "model").mkdir(parents=True, exist_ok=True)
            save_file(weights(), str(Path(path) / "model" / "model.safetensors"))
            shutil.copyfile(entry / "metrics.jsonl", Path(path) / "metrics.jsonl")  # the shipped final metric
            return Path(path)
        return resume

    shipped, tail = load_file(entry / "model" / "model.safetensors"), load_file(entry / "tail" / "model.safetensors")
    assert zoo.weight_distance(shipped, tail) > 0
    monkeypatch.setattr(icmix.train, "train", fake(lambda: tail))
    r = zoo.verify(run.name, tmp_path / "v1", root, progress=False, tail=True)
    assert r["status"] == "fail" and r["tail_closer"] == pytest.approx(1.0) and "did not redo" in r["reason"]
    near = {k: v + 1e-3 * zoo.weight_distance(shipped, tail) / np.sqrt(sum(t.numel() for t in shipped.values()))
            for k, v in shipped.items()}
    monkeypatch.setattr(icmix.train, "train", fake(lambda: near))
    r = zoo.verify(run.name, tmp_path / "v2", root, progress=False, tail=True)
    assert r["status"] == "pass" and r["tail_closer"] == pytest.approx(1e-3, rel=1e-3) and "another CPU" in r["reason"]


def test_measuring_one_figure_keeps_the_other_figures_rows(tmp_path, monkeypatch):
    # `icmix reproduce claims-scaling --preset long --set figures=F` adds F's rows to the file; the
    # figure's saved outputs must not replace the file with F's rows alone (they did: the extra
    # table "measured" is written to the same claims-scaling-measured.csv).
    from icmix.experiments import common

    shipped = pd.read_csv(Path(scaling.__file__).parent.parent / "zoo" / "long" / scaling.MEASURED, dtype={"runs": str})
    new = shipped[shipped.figure == "mtd-fig5"]
    shipped[shipped.figure != "mtd-fig5"].to_csv(tmp_path / scaling.MEASURED, index=False)
    monkeypatch.setattr(scaling, "measure", lambda cfg, out, progress=True: new.reset_index(drop=True))
    monkeypatch.setattr(common, "train_runs", lambda *args, **kwargs: [])
    scaling.FIGURE.run(scaling.Config(figures=("mlr-fig2", "mtd-fig5"), n_boot=10), tmp_path, progress=False)
    after = pd.read_csv(tmp_path / scaling.MEASURED, dtype={"runs": str})
    assert after.figure.value_counts().to_dict() == shipped.figure.value_counts().to_dict()
    # The rows measured again were appended; the file, the fits and the figure's panels keep the
    # figures' registered order all the same (not the order they happened to be measured in).
    from icmix.experiments import figure_names

    order = [f for f in figure_names() if f in set(after.figure)]
    assert list(dict.fromkeys(after.figure)) == order
    fitted = pd.read_csv(tmp_path / "claims-scaling-fits.csv")  # mtd-fig5's rows came after mlr-fig2's
    assert list(dict.fromkeys(fitted.figure)) == ["mtd-fig5", "mlr-fig2"]


# --- what the data support where no power law fits ---------------------------------------------------

STEPS = np.array([2500, 5000, 10_000, 20_000])


def weighted_mean(values, ci):
    """The inverse-variance mean of points whose 95 % half-widths are ``ci`` (equal seeds each)."""
    w = 1 / np.asarray(ci, float) ** 2
    return float((w * values).sum() / w.sum())


def test_a_flat_tail_extrapolates_as_its_plateau():
    # Layer 1's lag mass as measured (long tier, 4 seeds): it rises, then is flat over the last three
    # budgets.  No power law with a floor fits it; the last three budgets' slope per doubling has an
    # interval that covers 0, so the measure extrapolates as their inverse-variance mean.
    mean, ci, n = np.array([0.333, 0.627, 0.703, 0.667]), np.array([0.119, 0.130, 0.0486, 0.0333]), np.full(4, 4)
    assert np.isnan(scaling.fit(STEPS, mean, ci, n, 500_000, n_boot=20, bounds=(0.0, 1.0))["floor"])
    e = scaling.extrapolate(STEPS, mean, ci, n, 500_000, n_boot=400, bounds=(0.0, 1.0))
    assert e["model"] == scaling.PLATEAU and e["slope_lo"] < 0 < e["slope_hi"]
    level = weighted_mean(mean[1:], ci[1:])
    assert e["level"] == pytest.approx(level, abs=1e-9) and e["extrapolated"] == pytest.approx(level, abs=1e-9)
    # Its interval: a slope not told from 0 is not known to be 0, so the interval covers the line through
    # the three budgets carried 4.64 doublings on (log₂ 25) to the paper's budget too.  The line's
    # normal-theory interval there, from the weighted least-squares covariance (se = half-width / t(3)):
    from scipy import stats
    se = ci[1:] / stats.t.ppf(0.975, 3)
    x = np.log2(STEPS[1:] / 20_000)
    design = np.c_[np.ones(3), x]
    cov = np.linalg.inv(design.T @ np.diag(1 / se**2) @ design)
    beta = cov @ design.T @ np.diag(1 / se**2) @ mean[1:]
    at = np.array([1.0, np.log2(25)])
    centre, sd = at @ beta, np.sqrt(at @ cov @ at)
    assert e["slope"] == pytest.approx(beta[1], abs=1e-9)
    assert e["lo"] <= min(level, centre - 1.96 * sd) and e["hi"] >= max(level, centre + 1.96 * sd)
    assert e["hi"] - e["lo"] < 2 * 4 * sd  # Student-t redraws widen it, not beyond reason
    assert e["hi"] < 0.9  # the claim's threshold: the mass does not reach it, even so
    # Budgets with no trend that still disagree with a constant (a zig-zag, χ² ≈ 75 on 2 degrees of
    # freedom) support no model: nothing is carried forward.
    zigzag = scaling.extrapolate(STEPS, np.array([2.5, 1.25, 1.65, 1.25]), np.full(4, 0.12), n, 500_000,
                                 bounds=(0.0, np.inf))
    assert zigzag["slope_lo"] < 0 < zigzag["slope_hi"] and zigzag["model"] == "" and np.isnan(zigzag["lo"])
    # Nor does a zig-zag with a slope: no straight line fits it either (its χ² about the line is 142 on 1 degree
    # of freedom), so there is no trend to carry forward.
    sloped = scaling.extrapolate(STEPS, np.array([2.5, 1.25, 1.65, 0.95]), np.full(4, 0.12), n, 500_000,
                                 bounds=(0.0, np.inf))
    assert sloped["slope_hi"] < 0 and sloped["model"] == "" and np.isnan(sloped["lo"])
    # The fit checks are calibrated to the redraws' Student-t noise.  The 5-layer model's three largest
    # budgets as measured: no trend (the slope's interval covers 0); their χ² about the constant is 9.25,
    # beyond the χ² table's 95 % point on 2 degrees of freedom (5.99), which would take the se's as exact
    # and reject a constant about 14 % of the time at 4 seeds, but well within that point under t(3) noise.
    five, fci = np.array([1.217, 1.103, 1.066]), np.array([0.147, 0.0788, 0.0622])
    e = scaling.extrapolate(STEPS[1:], five, fci, n[1:], 500_000, bounds=(0.0, np.inf))
    w = (stats.t.ppf(0.975, 3) / fci) ** 2
    chi2 = (w * (five - weighted_mean(five, fci)) ** 2).sum()
    assert chi2 == pytest.approx(9.25, abs=0.05) and chi2 > stats.chi2.ppf(0.95, 2)
    assert e["slope_lo"] < 0 < e["slope_hi"] and e["model"] == scaling.PLATEAU


def test_a_tail_still_moving_extrapolates_between_its_last_interval_and_the_range():
    # A ratio still falling in a straight line on log steps (the standard GPTs): no power law with a floor
    # in [0, ∞) fits; the last three budgets fall by 0.325 per doubling (equal weights: the least-squares
    # slope is (0.9 − 1.55) / 2), well clear of 0.  If it kept falling, the measure at the paper's budget
    # lies between the range's end (0) and the top of the largest budget's interval (0.9 + 0.15).
    steep, ci, n = np.array([2.0, 1.55, 1.2, 0.9]), np.full(4, 0.15), np.full(4, 4)
    e = scaling.extrapolate(STEPS, steep, ci, n, 500_000, n_boot=200, bounds=(0.0, np.inf))
    assert e["model"] == scaling.TREND and np.isnan(e["floor"])
    assert e["slope"] == pytest.approx(-0.325) and e["slope_hi"] < 0
    assert (e["lo"], e["hi"]) == (0.0, pytest.approx(1.05)) and np.isnan(e["extrapolated"])  # a range, no value
    assert (e["last"], e["last_mean"], e["last_ci"]) == (20_000, 0.9, 0.15)
    # The attention cosine as measured: it peaks at 5,000 steps, then falls; its bound is the range's 0.
    cosine, cci = np.array([0.570, 0.792, 0.729, 0.700]), np.array([0.165, 0.0360, 0.0353, 0.0225])
    e = scaling.extrapolate(STEPS, cosine, cci, n, 500_000, n_boot=200, bounds=(0.0, 1.0))
    assert e["model"] == scaling.TREND and e["slope_hi"] < 0 and (e["lo"], e["hi"]) == (0.0, pytest.approx(0.7225))
    # Rising towards the top of its range: from the bottom of the last interval up to 1.
    rising = scaling.extrapolate(STEPS, np.array([0.3, 0.6, 0.8, 0.95]), np.full(4, 0.04), n, 500_000, n_boot=50,
                                 bounds=(0.0, 1.0))
    assert rising["model"] == scaling.TREND and (rising["lo"], rising["hi"]) == (pytest.approx(0.91), 1.0)
    # The same points measured four times as tightly bend too much for a straight line (χ² 10.5 about it,
    # beyond its 95 % point of about 10 under t(3) noise): no trend is carried forward.
    tight = scaling.extrapolate(STEPS, np.array([0.3, 0.6, 0.8, 0.95]), np.full(4, 0.02), n, 500_000,
                                bounds=(0.0, 1.0))
    assert tight["model"] == ""
    # Unbounded, a trend has no end on its side: an infinite end, and the verdict still follows the interval.
    free = scaling.extrapolate(STEPS, cosine, cci, n, 500_000, n_boot=50)
    assert free["model"] == scaling.TREND and free["lo"] == -np.inf and free["hi"] == pytest.approx(0.7225)
    assert scaling.interval_verdict(free["lo"], free["hi"], 0.9, ">=") == "doesn't"
    assert scaling.interval_verdict(free["lo"], free["hi"], 0.71, ">=") == "inconclusive"
    # A power law with a floor is preferred where it fits; too few budgets, or no interval, give nothing.
    law = scaling.extrapolate(STEPS, 0.2 + 0.5 * (STEPS / 20_000) ** -0.7, np.full(4, 1e-3), n, 500_000, n_boot=20)
    assert law["model"] == scaling.POWER_LAW and law["floor"] == pytest.approx(0.2, abs=1e-3)
    for few in (scaling.extrapolate(STEPS[2:], steep[2:], ci[2:], n[2:], 500_000, n_boot=20),
                scaling.extrapolate(STEPS, steep, np.full(4, np.nan), np.ones(4), 500_000, n_boot=20)):
        assert few["model"] == "" and np.isnan(few["extrapolated"])


def declared(figure: str, words: str) -> str:
    """The statement of the trained-model claim of ``figure`` (at the long preset) containing ``words``."""
    fig = get_figure(figure)
    return next(c for spec in fig.claims if spec.trained
                for c in [spec.blank(scaling.budget_config(fig, 1.0)).claim] if words in c)


GPT_MTDG, MASS = declared("mtdg", "GPT"), declared("mtd-fig4", "Layer 1 attends")  # ranges [0, ∞) and [0, 1]


def scaled_rows(claim, means, ci, threshold, side):
    figure = "mtd-fig4" if claim == MASS else "mtdg"
    return pd.DataFrame([{"claim": claim, "figure": figure, "fraction": q, "steps": int(q * 20_000), "mean": m,
                          "ci": ci, "n": 4, "threshold": threshold, "side": side, "verdict": "inconclusive",
                          "runs": "x"} for q, m in zip((0.125, 0.25, 0.5, 1.0), means)])


def test_an_undecided_extrapolation_says_what_would_settle_it():
    # Still falling, the last interval [0.75, 1.05] straddles 1: the extrapolation [0, 1.05] is undecided.
    # Were the trend to go on (−0.325 per doubling), the top of that interval passes 1 after
    # (1 − 1.05) / −0.325 = 0.154 doublings: at about 20,000 · 2^0.154 = 22,250 steps.
    t = scaling.fits(scaled_rows(GPT_MTDG, (2.0, 1.55, 1.2, 0.9), 0.15, 1.0, "<="), scaling.Config(n_boot=50))
    f = t.iloc[0]
    assert f.model == scaling.TREND and f.verdict_extrapolated == "inconclusive"
    assert f.settle_steps == pytest.approx(20_000 * 2 ** (0.05 / 0.325), rel=1e-6)
    # over the slope's interval, between 20,000 · 2^(0.05 / −slope_lo) and 20,000 · 2^(0.05 / −slope_hi)
    fast, slow = (f"{float(f'{20_000 * 2 ** (0.05 / -s):.2g}'):,.0f}" for s in (f.slope_lo, f.slope_hi))
    assert f.settle == (f"the trend, if it went on, would settle it at about 22,000 steps ({fast} to {slow} over "
                        "its slope's interval)"), f.settle
    # The same points below a threshold of 1.25: wherever the trend goes, the extrapolation holds.
    f = scaling.fits(scaled_rows(GPT_MTDG, (2.0, 1.55, 1.2, 0.9), 0.15, 1.25, "<="), scaling.Config(n_boot=50)).iloc[0]
    assert (f.verdict_extrapolated, f.settle) == ("holds", "") and np.isnan(f.settle_steps)
    # A power law straddling its threshold: the 5-layer model's ratio as measured (mtd-fig5, long tier), fitted
    # at the figure's default 400 refits.  Its interval at 500,000 steps, [0.882, 1.12] about 1.064, runs
    # 0.183 to the threshold's side: a spread across 4 seeds of 0.183 · √4 / t(3) = 0.115.  With m seeds
    # the half-width t(m−1) · 0.115 / √m first drops below the distance 0.064 at m = 15 (t(14) = 2.145:
    # 0.0637), not at 14 (t(13) = 2.160: 0.0664).
    from icmix import zoo
    shipped = pd.read_csv(zoo.ZOO_ROOT / "long" / scaling.MEASURED)
    f = scaling.fits(shipped[shipped.figure == "mtd-fig5"], scaling.Config()).iloc[0]
    assert f.model == scaling.POWER_LAW and (f.lo, f.extrapolated) == (pytest.approx(0.882, abs=2e-3),
                                                                        pytest.approx(1.064, abs=2e-3))
    assert f.settle == "about 15 seeds at each budget would settle it, if the spread stays", f.settle
    # A trend whose fitted slope would never get there says so, rather than a budget; a budget past 100 times
    # the paper's is not printed digit by digit.
    row = {"model": scaling.TREND, "slope": 0.0, "slope_lo": -0.2, "slope_hi": -0.1, "last": 20_000.0,
           "last_mean": 1.0, "last_ci": 0.1, "target_steps": 500_000.0}
    text, steps = scaling.settle(row, 1.0)
    assert steps == np.inf and "28,000 to 40,000" in text and "at about" not in text, text
    text, _ = scaling.settle({**row, "slope": -0.15, "slope_hi": -1e-9}, 1.0)
    assert "(28,000 to over 50,000,000 over" in text, text
    # Rising (a cosine, equal weights: slope (0.95 − 0.6) / 2 = 0.175 per doubling), [0.91, 1] straddles 0.97:
    # the bottom of the interval passes it after 0.06 / 0.175 doublings, at 20,000 · 2^0.343 ≈ 25,000 steps.
    rising = scaled_rows(MASS, (0.3, 0.6, 0.8, 0.95), 0.04, 0.97, ">=")
    f = scaling.fits(rising, scaling.Config()).iloc[0]
    assert (f.model, f.lo, f.hi, f.verdict_extrapolated) == (scaling.TREND, pytest.approx(0.91), 1.0, "inconclusive")
    assert f.settle_steps == pytest.approx(20_000 * 2 ** (0.06 / 0.175)) and "at about 25,000 steps (" in f.settle
    # A plateau straddling its threshold says how many seeds at each budget would settle it.
    f = scaling.fits(scaled_rows(MASS, (0.3, 0.66, 0.7, 0.68), 0.05, 0.7, ">="), scaling.Config()).iloc[0]
    assert (f.model, f.verdict_extrapolated) == (scaling.PLATEAU, "inconclusive")
    assert f.settle.startswith("about ") and f.settle.endswith(" seeds at each budget would settle it, if the spread "
                                                               "stays") and int(f.settle.split()[1]) > 4, f.settle
    # One on its threshold (the shift claim's extrapolation, 1.53 [0.70, 1.95] against 1.5) would need more seeds
    # than anyone would run, and says so with the distance.
    row = {"model": scaling.POWER_LAW, "extrapolated": 1.53, "lo": 0.70, "hi": 1.95, "n": 4}
    assert scaling.settle(row, 1.5)[0] == ("over 1,000 seeds at each budget would be needed to settle it: it lies "
                                           "0.03 from the threshold")


def test_the_report_curves_and_claims_note_name_the_model_behind_each_extrapolation():
    from icmix.experiments.claims import Claim, _with_scaling
    measured = pd.concat([scaled_rows(MASS, (0.3, 0.68, 0.7, 0.68), 0.03, 0.9, ">="),
                          scaled_rows(GPT_MTDG, (2.0, 1.55, 1.2, 0.9), 0.15, 1.0, "<=")], ignore_index=True)
    t = scaling.fits(measured, scaling.Config(n_boot=50))
    assert list(t.model) == [scaling.PLATEAU, scaling.TREND]
    c = scaling.curves(measured, t)
    fitted = c[c.kind == "fit"]
    # the tail models are drawn over the budgets they were fitted on: the plateau's level, the trend's line
    assert list(fitted[fitted.claim == MASS].steps) == [5000, 10_000, 20_000]
    assert np.allclose(fitted[fitted.claim == MASS].value, t.level[0])
    line = fitted[fitted.claim == GPT_MTDG]
    assert np.allclose(line.value, t.level[1] + t.slope[1] * np.log2(line.steps / 20_000))
    assert list(c[c.kind == "extrapolated"].model) == [scaling.PLATEAU, scaling.TREND]
    text = scaling.FIGURE.report(Result(c, extra={"fits": t}), scaling.Config())
    flat = next(line for line in text.splitlines() if line.startswith(f"| {MASS} |"))
    falling = next(line for line in text.splitlines() if line.startswith(f"| {GPT_MTDG} |"))
    assert "plateau" in flat and "doesn't" in flat and "nan" not in flat, flat
    assert "still falling" in falling and "[0, 1.05]" in falling and "steps" in falling and "would settle it" in falling, falling
    note = Claim(paper="p", claim=GPT_MTDG, test="t", figures=("mtdg",))
    _with_scaling(note, t.iloc[1].to_dict())
    assert "still falling" in note.note and "inconclusive there" in note.note and "would settle it" in note.note
    # and the figure draws every model without error
    import matplotlib.pyplot as plt
    plt.close(scaling.FIGURE.draw(Result(c, extra={"fits": t}), scaling.Config()))


def test_fits_survive_a_missing_largest_budget_a_csv_round_trip_and_an_unbounded_measure(tmp_path):
    import matplotlib.pyplot as plt

    from icmix.experiments.claims import NO_FIT, Claim, _with_scaling
    # A fifth budget with no mean (a claim with no data there): the model rests on the budgets measured, its
    # trend's line is drawn where they are, and what would settle it is read from the largest of them.
    falling = pd.concat([scaled_rows(GPT_MTDG, (2.0, 1.55, 1.2, 0.9), 0.15, 1.0, "<="),
                         scaled_rows(GPT_MTDG, (np.nan,), 0.15, 1.0, "<=").assign(fraction=2.0, steps=40_000)])
    cosine = scaled_rows("a claim no figure declares", (0.570, 0.792, 0.729, 0.700), 0.03, 0.9, ">=")  # unbounded
    few = scaled_rows("two budgets", (1.2, 0.9), 0.15, 1.0, "<=")
    t = scaling.fits(pd.concat([falling, cosine, few], ignore_index=True), scaling.Config(n_boot=50))
    assert list(t.model) == [scaling.TREND, scaling.TREND, ""]
    assert t.settle_steps[0] == pytest.approx(20_000 * 2 ** (0.05 / -t.slope[0]), rel=1e-9)
    assert (t.lo[1], t.verdict_extrapolated[1]) == (-np.inf, "doesn't")  # the range's open end: −∞
    c = scaling.curves(pd.concat([falling, cosine, few], ignore_index=True), t)
    assert list(c[(c.kind == "fit") & (c.claim == GPT_MTDG)].steps) == [5000, 10_000, 20_000]
    plt.close(scaling.FIGURE.draw(Result(c, extra={"fits": t}), scaling.Config()))
    # Written and read back (empty text becomes NaN), the claims note and the report still say it in words.
    t.to_csv(tmp_path / "fits.csv", index=False)
    back = pd.read_csv(tmp_path / "fits.csv")
    notes = []
    for row in back.to_dict("records"):
        note = Claim(paper="p", claim=row["claim"], test="t", figures=("mtdg",))
        _with_scaling(note, row)
        notes.append(note.note)
    assert "still falling" in notes[0] and "22,000 steps" in notes[0] and "-inf" in notes[1], notes
    assert notes[2].endswith(NO_FIT) and "nan" not in notes[2], notes
    text = scaling.FIGURE.report(Result(c, extra={"fits": back}), scaling.Config())
    assert "| two budgets |" in text and "nan" not in text.replace("-inf", ""), text


def test_a_budget_without_data_beyond_a_power_law_changes_neither_its_curve_nor_its_seeds():
    # A fifth budget whose claim had no data (mean NaN, 0 seeds): the power law is fitted on, drawn through and
    # scaled by the four measured, and what would settle it counts the seeds of the largest measured budget.
    steps = np.array([2500, 5000, 10_000, 20_000])
    truth = 1.0 + 0.5 * (steps / 20_000) ** -0.7
    rows = pd.DataFrame([{"claim": GPT_MTDG, "figure": "mtdg", "fraction": q, "steps": s, "mean": m, "ci": 0.08,
                          "n": 4, "threshold": 1.0, "side": "<=", "verdict": "doesn't", "runs": "x"}
                         for q, s, m in zip((0.125, 0.25, 0.5, 1.0), steps, truth)])
    rows = pd.concat([rows, rows.iloc[[-1]].assign(fraction=2.0, steps=40_000, mean=np.nan, ci=np.nan, n=0)])
    f = scaling.fits(rows, scaling.Config(n_boot=100)).iloc[0]
    assert f.model == scaling.POWER_LAW and f.floor == pytest.approx(1.0, abs=1e-3)
    assert f.verdict_extrapolated == "inconclusive" and "seeds at each budget would settle it" in f.settle, f.settle
    c = scaling.curves(rows, pd.DataFrame([f]))
    fit = c[c.kind == "fit"]
    assert list(fit.steps) == list(steps) and np.allclose(fit.value, truth, atol=2e-3)
    import matplotlib.pyplot as plt
    figure = scaling.FIGURE.draw(Result(c, extra={"fits": pd.DataFrame([f])}), scaling.Config())
    curve = next(line for line in figure.axes[0].lines if line.get_label().startswith("fit:"))
    assert np.interp(20_000, *curve.get_data()) == pytest.approx(1.5, abs=5e-3)  # the curve, where it was measured
    plt.close(figure)
