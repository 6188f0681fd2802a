"""Smoke tier for the CLI and the evaluation table, plus one numeric check of the table."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from icmix import MTDTask
from icmix.cli import main
from icmix.estimators.mtd import bayes_exact, mirror_descent
from icmix.predictors import Key, LagPredictor, TunedMirrorDescent, true_predictive
from icmix.evaluate import evaluate_mtd
from icmix.experiments import mtd_fig3


def test_estimate_npy_and_csv(tmp_path, capsys):
    task = MTDTask(5, 2, seed=0)
    tokens, _ = task.sample(3, 30, generator=torch.Generator().manual_seed(0))
    np.save(tmp_path / "tok.npy", tokens.numpy())
    np.savetxt(tmp_path / "tok.csv", tokens.numpy(), delimiter=",", fmt="%d")
    np.savetxt(tmp_path / "pi.csv", task.transition.numpy(), delimiter=",")
    out = tmp_path / "lam.csv"
    assert main(["estimate", str(tmp_path / "tok.npy"), "--transition", str(tmp_path / "pi.csv"),
                 "--order", "2", "--out", str(out), "--gibbs-samples", "50", "--gibbs-burn-in", "10"]) == 0
    table = pd.read_csv(out)
    assert set(table["estimator"]) == {"md", "em", "em-steps", "bayes-exact", "bayes-gibbs"}
    assert len(table) == 15
    exact = table[table.estimator == "bayes-exact"][["lag1", "lag2"]].to_numpy()
    np.testing.assert_allclose(exact, bayes_exact(tokens, task.transition, 2).numpy(), atol=1e-12)
    assert main(["estimate", str(tmp_path / "tok.csv"), "--transition", str(tmp_path / "pi.csv"),
                 "--order", "2", "--estimator", "md", "em"]) == 0
    assert "lag2" in capsys.readouterr().out
    # --beta means eta = beta / (M N): the same numbers as the library with that eta.
    assert main(["estimate", str(tmp_path / "tok.npy"), "--transition", str(tmp_path / "pi.csv"), "--order", "2",
                 "--estimator", "md", "--beta", "8", "--out", str(tmp_path / "b.csv")]) == 0
    got = pd.read_csv(tmp_path / "b.csv")[["lag1", "lag2"]].to_numpy()
    np.testing.assert_allclose(got, mirror_descent(tokens, task.transition, 2, 8 / (2 * 28)).numpy(), atol=1e-12)
    assert main(["estimate", str(tmp_path / "tok.npy"), "--transition", str(tmp_path / "pi.csv"), "--order", "2",
                 "--beta", "8", "--eta", "0.1"]) == 2


def test_exact_truth_predictor_has_zero_kl_and_tuning_picks_from_grid():
    task = MTDTask(6, 2, seed=1)
    truth = {}

    class Oracle:
        name, key = "oracle", Key("oracle")

        def predict(self, tokens, task, lengths):
            return true_predictive(tokens, truth["lam"], task, lengths)

    # evaluate_mtd samples with its own generator; reproduce it to get the oracle's lam.
    g = torch.Generator().manual_seed(3)
    truth["lam"] = task.sample(50, 20, generator=g)[1]
    tuned = TunedMirrorDescent(steps=1, betas=(0.1, 1.0, 10.0))
    table = evaluate_mtd(task, [Oracle(), tuned, LagPredictor(Key("bayes", "exact"), lambda x, pi, m, L: bayes_exact(x, pi, m, 1.0, L))],
                         [5, 20], n_sequences=50, n_tune=30, seed=3, progress=False)
    assert list(table.columns[:6]) == ["estimator", "length", "kl_mean", "kl_sem", "kl_ci", "n"]
    assert np.allclose(table[table.estimator == "oracle"]["kl_mean"], 0, atol=1e-15)
    md = table[table.estimator == tuned.name]
    assert set(md["beta"]).issubset({0.1, 1.0, 10.0})
    np.testing.assert_allclose(md["eta"], md["beta"] / (2 * (md["length"] - 2)))
    assert (table["kl_mean"] >= 0).all()


def test_reproduce_fig3_tiny(tmp_path):
    out = tmp_path / "fig3"
    code = main(["reproduce", "mtd-fig3", "--out", str(out), "--no-progress", "--seeds", "2",
                 "--set", "lengths=(6, 12)", "--set", "n_sequences=40", "--set", "n_tune=20",
                 "--set", "gibbs_samples=30", "--set", "gibbs_burn_in=5", "--set", "md_steps=(1, 2)"])
    assert code == 0
    table = pd.read_csv(out / "mtd-fig3.csv")
    assert set(table["seed"]) == {0, 1}
    assert set(table["length"]) == {6, 12}
    assert (out / "mtd-fig3.png").stat().st_size > 10_000
    meta = json.loads((out / "mtd-fig3.json").read_text())
    assert meta["config"]["n_sequences"] == 40 and "torch" in meta["environment"]


def test_config_validation():
    with pytest.raises(ValueError):
        mtd_fig3.Config(n_sequences=0)
    with pytest.raises(ValueError, match="order must be smaller"):
        mtd_fig3.Config(order=3, lengths=(3, 10))


def test_shared_beta_is_one_value_and_never_beats_per_length_tuning():
    from icmix.predictors import TunedMirrorDescent, true_predictive
    from icmix.metrics import kl_divergence

    task = MTDTask(6, 3, seed=1)
    x, lam = task.sample(200, 40, generator=torch.Generator().manual_seed(4))
    lengths = [8, 16, 40]
    per, shared = TunedMirrorDescent(), TunedMirrorDescent(shared=True)
    per.tune(x, lam, task, lengths)
    shared.tune(x, lam, task, lengths)
    assert len(set(shared.chosen_beta.values())) == 1 and shared.name == "MD 1-step (one β for all lengths)"
    p_true = true_predictive(x, lam, task, lengths)
    kl_per = kl_divergence(p_true, per.predict(x, task, lengths)).mean(0)
    kl_shared = kl_divergence(p_true, shared.predict(x, task, lengths)).mean(0)
    assert (kl_per <= kl_shared + 1e-15).all()
    # The shared value minimises the KL averaged over the lengths, over the same grid.
    means = [kl_divergence(p_true, per.predict_beta(x, task, lengths, torch.full((3,), b, dtype=torch.float64))).mean()
             for b in per.betas]
    assert kl_shared.mean().item() == pytest.approx(min(m.item() for m in means), rel=1e-12)


def test_the_command_line_answers_help_without_torch_numpy_or_matplotlib():
    """``icmix --help`` and every subcommand's ``--help``, in a fresh interpreter, import none of
    torch, numpy, matplotlib, pandas or scipy (they cost seconds of CPU to load)."""
    import json
    import os
    import subprocess
    import sys

    code = """
import json, sys
from icmix.cli import build_parser, main
parser = build_parser()
commands = [[]]
for action in parser._subparsers._group_actions:
    for name, sub in action.choices.items():
        commands.append([name])
        for inner in getattr(sub, "_subparsers", None) and sub._subparsers._group_actions or []:
            commands += [[name, n] for n in inner.choices]
for command in commands:
    try:
        main(command + ["--help"])
    except SystemExit:
        pass
heavy = [m for m in ("torch", "numpy", "matplotlib", "pandas", "scipy") if m in sys.modules]
print(json.dumps({"commands": len(commands), "heavy": heavy}), file=sys.stderr)
"""
    env = {k: v for k, v in os.environ.items() if k != "ICMIX_PLUGINS"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stderr.strip().splitlines()[-1])
    assert result["commands"] >= 10 and result["heavy"] == []


def test_threads_set_the_runs_torch_threads_without_renaming_them(tmp_path, monkeypatch):
    """``--threads N`` gives this process and every worker N torch threads (``ICMIX_THREADS``);
    the config field ``threads`` trains a run with them and restores the process's after; a
    run's name and identity do not depend on it."""
    import torch

    from icmix import _pool
    from icmix.cli import main
    from icmix.experiments.common import run_name
    from icmix.train import TrainConfig, train

    monkeypatch.delenv(_pool.THREADS, raising=False)
    before = torch.get_num_threads()
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)  # a 4-core machine
    assert _pool.worker_threads(2) == 2 and _pool.worker_threads(8) == 1
    monkeypatch.undo()
    config = {"task": {"kind": "mtd", "vocab_size": 4, "order": 2, "seed": 0, "length": 8},
              "model": {"kind": "disentangled", "n_layers": 2, "n_heads": 1}, "steps": 4, "batch_size": 8,
              "eval_every": 2, "eval_size": 8}
    plain, one = TrainConfig.from_dict(config), TrainConfig.from_dict({**config, "threads": 1})
    assert run_name(plain) == run_name(one) and "threads" not in plain.to_yaml()
    calls = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (calls.append(n), real(n)))
    train(one, tmp_path / "run", progress=False)
    assert calls == [1, before] and torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be"):
        TrainConfig.from_dict({**config, "threads": 0})
    # The command line: this process and the workers.
    calls.clear()
    monkeypatch.setenv(_pool.THREADS, "")
    (tmp_path / "c.yaml").write_text(plain.to_yaml())
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "cli"), "--threads", "1",
                 "--no-progress"]) == 0
    assert calls[0] == 1 and __import__("os").environ[_pool.THREADS] == "1" and _pool.worker_threads(2) == 1
    assert main(["train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "cli2"), "--threads", "0"]) == 2
    real(before)


def test_every_lag_estimator_has_its_help_and_every_help_its_estimator():
    from icmix.families.lags import LAG_ESTIMATOR_HELP
    from icmix.families.mtd import LAG_ESTIMATORS

    assert list(LAG_ESTIMATORS) == list(LAG_ESTIMATOR_HELP)
    assert all(LAG_ESTIMATORS[n][0] == LAG_ESTIMATOR_HELP[n] for n in LAG_ESTIMATORS)
