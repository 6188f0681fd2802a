"""Tables join on keys, never on display labels: the claims and the figures read the key
columns, so renaming every label changes no claim and no figure's data.  Also: a claim that
cannot find its rows fails loudly, and the registries (families, figures) refuse unknown names.

``tests/data/quick-tables`` holds the tables the claims read from one ``icmix reproduce all
--preset quick`` run, with its ``claims.csv`` (issue 19's run: its claims and every number
in its tables equal those of the run before the key columns were added)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import pandas as pd
import pytest

from icmix.experiments import claims, figure_names, get_figure
from icmix.report import configs_for

matplotlib.use("Agg")
DATA = Path(__file__).parent / "data" / "quick-tables"
LABEL_COLUMNS = ("estimator", "label", "other", "model", "metric_label")
# The papers' figures, built into icmix (the testbeds' figures, icmix.testbeds, reach it through its
# entry points like a plugin's: tests/test_testbeds_*.py)
BUILTIN = [n for n in figure_names() if get_figure(n).__module__.startswith("icmix.")
           and not get_figure(n).__module__.startswith("icmix.testbeds.") and get_figure(n).has_preset("quick")]
# (claims-scaling, long preset only, measures the others' claims at several budgets: tests/test_scaling.py)
FIGS = [get_figure(n) for n in BUILTIN]
SPECS = [spec for fig in FIGS for spec in fig.claims]
FIGURES_IN_DATA = sorted({f for spec in SPECS for f in spec.figures})


def claims_table(out: Path) -> pd.DataFrame:
    return claims.table(claims.evaluate(out, configs_for("quick", figures=BUILTIN), set(FIGURES_IN_DATA), FIGS))


def rename_labels(src: Path, dst: Path) -> dict[str, str]:
    """Copy the tables, every display label replaced by an unrelated string (the same label
    gets the same new name in every table)."""
    dst.mkdir(parents=True, exist_ok=True)
    tables = {p.name: pd.read_csv(p) for p in src.glob("*.csv")}
    labels = sorted({v for t in tables.values() for c in LABEL_COLUMNS if c in t for v in t[c].dropna().unique()})
    new = {label: f"renamed #{i}" for i, label in enumerate(labels)}
    for name, t in tables.items():
        for c in LABEL_COLUMNS:
            if c in t:
                t[c] = t[c].map(lambda v: new.get(v, v))
        t.to_csv(dst / name, index=False)
    return new


def test_claims_measure_what_the_quick_run_measured():
    ours, recorded = claims_table(DATA), pd.read_csv(DATA / "claims.csv")
    assert len(ours) == len(SPECS) == len(recorded) == 20
    assert list(ours.claim) == list(recorded.claim)  # in report order: each figure's claims, as declared
    assert list(ours.measured) == list(recorded.measured) and list(ours.verdict) == list(recorded.verdict)
    assert set(ours.verdict) <= {"holds", "doesn't", "inconclusive"}  # every claim found its rows


def test_renaming_every_display_label_changes_no_claim(tmp_path):
    renamed = rename_labels(DATA, tmp_path)
    assert "MD 1-step (tuned η)" in renamed and "transformer" in renamed and "posterior mean (oracle)" in renamed
    before, after = claims_table(DATA), claims_table(tmp_path)
    assert list(after.measured) == list(before.measured) and list(after.verdict) == list(before.verdict)


def test_figures_draw_from_key_columns_with_any_labels(tmp_path):
    rename_labels(DATA, tmp_path)
    read = lambda name: pd.read_csv(tmp_path / f"{name}.csv")  # noqa: E731
    cfgs = configs_for("quick")
    from icmix.experiments import (mlr_fig2, mlr_fig3, mlr_fig4, mlr_shifts, mtd_fig3, mtd_fig5, mtd_orders, mtdg,
                                   text)
    from icmix.experiments.figure import Result

    figs = [mtd_fig3.draw(read("mtd-fig3")), mtd_orders.draw_fig6(read("mtd-fig6"), cfgs["mtd-fig6"]),
            mtd_fig5.draw({"kl": read("mtd-fig5"), **{k: read(f"mtd-fig5-{k}") for k in
                                                      ("tracking", "readout", "betas", "losses")}}, cfgs["mtd-fig5"]),
            mlr_fig2.draw(read("mlr-fig2"), cfgs["mlr-fig2"]), mlr_fig4.draw(read("mlr-fig4"), cfgs["mlr-fig4"]),
            mlr_fig3.draw(read("mlr-fig3"), read("mlr-fig3-estimates"), cfgs["mlr-fig3"]),
            mlr_shifts.draw(read("mlr-fig6"), cfgs["mlr-fig6"], "mlr-fig6", *mlr_shifts.FIGURES["mlr-fig6"]),
            mtdg.draw(Result(read("mtdg"), {"check": read("mtdg-check")}), cfgs["mtdg"]),
            text.draw(Result(read("text"), {k: read(f"text-{k}") for k in ("lambda", "fit", "gain")}), cfgs["text"])]
    legends = [t.get_text() for f in figs for ax in f.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
    assert any(t.startswith("renamed #") for t in legends)
    assert not any("tuned η" in t or t == "transformer" for t in legends)  # labels come from the tables
    # Reports index by key and show the (renamed) labels.
    assert "renamed #" in mtd_fig3.report(read("mtd-fig3")) and "renamed #" in mlr_fig2.report(read("mlr-fig2"), cfgs["mlr-fig2"])


def test_a_claim_without_its_rows_fails_loudly(tmp_path):
    for p in DATA.glob("*.csv"):
        shutil.copy(p, tmp_path)
    fig3 = pd.read_csv(tmp_path / "mtd-fig3.csv")
    fig3[fig3.key != "md/steps=1/tuning=tuned"].to_csv(tmp_path / "mtd-fig3.csv", index=False)
    spec = get_figure("mtd-fig3").claims[0]
    c = claims.Claim("MTD", "", "", ("mtd-fig3",))
    with pytest.raises(claims.MissingRows, match="key = md/steps=1/tuning=tuned"):
        spec.fn(c, tmp_path, configs_for("quick")["mtd-fig3"])
    table = claims_table(tmp_path).set_index("claim")
    row = table.loc[spec.text]
    assert row.verdict == "no data" and "md/steps=1/tuning=tuned" in row.note
    # A table without its key columns is a bug in the figure: the error propagates.
    fig3.drop(columns=["key"]).to_csv(tmp_path / "mtd-fig3.csv", index=False)
    with pytest.raises(KeyError, match="no column 'key'"):
        claims_table(tmp_path)


def test_registries_name_what_they_hold():
    from icmix.families import get_family

    with pytest.raises(ValueError, match="unknown task kind 'hmm'; registered: .*markov, mixlinreg, mtd.*entry-points"):
        get_family("hmm")
    with pytest.raises(ValueError, match="unknown figure 'mtd-fig99'; registered: mtd-construction.*entry-points"):
        get_figure("mtd-fig99")
    for name in BUILTIN:
        fig = get_figure(name)
        assert fig.name == name and set(fig.presets) >= {"quick", "cpu", "paper"}
    assert [spec.fn.__name__ for spec in get_figure("mtd-fig3").claims] == ["md_vs_bayes"]


def test_importing_the_cli_loads_neither_matplotlib_nor_pandas():
    code = "import sys, icmix.cli; print(sorted(m for m in ('matplotlib', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_figure_registered_from_outside_runs_through_the_cli(tmp_path, capsys):
    from dataclasses import dataclass

    import matplotlib.pyplot as plt

    from icmix.cli import main
    from icmix.experiments import Figure, Result, register_figure
    from icmix.experiments import figure as registry

    @dataclass(frozen=True)
    class SquaresConfig:
        n: int = 3
        seeds: tuple[int, ...] = (0,)

    class Squares(Figure):
        name, Config, presets = "my-squares", SquaresConfig, {"quick": SquaresConfig(), "cpu": SquaresConfig(5),
                                                          "paper": SquaresConfig(9)}

        def compute(self, cfg, out, progress=True):
            return Result(pd.DataFrame({"x": range(cfg.n), "y": [x * x for x in range(cfg.n)]}))

        def draw(self, result, cfg):
            fig, ax = plt.subplots()
            ax.plot(result.table.x, result.table.y)
            return fig

    register_figure(Squares())
    try:
        assert main(["reproduce", "my-squares", "--preset", "cpu", "--out", str(tmp_path), "--no-progress"]) == 0
        assert pd.read_csv(tmp_path / "my-squares.csv").y.tolist() == [0, 1, 4, 9, 16]
        assert (tmp_path / "my-squares.png").exists() and (tmp_path / "my-squares.json").exists()
    finally:
        registry._FIGURES.pop("my-squares")
    with pytest.raises(ValueError, match="one or more of the presets"):
        class Bad(Squares):
            name, presets = "bad", {"fast": SquaresConfig()}
        register_figure(Bad())
    with pytest.raises(ValueError, match="one or more of the presets"):
        class Empty(Squares):
            name, presets = "empty", {}
        register_figure(Empty())


def test_a_family_in_an_installed_package_registers_through_its_entry_point(tmp_path):
    (tmp_path / "plugfam.py").write_text(
        "from dataclasses import dataclass\n"
        "from icmix.families import TaskFamily, register_family\n"
        "@dataclass(frozen=True)\n"
        "class Spec:\n    kind: str = 'plug'\n    def model_fields(self):\n        return {}\n"
        "class Plug(TaskFamily):\n    kind, spec, models = 'plug', Spec, ()\n"
        "    def build(self, spec):\n        return spec\n"
        "    def objective(self, task, cfg):\n        raise NotImplementedError\n"
        "    def run_name(self, cfg):\n        return 'plug'\n"
        "register_family(Plug())\n")
    dist = tmp_path / "plugfam-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugfam\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[icmix.families]\nplug = plugfam\n")
    code = "from icmix.families import get_family; print(type(get_family('plug')).__name__)"
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "Plug"


def test_two_predictors_with_one_key_are_refused():
    import torch

    from icmix import MTDTask
    from icmix.evaluate import evaluate_mtd
    from icmix.families.mtd import bayes_exact_predictor

    with pytest.raises(ValueError, match="share the key 'bayes/variant=exact'"):
        evaluate_mtd(MTDTask(4, 2), [bayes_exact_predictor(), bayes_exact_predictor()], [6], 4, progress=False)
    from icmix.predictors import Key, RegressionPredictor
    from icmix.evaluate import evaluate_regression

    zero = lambda x, y: torch.zeros_like(y)  # noqa: E731
    with pytest.raises(ValueError, match="share the key 'zero'"):
        evaluate_regression(torch.zeros(2, 3, 2), torch.zeros(2, 3), [RegressionPredictor(Key("zero"), zero)] * 2, 2)


def test_a_spec_of_another_family_is_refused():
    from icmix.families.mixlinreg import MixLinRegSpec
    from icmix.train import ModelSpec, TrainConfig

    with pytest.raises(ValueError, match="a 'mtd' task needs a MTDSpec spec, got MixLinRegSpec"):
        TrainConfig(task=MixLinRegSpec(kind="mtd"), model=ModelSpec("disentangled"))
