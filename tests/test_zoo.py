"""The model zoo and convergence-aware verdicts.

- a zoo entry holds the run's final model, config, metrics and provenance, and no optimiser
  state; ``verify`` retrains it bit for bit on this machine, and reports a tampered weight
  file (by its SHA-256, and by retraining when the SHA-256 was forged too);
- ``place`` fills ``OUT/runs`` from the zoo, never replaces a run there, and refuses a stale
  entry (altered file, or a config the code now names differently), with a warning;
- every entry shipped with the package is sound, is a run of the ``cpu`` preset, and the zoo
  keeps its size caps;
- convergence: what doubling the steps did to the excess over the Bayes-optimal value, checked by
  hand on written metrics; ``Objective.optimum`` against the predictors it must beat;
- claims: ``converged`` is filled for every trained-model claim, and a failing claim on runs
  still improving reads ``not converged``.
"""

import ast
import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from icmix import zoo
from icmix.cli import main
from icmix.experiments import claims
from icmix.experiments.common import run_name, train_runs
from icmix.report import configs_for
from icmix.random import Stream, stream
from icmix.train import TrainConfig
from icmix.train.convergence import TOLERANCE, WINDOW, Convergence, run_convergence
from icmix.train.loop import build_objective, build_task

TINY = {
    "task": {"kind": "mtd", "vocab_size": 4, "order": 2, "seed": 3, "length": 8},
    "model": {"kind": "disentangled", "n_layers": 2, "n_heads": 1},
    "optim": {"lr": 0.01, "schedule": "cosine", "warmup_steps": 3},
    "steps": 40, "batch_size": 16, "eval_every": 5, "eval_size": 32, "checkpoint_every": 10, "seed": 7,
}
DATA = Path(__file__).parent / "data" / "quick-tables"


@pytest.fixture(scope="module")
def tiny_zoo(tmp_path_factory):
    """A zoo with one tiny run, trained here with one thread."""
    base = tmp_path_factory.mktemp("zoo")
    tc = TrainConfig.from_dict(TINY)
    name = run_name(tc)
    zoo.train_entry(name, tc, ["tiny-fig"], base / "work", base / "root" / "cpu" / name, threads=1,
                    command="pytest")
    return base / "root", name, tc


def copy_zoo(tiny_zoo, tmp_path) -> tuple[Path, zoo.Entry]:
    root, name, _ = tiny_zoo
    shutil.copytree(root, tmp_path / "root")
    return tmp_path / "root", zoo.lookup(name, tmp_path / "root")


def test_an_entry_holds_the_final_model_and_its_provenance(tiny_zoo):
    root, name, tc = tiny_zoo
    entry = zoo.lookup(name[:20], root)  # a unique prefix finds it
    assert entry.name == name and entry.preset == "cpu"
    files = sorted(p.relative_to(entry.path).as_posix() for p in entry.path.rglob("*") if p.is_file())
    assert files == sorted([*zoo.FILES, zoo.PROVENANCE])  # no checkpoints, no optimiser state
    prov = entry.provenance
    assert prov["threads"] == 1 and prov["torch"] == torch.__version__ and prov["steps"] == 40
    assert prov["command"] == "pytest" and prov["figures"] == ["tiny-fig"] and prov["wall_seconds"] > 0
    assert prov["cpu"] == zoo.cpu_model() and prov["git_commit"]
    assert TrainConfig.from_yaml(entry.path / "config.yaml") == tc
    assert entry.problems() == []
    with pytest.raises(ValueError, match="no zoo run named"):
        zoo.lookup("nothing-like-it", root)


def test_verify_retrains_bit_identically(tiny_zoo, tmp_path):
    root, name, _ = tiny_zoo
    record = zoo.verify(name, tmp_path / "work", root, progress=False)
    assert record["status"] == "pass" and record["identical"] and record["max_weight_difference"] == 0.0
    assert record["metric"] == "eval_kl" and record["metric_shipped"] == record["metric_retrained"]


def test_verify_reports_a_tampered_weight_file(tiny_zoo, tmp_path):
    root, entry = copy_zoo(tiny_zoo, tmp_path)
    weights = entry.path / "model" / "model.safetensors"
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] + 1e-3
    save_file(tensors, weights)
    assert any("SHA-256 mismatch" in p for p in entry.problems())
    record = zoo.verify(entry.name, tmp_path / "work", root, progress=False)
    assert record["status"] == "fail" and "SHA-256 mismatch" in record["reason"]
    assert record["retrain_seconds"] == 0.0 and not (tmp_path / "work").exists()  # refused at once
    # The SHA-256 forged to match, its digest left: the provenance is seen as edited.
    prov = entry.provenance
    prov["sha256"]["model/model.safetensors"] = zoo.sha256(weights)
    (entry.path / zoo.PROVENANCE).write_text(json.dumps(prov))
    assert zoo.lookup(entry.name, root).problems() == ["provenance.json was edited: its fields no longer match its digest"]
    # ... and the digest forged too: a nudge this small still gives the recorded metrics (the
    # evaluation check passes), and retraining finds the altered weights.
    prov["digest"] = zoo.digest(prov)
    (entry.path / zoo.PROVENANCE).write_text(json.dumps(prov))
    assert zoo.lookup(entry.name, root).problems() == []
    record = zoo.verify(entry.name, tmp_path / "work2", root, progress=False)
    assert record["step"] == "retraining" and record["evaluation"]["measured"]
    assert record["status"] == "fail" and "weights differ" in record["reason"]
    assert abs(record["max_weight_difference"] - 1e-3) < 1e-6
    assert main(["zoo", "verify", entry.name[:25], "--root", str(root), "--out", str(tmp_path / "out"),
                 "--no-progress"]) == 1
    saved = json.loads((tmp_path / "out" / "zoo-verify" / f"{entry.name}.json").read_text())
    assert saved["status"] == "fail"


def test_place_fills_missing_runs_and_never_uses_a_stale_entry(tiny_zoo, tmp_path):
    root, entry = copy_zoo(tiny_zoo, tmp_path)
    tc = TrainConfig.from_dict(TINY)
    out = tmp_path / "out"
    run = out / "runs" / entry.name
    placed, stale = zoo.place([(tc, run)], root)
    assert placed == [run] and stale == {} and zoo.source(run) == "zoo"
    before = (run / "model" / "model.safetensors").read_bytes()
    assert train_runs(out, [tc], progress=False) == [run]  # a finished run: reused, not trained
    assert (run / "model" / "model.safetensors").read_bytes() == before and not (run / "checkpoints").exists()
    # A run already in OUT is never replaced.
    assert zoo.place([(tc, run)], root) == ([], {})
    # Stale: the config now maps to another name (edited here, as a changed default would).
    cfg_file = entry.path / "config.yaml"
    cfg_file.write_text(cfg_file.read_text().replace("lr: 0.01", "lr: 0.02"))
    prov = entry.provenance
    prov["sha256"]["config.yaml"] = zoo.sha256(cfg_file)
    prov["digest"] = zoo.digest(prov)
    (entry.path / zoo.PROVENANCE).write_text(json.dumps(prov))
    messages = []
    placed, stale = zoo.place([(tc, out / "runs2" / entry.name)], root, warn=messages.append)
    assert placed == [] and "is now named" in stale[out / "runs2" / entry.name]
    assert messages and "stale and was not used" in messages[0]
    assert not (out / "runs2").exists()
    listing = zoo.table(root)
    assert listing.status.iloc[0].startswith("stale: its config is now named")


def test_the_shipped_zoo_is_sound_and_within_its_caps():
    found = zoo.entries(zoo.ZOO_ROOT)
    assert found  # the zoo ships runs (a missing package-data rule would empty it)
    tiers = {preset: zoo.preset_runs(preset) for preset in ("cpu", "long")}
    for name, entry in found.items():
        assert entry.preset in tiers and name in tiers[entry.preset], name
        assert entry.problems() == [], (name, entry.problems())
        tc = tiers[entry.preset][name][0]
        assert entry.provenance["steps"] == tc.steps
        # the long tier's first-seed runs ship their checkpoint 1000 steps before the end where it is
        # at most 2 MiB (not the regression GPT's), the others none
        assert entry.provenance.get("tail_step") == (tc.steps - zoo.TAIL_STEPS if zoo.ships_tail(entry.preset, tc)
                                                     else None), name
        if "tail_step" in entry.provenance:  # the estimate the rule uses, against the files shipped
            shipped = sum((entry.path / zoo.TAIL / f).stat().st_size for f in ("model.safetensors", "trainer.safetensors"))
            assert zoo.tail_bytes(tc) <= shipped <= 1.05 * zoo.tail_bytes(tc) + 20_000, (name, shipped)
    total, files = zoo.sizes(zoo.ZOO_ROOT)
    assert total <= zoo.SIZE_CAP and all(size <= zoo.FILE_CAP for _, size in files)


def test_the_packages_manifest_is_the_shipped_zoo(capsys):
    """``icmix/zoo/shipped.py`` lists every shipped entry and its provenance exactly; every
    shipped entry's weights give its recorded final metrics (what sealing it required)."""
    from icmix.zoo.shipped import SHIPPED

    found = zoo.entries(zoo.ZOO_ROOT)
    measured = sorted(zoo.ZOO_ROOT.glob(f"*/{zoo.MEASUREMENTS}"))  # a tier's claims measurements, sealed too
    assert zoo.manifest() == SHIPPED and len(SHIPPED) == len(found) + len(measured)
    assert all(zoo.measurements(m.parent.name) == m for m in measured)
    assert all(e.listed() and e.provenance["digest"] == zoo.digest(e.provenance) for e in found.values())
    assert main(["zoo", "manifest"]) == 0 and f"matches its manifest ({len(SHIPPED)} entries)" in capsys.readouterr().out
    bad = {n: r for n, e in found.items() if not (r := zoo.check_evaluation(e))["ok"]}
    assert bad == {}


def test_sealing_a_zoo_refuses_a_damaged_entry(tiny_zoo, tmp_path, monkeypatch):
    root, name, _ = tiny_zoo
    shutil.copytree(root, tmp_path / "zoo")
    monkeypatch.setattr(zoo, "ZOO_ROOT", (tmp_path / "zoo").resolve())
    monkeypatch.setattr(zoo, "MANIFEST_MODULE", tmp_path / "shipped.py")
    zoo.write_manifest()
    written = ast.literal_eval((tmp_path / "shipped.py").read_text().split("SHIPPED: dict[str, str] = ", 1)[1])
    assert written == {f"cpu/{name}": zoo.sha256(tmp_path / "zoo" / "cpu" / name / zoo.PROVENANCE)}
    entry = zoo.lookup(name, tmp_path / "zoo")
    rows = (entry.path / "metrics.jsonl").read_text().splitlines()  # a recorded metric that its weights do not give
    (entry.path / "metrics.jsonl").write_text("\n".join(rows[:-1] + [rows[-1].replace('"eval_kl": ', '"eval_kl": 1')])
                                              + "\n")
    write_provenance(entry, entry.provenance)
    with pytest.raises(ValueError, match="damaged entries, not sealed: .*do not give its recorded final metrics"):
        zoo.write_manifest()


def test_an_entry_records_its_convergence_data_when_shipped_and_verify_checks_them(tiny_zoo, tmp_path):
    """``zoo list`` reads what ``export`` recorded (``convergence_record``), equal to a
    recomputation from the run; an edited record (its digest made to match) fails ``verify`` at
    the evaluation step, before any retraining."""
    root, entry = copy_zoo(tiny_zoo, tmp_path)
    stored = zoo.stored_convergence(entry.provenance)
    fresh = run_convergence(entry.path)
    assert stored is not None and stored.optimum == pytest.approx(fresh.optimum, rel=1e-12)
    assert (stored.final, stored.start, stored.status) == (fresh.final, fresh.start, fresh.status)
    assert zoo.convergence_mismatches(entry) == []
    prov = dict(entry.provenance)
    prov["convergence"] = {**prov["convergence"], "optimum": prov["convergence"]["optimum"] * 0.5}
    prov["digest"] = zoo.digest(prov)
    (entry.path / zoo.PROVENANCE).write_text(json.dumps(prov))
    record = zoo.verify(entry.name, tmp_path / "work", root, progress=False)
    assert record["status"] == "fail" and record["step"] == "evaluation" and "optimum" in record["reason"]
    assert not (tmp_path / "work").exists()


def test_zoo_list_of_the_shipped_zoo_reads_without_torch_within_100_columns():
    """The shipped entries carry their convergence data (sealed): listing them imports neither
    torch nor matplotlib, and the default table fits 100 columns; csv and json give every column."""
    import subprocess
    import sys

    assert all(zoo.stored_convergence(e.provenance) is not None for e in zoo.entries(zoo.ZOO_ROOT).values())
    code = ("import sys\nfrom icmix.cli import main\nmain(['zoo', 'list'])\n"
            "print([m for m in ('torch', 'matplotlib') if m in sys.modules], file=sys.stderr)")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("ICMIX_ZOO", "ICMIX_PLUGINS")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0 and done.stderr.strip().splitlines()[-1] == "[]", done.stderr
    lines = done.stdout.splitlines()
    assert max(map(len, lines)) <= 100 and "cpu tier: " in done.stdout and "long tier: " in done.stdout
    assert sum(1 for line in lines if " ok" in line) == len(zoo.entries(zoo.ZOO_ROOT))


def test_the_shipped_convergence_data_are_what_this_code_computes():
    """One shipped entry of each kind (model, task, tier): its recorded convergence data against a
    recomputation (``zoo manifest --write`` refreshes them when the rule or optimum changes)."""
    kinds = {}
    for e in zoo.entries(zoo.ZOO_ROOT).values():
        cfg = TrainConfig.from_yaml(e.path / "config.yaml")
        kinds.setdefault((e.preset, cfg.model.kind, cfg.task.kind, getattr(cfg.task, "order", None)), e)
    assert len(kinds) >= 6
    for key, e in kinds.items():
        assert zoo.convergence_mismatches(e) == [], key


def test_zoo_list_formats(tiny_zoo, capsys):
    root, name, _ = tiny_zoo
    assert main(["zoo", "list", "--format", "csv", "--root", str(root)]) == 0
    rows = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert list(rows.run) == [name] and {"figures", "commit", "cpu", "threads", "excess"} <= set(rows.columns)
    assert main(["zoo", "list", "--format", "json", "--root", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["run"] == name
    assert main(["zoo", "list", "--wide", "--root", str(root)]) == 0
    assert "tiny-fig" in capsys.readouterr().out


def test_zoo_list_prints_runs_and_sizes(tiny_zoo, capsys):
    root, name, _ = tiny_zoo
    assert main(["zoo", "list", "--root", str(root)]) == 0
    text = capsys.readouterr().out
    assert name in text and "converged" in text
    assert main(["zoo", "list", "--sizes", "--root", str(root)]) == 0
    text = capsys.readouterr().out
    assert "model/model.safetensors" in text and "within the caps" in text
    assert main(["zoo", "verify", "nothing", "--root", str(root)]) == 2
    assert "icmix: error: no zoo run named 'nothing'" in capsys.readouterr().err


# --- convergence -----------------------------------------------------------------------------

def write_metrics(run: Path, tc: TrainConfig, values) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(tc.to_yaml())
    steps = np.linspace(tc.steps / len(values), tc.steps, len(values)).round().astype(int)
    metric = build_objective(build_task(tc), tc).progress_metric
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": int(s), metric: float(v)}) + "\n"
                                               for s, v in zip(steps, values)))


def test_convergence_asks_what_doubling_the_steps_did_at_a_constant_rate(tmp_path):
    constant = TrainConfig.from_dict({**TINY, "optim": {"lr": 0.01, "schedule": "constant", "warmup_steps": 3}})
    # 10 evaluations at steps 4, 8, ..., 40: the window of 10 % before half the steps (20) holds
    # steps 17..20 (the row of step 20), before the end steps 37..40 (the row of step 40).
    values = [3.0, 2.0, 1.8, 1.6, 1.5, 1.4, 1.35, 1.3, 1.25, 1.2]
    write_metrics(tmp_path / "r", constant, values)
    c = run_convergence(tmp_path / "r")
    assert (c.start_step, c.steps, c.start, c.end, c.final) == (20, 40, 1.5, 1.2, 1.2)
    assert c.metric == "eval_kl" and 0 < c.optimum < 1.2 and c.constant and c.interval == 0.0  # one row a window
    assert c.improvement == pytest.approx(0.3 / (1.5 - c.optimum)) and c.status == "no"
    # The windows' spread gives the interval: here 20 % of the steps, two evaluations each end.
    c = run_convergence(tmp_path / "r", window=0.2)
    a, b = np.array([1.6, 1.5]), np.array([1.25, 1.2])
    assert (c.start, c.end) == (pytest.approx(a.mean()), pytest.approx(b.mean()))
    se2 = a.var(ddof=1) / 2 + b.var(ddof=1) / 2  # Welch: t at (se²)² / Σ (sᵢ²/nᵢ)² / (nᵢ - 1) degrees of freedom
    df = se2 ** 2 / ((a.var(ddof=1) / 2) ** 2 + (b.var(ddof=1) / 2) ** 2)
    from scipy import stats

    assert df == pytest.approx(1.470588, rel=1e-6) and c.interval == pytest.approx(stats.t.ppf(0.975, df) * np.sqrt(se2))
    # 5 % of the excess at half the steps, or the interval, decides:
    assert Convergence("m", 1.0, 50, 100, 1.10, 1.096).converged  # fell by 4 % of the excess 0.1
    assert not Convergence("m", 1.0, 50, 100, 1.10, 1.094).converged  # 6 %
    assert Convergence("m", 1.0, 50, 100, 1.10, 1.09, 1.09, interval=0.011).converged  # 10 %, within its noise
    assert not Convergence("m", 1.0, 50, 100, 1.10, 1.09, 1.09, interval=0.009).converged
    assert Convergence("m", 1.0, 50, 100, 1.10, 1.2).converged  # got worse: not improving
    # A flat plateau at a constant rate is converged: more steps would not move it.
    write_metrics(tmp_path / "flat", constant, [3.0, 2.0] + [1.5] * 8)
    assert run_convergence(tmp_path / "flat").status == "yes"
    # An annealed rate (TINY is cosine) cannot tell, however its tail moved.
    write_metrics(tmp_path / "cosine", TrainConfig.from_dict(TINY), values)
    c = run_convergence(tmp_path / "cosine")
    assert c.status == "unknown" and not c.constant and "anneals" in c.why
    assert (WINDOW, TOLERANCE) == (0.1, 0.05)
    write_metrics(tmp_path / "cut", constant, [3.0, 2.0])  # steps 20, 40 ... relabelled below as an interrupted run
    rows = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "cut" / "metrics.jsonl").write_text(rows[0].replace('"step": 20', '"step": 10') + "\n")
    with pytest.raises(ValueError, match="has not finished: its last eval_kl is at step 10 of 40"):
        run_convergence(tmp_path / "cut")


def test_the_optimum_is_below_every_predictor_on_the_eval_batch():
    from icmix.estimators.mtd import mirror_descent, predictive
    from icmix.metrics import kl_divergence

    tc = TrainConfig.from_dict({**TINY, "eval_size": 256})
    objective = build_objective(build_task(tc), tc)
    batch = objective.eval_batch(256, stream(tc.seed, Stream.TRAINING_EVALUATION))
    best = objective.optimum(batch)
    truth = objective.reference(batch).double()
    pi = objective.task.transition.double()
    for lam in (torch.full((256, 2), 0.5, dtype=torch.float64), mirror_descent(batch["inputs"], pi, 2, eta=0.3)):
        assert 0 < best < kl_divergence(truth, predictive(batch["inputs"], pi, lam)).mean().item()
    assert kl_divergence(truth, truth).mean().item() == pytest.approx(0, abs=1e-12)  # the truth would be 0

    from icmix.estimators.regression import ols

    from icmix.experiments.figure import get_figure

    fig = get_figure("mlr-fig2")
    rtc = next(iter(fig.runs(fig.presets["quick"]).values()))  # d = 8, m = 5, sigma = 1
    robj = build_objective(build_task(rtc), rtc)
    rbatch = robj.eval_batch(512, stream(0, Stream.TRAINING_EVALUATION))
    xs, ys = rbatch["xs"].double(), rbatch["ys"].double()
    d, noise = rtc.task.dim, rtc.task.noise
    ols_nmse = ((ols(xs, ys)[:, -1] - ys[:, -1]) ** 2).mean().item() / d
    floor = noise**2 / d  # the noise alone, in expectation (512 prompts estimate it within ~10 %)
    assert 0.9 * floor < robj.optimum(rbatch) < 0.6 * ols_nmse


def test_claims_read_not_converged_on_runs_still_improving(tmp_path):
    from icmix.experiments import figure_names, get_figure

    quick = [get_figure(n) for n in figure_names()
             if get_figure(n).__module__.startswith("icmix.") and get_figure(n).has_preset("quick")]
    # the papers' figures, whose quick tables tests/data holds; the testbeds' (icmix.testbeds) name their runs too
    testbeds = [f for f in quick if f.__module__.startswith("icmix.testbeds.")]
    figs = [f for f in quick if f not in testbeds]
    assert len(testbeds) == 3 and all(
        claims.claim_runs(spec, f, f.preset("quick")) for f in testbeds for spec in f.claims if spec.trained)
    configs = configs_for("quick", figures=[f.name for f in figs])
    specs = [(fig, spec) for fig in figs for spec in fig.claims]
    trained = [(fig, spec) for fig, spec in specs if spec.trained]
    assert len(trained) == 15  # every trained-model claim names its runs
    # Five evaluations at 20 %, 40 %, ... of the steps: half the steps is the one at 40 %.
    cases = {"improving": ([9.0, 5.0, 4.0, 3.0, 2.0], "constant", "no"),
             "flat": ([9.0, 5.0, 5.0, 5.0, 5.0], "constant", "yes"),
             "annealed": ([9.0, 5.0, 4.0, 3.0, 2.0], "cosine", "unknown")}
    for case, (values, schedule, _) in cases.items():
        shutil.copytree(DATA, tmp_path / case)
        for fig, spec in trained:
            names = claims.claim_runs(spec, fig, configs[fig.name])
            assert names, spec.fn.__name__
            for name, (tc, _) in zoo.preset_runs("quick", [fig.name]).items():
                if name in names:
                    tc = dataclasses.replace(tc, optim=dataclasses.replace(tc.optim, schedule=schedule))
                    write_metrics(tmp_path / case / "runs" / name, tc, values)
    available = {f for _, spec in specs for f in spec.figures}
    recorded = pd.read_csv(DATA / "claims.csv")
    for case, (_, _, converged) in cases.items():
        table = claims.table(claims.evaluate(tmp_path / case, configs, available, figs))
        assert list(table.measured) == list(recorded.measured)
        for row, old, (_, spec) in zip(table.itertuples(), recorded.itertuples(), specs):
            if spec.trained is None:
                assert row.converged == "–" and row.verdict == old.verdict
            else:
                assert row.converged == converged
                expected = "not converged" if (old.verdict == "doesn't" and converged == "no") else old.verdict
                assert row.verdict == expected, (row.claim, row.verdict)
    assert (table.converged != "–").sum() == 15


def test_zoo_build_trains_what_the_zoo_lacks_in_parallel(tmp_path, capsys, monkeypatch):
    """``icmix zoo build`` over a registered figure's runs: 2 at once, then nothing to do."""
    import sys
    from dataclasses import dataclass

    from icmix.experiments import Figure, register_figure
    from icmix.experiments import figure as registry

    @dataclass(frozen=True)
    class TinyConfig:
        seeds: tuple[int, ...] = (0, 1)

        def runs(self):
            return {s: TrainConfig.from_dict({**TINY, "seed": s, "steps": 10}) for s in self.seeds}

    class Tiny(Figure):
        name, Config, presets = "tiny-zoo-fig", TinyConfig, {p: TinyConfig() for p in ("quick", "cpu", "paper")}

        def runs(self, cfg):
            return cfg.runs()

        def compute(self, cfg, out, progress=True):
            raise AssertionError("zoo build trains runs, it computes no figure")

        def draw(self, result, cfg):
            raise AssertionError

    register_figure(Tiny())
    try:
        args = ["zoo", "build", "--preset", "cpu", "--only", "tiny-zoo-fig", "--root", str(tmp_path / "root"),
                "--work", str(tmp_path / "work"), "--jobs", "2", "--no-progress"]
        monkeypatch.setattr(sys, "argv", ["icmix", *args])  # as the console script sees it (not pytest's, or a worker's)
        assert main(args) == 0 and "2 new entries" in capsys.readouterr().out
        found = zoo.entries(tmp_path / "root")
        assert len(found) == 2 and all(e.problems() == [] for e in found.values())
        assert {e.provenance["figures"][0] for e in found.values()} == {"tiny-zoo-fig"}
        assert all(e.provenance["command"] == "icmix " + " ".join(args) for e in found.values())
        assert main(args) == 0 and "0 new entries" in capsys.readouterr().out
        damaged = next(iter(found.values()))
        (damaged.path / "model" / "model.safetensors").write_bytes(b"garbage")
        assert main(args) == 0  # the CLI prints warnings as one line each
        printed = capsys.readouterr()
        assert re.search(r"icmix: warning: zoo run \S+ is stale .*SHA-256 mismatch.*training it again", printed.err)
        assert "1 new entry" in printed.out and zoo.lookup(damaged.name, tmp_path / "root").problems() == []
    finally:
        registry._FIGURES.pop("tiny-zoo-fig")


def test_the_demo_preset_trains_nothing_the_zoo_lacks(monkeypatch):
    """``make demo`` takes every run from the zoo: a figure's demo config is the long preset where
    the zoo holds every one of its long runs, else the cpu preset, with evaluation sizes changed
    only, never a training run; without the long tier, every figure is on the cpu tier."""
    from icmix.experiments import figure_names, get_figure
    from icmix.report import demo_config, demo_tier

    shipped = zoo.entries()
    for name in figure_names():
        fig = get_figure(name)
        tier = demo_tier(name)
        if tier is None:  # a plugin's figure with only a quick preset, or claims-scaling with no measurements shipped
            assert not fig.has_preset("cpu") and (not fig.has_preset("long") or not fig.zoo)
            continue
        demo, base = fig.runs(demo_config(name)), fig.runs(fig.presets[tier])
        if fig.zoo:
            assert {run_name(tc) for tc in demo.values()} == {run_name(tc) for tc in base.values()}, name
        else:  # claims-scaling: the demo fits the zoo's measurements and trains nothing
            assert demo == {} and zoo.measurements("long") is not None
        assert all(run_name(tc) in shipped for tc in demo.values()), name
    assert configs_for("demo")["mtd-fig4"].ablation_steps == 0 and configs_for("cpu")["mtd-fig4"].ablation_steps > 0
    monkeypatch.setattr(zoo, "entries", lambda root=None: {n: e for n, e in shipped.items() if e.preset == "cpu"})
    monkeypatch.setattr(zoo, "measurements", lambda preset, root=None: None)
    assert {demo_tier(n) for n in configs_for("demo")} == {"cpu"} and "claims-scaling" not in configs_for("demo")
    assert set(zoo.preset_runs("demo")) == set(zoo.preset_runs("cpu"))


def test_a_damaged_entry_is_stale_and_the_others_still_work(tiny_zoo, tmp_path):
    root, entry = copy_zoo(tiny_zoo, tmp_path)
    broken = root / "cpu" / "broken-run"
    broken.mkdir()
    (broken / zoo.PROVENANCE).write_text("{not json")
    (root / "cpu" / f".{entry.name}.tmp-x").mkdir()  # an entry being written: not an entry
    (root / "cpu" / f".{entry.name}.tmp-x" / zoo.PROVENANCE).write_text("{}")
    found = zoo.entries(root)
    assert sorted(found) == sorted(["broken-run", entry.name])
    assert "cannot be read" in found["broken-run"].problems()[0] and found[entry.name].problems() == []
    record = zoo.verify("broken-run", tmp_path / "work", root, progress=False)
    assert record["status"] == "fail" and record["retrain_seconds"] == 0.0  # refused without retraining
    (entry.path / "config.yaml").write_text("task: [unclosed")
    assert any("no longer a valid config" in p or "SHA-256" in p for p in zoo.lookup(entry.name, root).problems())


def write_provenance(entry, prov: dict) -> None:
    """Write an entry's provenance as its own machine would have (SHA-256s and digest consistent)."""
    for rel in zoo.FILES:
        prov["sha256"][rel] = zoo.sha256(entry.path / rel)
    prov["digest"] = zoo.digest(prov)
    (entry.path / zoo.PROVENANCE).write_text(json.dumps(prov))


def test_verify_elsewhere_passes_within_the_metric_tolerance(tiny_zoo, tmp_path, monkeypatch):
    """On another CPU (simulated: the shipped weights nudged, the provenance naming another
    CPU), bits may differ: verify reports the weight difference and judges the final metric."""
    root, entry = copy_zoo(tiny_zoo, tmp_path)
    prov = entry.provenance
    prov["cpu"] = "Another CPU"
    write_provenance(entry, prov)
    record = zoo.verify(entry.name, tmp_path / "work", root, progress=False)
    assert record["status"] == "pass" and record["identical"]  # identical bits pass anywhere
    _nudged(entry, 1e-7)
    record = zoo.verify(entry.name, tmp_path / "work2", root, progress=False)
    assert record["status"] == "pass" and not record["identical"] and "another CPU" in record["reason"]
    assert 0 < record["max_weight_difference"] < 1e-6
    # Another model altogether, recorded with its own metrics (so the evaluation check passes):
    # its final eval_kl is beyond the 2 % tolerance of the retrained run's.
    _nudged(entry, 0.2)
    measured = zoo.check_evaluation(entry)["measured"]
    rows = (entry.path / "metrics.jsonl").read_text().splitlines()
    (entry.path / "metrics.jsonl").write_text("\n".join(rows[:-1] + [json.dumps({**json.loads(rows[-1]), **measured})])
                                              + "\n")
    prov = json.loads((entry.path / zoo.PROVENANCE).read_text())
    write_provenance(entry, {**prov, "convergence": zoo.convergence_record(entry.path)})  # its data made to match
    assert zoo.check_evaluation(entry)["ok"]
    record = zoo.verify(entry.name, tmp_path / "work3", root, progress=False)
    assert record["status"] == "fail" and record["step"] == "retraining" and "tolerance 2%" in record["reason"]
    with pytest.raises(ValueError, match="exists"):
        zoo.verify(entry.name, tmp_path / "work3", root, progress=False)  # never trains over a folder


def _nudged(entry, by: float = 1e-7) -> None:
    """Shift the shipped weights by ``by`` (1e-7: what another CPU's rounding does), provenance updated."""
    from safetensors.torch import load_file, save_file

    weights = entry.path / "model" / "model.safetensors"
    save_file({k: v + by * torch.ones_like(v) for k, v in load_file(weights).items()}, weights)
    write_provenance(entry, json.loads((entry.path / zoo.PROVENANCE).read_text()))


@pytest.mark.parametrize("features", [None, "AVX512 flags:0123abcd"])
def test_same_cpu_name_other_instruction_sets_is_another_cpu(tiny_zoo, tmp_path, features):
    """CPU model names can hide the instruction sets that pick torch's kernels (a cloud's
    "AMD EPYC" is several generations): an entry whose recorded features differ from this
    machine's, or are not recorded (entries from before they were), is judged by the metric
    tolerance, not failed as if the training code had changed."""
    root, entry = copy_zoo(tiny_zoo, tmp_path)
    assert entry.provenance["cpu_features"] == zoo.cpu_features()
    prov = entry.provenance
    if features is None:
        del prov["cpu_features"]
    else:
        prov["cpu_features"] = features
    write_provenance(entry, prov)
    _nudged(entry)
    record = zoo.verify(entry.name, tmp_path / "work", root, progress=False)
    assert record["status"] == "pass" and not record["identical"], record["reason"]
    assert "another CPU" in record["reason"] and record["here"]["cpu_features"] == zoo.cpu_features()
    # With this machine's features recorded, differing bits mean the numbers changed.
    prov = json.loads((entry.path / zoo.PROVENANCE).read_text())
    prov["cpu_features"] = zoo.cpu_features()
    write_provenance(entry, prov)
    record = zoo.verify(entry.name, tmp_path / "work2", root, progress=False)
    assert record["status"] == "fail" and "same CPU" in record["reason"]


def test_the_runs_make_demo_verifies_name_one_shipped_entry_each():
    """``make demo`` checks ``VERIFY`` (retrained) and ``VERIFY_TAIL`` (resumed from their tails):
    each must name exactly one entry of the shipped zoo (a prefix two tiers share is refused)."""
    text = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    names = {key: re.search(rf"^{key} \?= (.+)$", text, re.M).group(1).split() for key in ("VERIFY", "VERIFY_TAIL")}
    assert len(names["VERIFY"]) == 1 and len(names["VERIFY_TAIL"]) == 2
    for name in names["VERIFY"] + names["VERIFY_TAIL"]:
        assert zoo.lookup(name, zoo.ZOO_ROOT).name.startswith(name)
    assert all("tail_step" in zoo.lookup(n, zoo.ZOO_ROOT).provenance for n in names["VERIFY_TAIL"])
