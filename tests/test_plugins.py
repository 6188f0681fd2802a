"""Everything a researcher adds plugs in from outside ``src/``: the ``tests/plugin`` package,
installed by ``make test`` as its own distribution, adds a task family with its Bayes predictor,
a predictor, a figure with only a ``quick`` preset and the claim it measures, through icmix's
entry-point groups.  A family with no Bayes predictor leaves its runs' convergence ``unknown``."""

import json
import re
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from icmix.cli import main
from icmix.experiments import figure_names, get_figure
from icmix.report import configs_for
from icmix.families import get_family
from icmix.random import make_generator
from icmix.train import TrainConfig, train
from icmix.train.convergence import combined_status, run_convergence
from icmix.train.loop import build_objective, build_task

CLAIM = "The Bayes predictor beats add-½ at every prefix length"


def test_the_installed_plugin_registers_its_family_and_figure():
    assert "iid" in figure_names()  # found through the icmix.figures entry point, nothing imported by hand
    fig = get_figure("iid")
    assert type(fig).__module__ == "icmix_iid.figure" and set(fig.presets) == {"quick"}
    assert [spec.text for spec in fig.claims] == [CLAIM]
    assert type(get_family("iid")).__module__ == "icmix_iid.family"
    # A figure that lacks a preset is left out of `reproduce all` at that preset, and refused by name.
    assert "iid" in configs_for("quick") and "iid" not in configs_for("cpu") and "iid" not in configs_for("demo")
    with pytest.raises(ValueError, match="figure 'iid' has no 'cpu' preset"):
        configs_for("cpu", figures=["iid"])


def test_the_plugin_predictor_is_its_closed_form():
    """add-c after each prefix, against counts taken one sequence at a time."""
    family = get_family("iid")
    task = family.build(family.spec(vocab_size=4, alpha=1.0))
    tokens, p = family.sample(task, 50, 12, make_generator(3))
    kt = family.predictors(task)[1]
    got = kt.predict(tokens, task, [1, 5, 12])
    for b in range(50):
        for j, L in enumerate([1, 5, 12]):
            counts = np.bincount(tokens[b, :L].numpy(), minlength=4)
            assert np.allclose(got[b, j].numpy(), (counts + 0.5) / (L + 2.0))
    assert torch.allclose(p.sum(-1), torch.ones(50, dtype=torch.float64))


def test_the_plugin_figure_runs_and_its_claim_reaches_claims_csv_and_the_report(tmp_path):
    out = tmp_path / "iid"
    assert main(["reproduce", "iid", "--preset", "quick", "--out", str(out), "--no-progress",
                 "--set", "n_sequences=500"]) == 0
    table = pd.read_csv(out / "iid.csv")
    assert set(table.key) == {"bayes/variant=exact", "add-constant/variant=kt", "uniform"}
    claims = pd.read_csv(out / "claims.csv", keep_default_na=False)
    assert list(claims.claim) == [CLAIM]  # a single figure's report holds its own claims
    row = claims.iloc[0]
    # The claim's number, recomputed from the figure's table by hand.
    kl = table.pivot_table(index=["seed", "length"], columns="key", values="kl_mean")
    worst = (kl["bayes/variant=exact"] / kl["add-constant/variant=kt"]).groupby("seed").max()
    assert row.measured.startswith(f"{worst.mean():.3g} ± ") and row.verdict == "holds" and worst.max() < 1
    assert row.converged == "–"  # no trained model
    assert CLAIM in (out / "report.md").read_text() and CLAIM in (out / "report.html").read_text()


def test_an_unknown_figure_lists_the_registered_ones_and_says_how_to_register(capsys):
    assert main(["reproduce", "no-such-figure", "--out", "x"]) == 2
    err = capsys.readouterr().err
    assert "unknown figure 'no-such-figure'; registered: mtd-construction" in err
    assert re.search(r"registered: [^.]*, iid[,.]", err)
    assert 'entry-points."icmix.figures"' in err and "--plugin package.module" in err
    assert main(["--plugin", "no_such_module", "reproduce", "iid", "--out", "x"]) == 2
    assert "plugin 'no_such_module' could not be imported" in capsys.readouterr().err


def test_an_unregistered_family_says_how_to_register_one(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("task: {kind: markov-chain}\nmodel: {kind: gpt}\n")
    assert main(["train", str(config), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "unknown task kind 'markov-chain'" in err and 'entry-points."icmix.families"' in err
    assert not (tmp_path / "run").exists()


def tiny(kind: str, steps: int = 30) -> TrainConfig:
    return TrainConfig.from_dict({"task": {"kind": kind, "vocab_size": 3, "length": 8},
                                  "model": {"kind": "gpt", "n_layers": 1, "n_heads": 1, "d_model": 8},
                                  "steps": steps, "batch_size": 16, "loss": "ce", "eval_every": 10, "eval_size": 64})


def plateau(run: Path, tc: TrainConfig, values) -> None:
    """A finished run's config and metrics, its progress metric at ``values`` (evenly spaced steps)."""
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(tc.to_yaml())
    steps = np.linspace(tc.steps / len(values), tc.steps, len(values)).round().astype(int)
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": int(s), "eval_kl": v}) + "\n"
                                               for s, v in zip(steps, values)))


def test_a_family_without_a_bayes_predictor_leaves_convergence_unknown(tmp_path):
    # The plateau: a run stuck at 5.2 times the Bayes value, flat over its last 20 % of steps.
    # Judged against an optimum of 0 (what a family without a Bayes predictor used to get), its
    # tail "improvement" is 0 and it read "converged: yes"; now it reads "unknown".  (With a Bayes
    # predictor the excess is measured against the right optimum: 4.2 times it, which the zoo
    # table shows next to "converged", meaning that more steps at this rate would not move it.)
    with_bayes, without = tiny("iid", 50), tiny("iid-nobayes", 50)
    objective = build_objective(build_task(with_bayes), with_bayes)
    from icmix.random import Stream, stream

    batch = objective.eval_batch(with_bayes.eval_size, stream(with_bayes.seed, Stream.TRAINING_EVALUATION))
    optimum = objective.optimum(batch)
    # The optimum is the Bayes predictor's KL to the truth on the evaluation batch, by hand:
    p, x = batch["latent"], batch["inputs"]
    counts = torch.nn.functional.one_hot(x, 3).double().sum(1)
    bayes = (counts + 1.0) / (x.shape[1] + 3.0)
    assert optimum == pytest.approx((p * (p / bayes).log()).sum(-1).mean().item(), rel=1e-12) and optimum > 0
    stuck = [9 * optimum, 6 * optimum, 5.2 * optimum, 5.2 * optimum, 5.2 * optimum]
    plateau(tmp_path / "nobayes", without, stuck)
    c = run_convergence(tmp_path / "nobayes")
    assert c.optimum is None and c.converged is None and c.status == "unknown" and math.isnan(c.excess)
    plateau(tmp_path / "bayes", with_bayes, stuck)
    c = run_convergence(tmp_path / "bayes")
    assert c.optimum == pytest.approx(optimum) and c.excess == pytest.approx(4.2 * optimum)
    # A family that names no Bayes predictor gets no optimum from its objective either (MTD's and
    # the regression family's own optimum code asks the family first).
    from icmix.families import register_family
    from icmix.families.mtd import MTDFamily

    class NoBayesMTD(MTDFamily):
        def bayes_predictor(self, task):
            return None

    original = get_family("mtd")
    register_family(NoBayesMTD(), replace=True)
    try:
        mtd = TrainConfig.from_dict({"task": {"kind": "mtd", "vocab_size": 3, "order": 2, "length": 8},
                                     "model": {"kind": "gpt", "n_layers": 1, "n_heads": 1, "d_model": 8}})
        objective = build_objective(build_task(mtd), mtd)
        assert objective.optimum(objective.eval_batch(16, make_generator(0))) is None
    finally:
        register_family(original, replace=True)
    assert combined_status(["yes", "yes"]) == "yes" and combined_status(["yes", "unknown"]) == "unknown"
    assert combined_status(["unknown", "no", "yes"]) == "no" and combined_status([]) == "unknown"


def test_a_trained_run_of_a_family_without_bayes_reports_unknown(tmp_path):
    run = train(tiny("iid-nobayes"), tmp_path / "run", progress=False)
    assert run_convergence(run).status == "unknown"
    run = train(tiny("iid"), tmp_path / "run-bayes", progress=False)
    assert run_convergence(run).status in ("yes", "no")


def test_a_plugin_loaded_with_dash_dash_plugin_runs_in_worker_processes_too(tmp_path):
    """``reproduce all --jobs 2`` trains in spawned worker processes: the tutorial's module, loaded
    with ``--plugin`` from the current folder (not installed), reaches them through
    ``ICMIX_PLUGINS``; its claim lands in the full report's ``claims.csv``."""
    import os
    import subprocess
    import sys

    from test_tutorial_extend import chain_example

    (tmp_path / "chain_example.py").write_text(chain_example())
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "ICMIX_PLUGINS")}
    icmix = str(Path(sys.executable).parent / "icmix")
    done = subprocess.run([icmix, "--plugin", "chain_example", "reproduce", "all", "--preset", "quick", "--only", "chain",
                           "--jobs", "2", "--set", "steps=200", "--set", "n_sequences=100", "--no-zoo",
                           "--out", "out"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "training runs: 3 requested by the figures, 3 distinct: 0 already finished, 0 from the model zoo, " \
           "3 to train, 2 at a time" in done.stdout
    claims = pd.read_csv(tmp_path / "out" / "claims.csv", keep_default_na=False).set_index("claim")
    row = claims.loc["A small GPT learns Markov chains in context, between uniform and Bayes"]
    assert row.verdict in ("holds", "doesn't", "not converged", "inconclusive") and row.converged in ("yes", "no")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["training"] == {"requested": 3, "distinct": 3, "finished_before": 0, "from_zoo": 0,
                                    "trained": 3, "failed": 0}


def test_one_figure_leaves_the_report_of_reproduce_all_whole(tmp_path, capsys):
    out = tmp_path / "all"
    out.mkdir()
    (out / "manifest.json").write_text("{}")
    (out / "claims.csv").write_text("every claim\n")
    assert main(["reproduce", "iid", "--preset", "quick", "--out", str(out), "--no-progress",
                 "--set", "n_sequences=50", "--set", "seeds=0"]) == 0
    assert (out / "claims.csv").read_text() == "every claim\n" and (out / "iid.csv").exists()
    assert "left as it was" in capsys.readouterr().out


def test_plugin_modules_load_from_the_current_folder_and_reach_workers_with_their_folder(tmp_path, monkeypatch):
    import os
    import sys

    from icmix import plugins
    from icmix.cli import _load_plugins

    (tmp_path / "plug_here.py").write_text("LOADED = True\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.delenv(plugins.ENVIRONMENT, raising=False)
    try:
        assert _load_plugins(["--plugin=plug_here", "reproduce", "x"]) == ["reproduce", "x"]
        assert sys.modules["plug_here"].LOADED and os.environ[plugins.ENVIRONMENT] == f"plug_here={tmp_path}"
        # A worker elsewhere finds it through the recorded folder.
        del sys.modules["plug_here"]
        sys.path.remove(str(tmp_path))
        monkeypatch.chdir("/")
        plugins.load_from_environment()
        assert sys.modules["plug_here"].LOADED
    finally:
        sys.modules.pop("plug_here", None)
    with pytest.raises(ValueError, match="takes a module name"):
        plugins.load("not a module")


def test_a_broken_plugin_figure_is_named_and_left_out_of_reproduce_all(tmp_path, monkeypatch):
    import sys
    import warnings

    from icmix.experiments import figure as registry
    from icmix.report import configs_for

    (tmp_path / "broken_fig.py").write_text("raise RuntimeError('a bug in the plugin')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.register_figure("broken", "broken_fig:FIGURE")
    try:
        with pytest.raises(ValueError, match=r"figure 'broken' \(broken_fig:FIGURE\) could not be loaded: "
                                             r"RuntimeError: a bug in the plugin"):
            get_figure("broken")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            configs = configs_for("quick")
        assert "broken" not in configs and "mtd-fig3" in configs
        assert any("a bug in the plugin" in str(w.message) for w in caught)
    finally:
        registry._FIGURES.pop("broken")
        sys.modules.pop("broken_fig", None)


def test_the_cache_key_follows_the_library_and_a_plugin_figure_s_own_source(tmp_path, monkeypatch):
    from icmix import report
    from icmix.experiments import figure as registry

    root = Path(report.__file__).resolve().parent
    assert all((root / rel).is_file() for rel in report.REPORT_MODULES)  # the excluded modules exist
    module = tmp_path / "keyed_fig.py"
    source = ("from dataclasses import dataclass\nfrom icmix.experiments import Figure\n"
              "@dataclass(frozen=True)\nclass C:\n    n: int = 1\n"
              "class F(Figure):\n    name, Config, presets = 'keyed', C, {'quick': C()}\n"
              "    def compute(self, cfg, out, progress=True): ...\n    def draw(self, result, cfg): ...\n"
              "FIGURE = F()\n")
    module.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.register_figure("keyed", "keyed_fig:FIGURE")
    try:
        cfg = get_figure("keyed").preset("quick")
        before = report.figure_key("keyed", cfg, "s")
        module.write_text(source + "# edited\n")
        assert report.figure_key("keyed", cfg, "s") != before  # a plugin's edit re-runs its figure
        fig3 = get_figure("mtd-fig3").preset("quick")
        assert report.figure_key("mtd-fig3", fig3, "s") == report.figure_key("mtd-fig3", fig3, "s")
        assert report.figure_key("mtd-fig3", fig3, "s") != report.figure_key("mtd-fig3", fig3, "t")
    finally:
        registry._FIGURES.pop("keyed")


def test_the_local_launcher_trains_in_this_machine_s_pool(tmp_path):
    from icmix.train import make_launcher

    launcher = make_launcher("local", max_parallel=1)
    assert launcher.runs_here
    cfg = tiny("iid", 20)
    assert launcher.train([(cfg, tmp_path / "run", None)], progress=False) == {}
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    with pytest.raises(ValueError, match="--no-wait needs --launcher submitit-local or slurm"):
        make_launcher("local", wait=False)
    with pytest.raises(ValueError, match="--launcher must be one of"):
        make_launcher("cloud")


def test_a_claim_on_runs_of_a_family_without_bayes_reads_unknown_not_converged(tmp_path):
    """The claims table's ``converged`` column for a run whose family names no Bayes predictor:
    ``unknown``; a failing claim on it stays ``doesn't`` (``not converged`` needs a ``no``)."""
    from dataclasses import dataclass

    from icmix.experiments import Figure, claims
    from icmix.experiments.common import run_name

    tc = tiny("iid-nobayes", 50)

    @dataclass(frozen=True)
    class C:
        seeds: tuple[int, ...] = (0,)

    class Stuck(Figure):
        name, Config, presets = "stuck", C, {"quick": C()}

        def runs(self, cfg):
            return {0: tc}

        def compute(self, cfg, out, progress=True): ...

        def draw(self, result, cfg): ...

    fig = Stuck()

    @fig.claim("Test", "never holds", "holds if false", trained=lambda tc, cfg: True)
    def never(c, out, cfg):
        c.mean, c.value, c.verdict = 5.2, "5.2", claims.verdict(False)
        return c

    plateau(tmp_path / "runs" / run_name(tc), tc, [1.0, 0.6, 0.52, 0.52, 0.52])
    [row] = claims.evaluate(tmp_path, {"stuck": C()}, {"stuck"}, [fig])
    assert (row.converged, row.verdict) == ("unknown", "doesn't")
