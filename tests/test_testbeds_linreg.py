"""The ``linreg`` testbed (Garg et al. 2022) and ``icmix baselines``.

- closed forms: noiseless Gaussian prompts at n < d, least squares' error per dimension is
  1 − n/d and averaging's (d + 1)/n; the closed-form expected loss of a GD step agrees with
  Monte Carlo, and its optimal step size with a grid search on samples (Gaussian and uniform x,
  with noise);
- the predictors against direct references (k-NN by a loop, the posterior mean beating least
  squares under noise);
- the family reaches icmix only through its entry point, and trains with its curriculum;
- ``icmix baselines`` agrees with the families' evaluation code (exactly for the regression
  families, within the sampling error for MTD) and refuses bad input.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from icmix.families import get_family
from icmix.families.baselines import baselines
from icmix.random import Stream, make_generator, stream


def family_and_task(**spec):
    family = get_family("linreg")
    return family, family.build(family.spec(**spec))


def by_key(family, task):
    return {p.key.id: p for p in family.predictors(task)}


def query_errors(pred, xs, ys):
    """Squared error at the last column, per prompt."""
    return ((pred.predict(xs, ys)[:, -1] - ys[:, -1]) ** 2).numpy()


def within(values: np.ndarray, expected: float, k: float = 4.0) -> bool:
    return abs(values.mean() - expected) < k * values.std(ddof=1) / np.sqrt(values.size)


@pytest.mark.parametrize("n", [2, 5, 9])
def test_noiseless_least_squares_and_averaging_match_their_closed_forms(n):
    d = 10
    family, task = family_and_task(dim=d, points=n)
    xs, ys = task.sample(20_000, n + 1, make_generator(n))
    p = by_key(family, task)
    ls, avg = query_errors(p["least_squares"], xs, ys) / d, query_errors(p["averaging"], xs, ys) / d
    assert within(ls, 1 - n / d) and within(avg, (d + 1) / n)
    assert within(query_errors(p["zero"], xs, ys) / d, 1.0)
    # noiseless, the posterior mean is least squares
    assert np.allclose(query_errors(p["posterior_mean"], xs, ys), query_errors(p["least_squares"], xs, ys))


@pytest.mark.parametrize("spec", [dict(dim=6, x_dist="gaussian", noise_std=0.5, w_std=1.3),
                                  dict(dim=6, x_dist="uniform", x_range=2.0, noise_std=0.5)])
def test_the_gd_step_size_and_loss_closed_forms_agree_with_samples(spec):
    from icmix.testbeds.linreg import gd_step_loss, gd_step_size

    family, task = family_and_task(**spec)
    n = 4
    xs, ys = task.sample(200_000, n + 1, make_generator(3))
    moment = (xs[:, :n] * ys[:, :n, None]).mean(1)  # (1/n) sum y_i x_i
    m, y = (moment * xs[:, n]).sum(-1).numpy(), ys[:, n].numpy()
    # the expected loss of eta * m, at a few step sizes
    for eta in (0.1, 0.3, 1.0):
        assert within((eta * m - y) ** 2, gd_step_loss(task, n, eta))
    # the closed-form step size against a grid search of the sample loss, a quadratic in eta:
    # mean((eta m - y)^2) = eta^2 mean(m^2) - 2 eta mean(m y) + mean(y^2)
    grid = np.linspace(0.01, 1.5, 1491)
    losses = grid**2 * (m**2).mean() - 2 * grid * (m * y).mean() + (y**2).mean()
    best = grid[losses.argmin()]
    eta = float(gd_step_size(task, n))
    assert abs(best - eta) < 0.03 * eta
    # the gd_step predictor uses it: its query error equals the formula's loss at eta
    assert within(query_errors(by_key(family, task)["gd_step"], xs[:50_000], ys[:50_000]), gd_step_loss(task, n, eta))


def test_knn_is_the_mean_of_the_nearest_earlier_points():
    from icmix.testbeds.linreg import knn

    g = make_generator(0)
    xs, ys = torch.randn(3, 8, 2, generator=g, dtype=torch.float64), torch.randn(3, 8, generator=g, dtype=torch.float64)
    out = knn(xs, ys)
    for b in range(3):
        assert out[b, 0] == 0
        for j in range(1, 8):
            dist = ((xs[b, :j] - xs[b, j]) ** 2).sum(-1)
            near = dist.argsort()[:3]
            assert out[b, j] == pytest.approx(ys[b, near].mean().item(), rel=1e-12)


def test_the_posterior_mean_beats_least_squares_under_noise():
    # (n well away from d: near n = d least squares' error has no finite variance)
    family, task = family_and_task(dim=8, points=3, noise_std=1.0)
    xs, ys = task.sample(20_000, 4, make_generator(1))
    p = by_key(family, task)
    diff = query_errors(p["least_squares"], xs, ys) - query_errors(p["posterior_mean"], xs, ys)
    assert diff.mean() > 5 * diff.std(ddof=1) / np.sqrt(diff.size)
    for other in ("averaging", "knn", "gd_step", "zero"):
        d = query_errors(p[other], xs, ys) - query_errors(p["posterior_mean"], xs, ys)
        assert d.mean() > 0, other


def test_bad_specs_are_refused_by_name():
    family = get_family("linreg")
    for bad, match in ((dict(x_dist="cauchy"), "x_dist"), (dict(points=0), "points"), (dict(w_std=0), "w_std"),
                       (dict(noise_std=-1), "noise_std"), (dict(points=4, points_start=6), "points_start"),
                       (dict(points=4, points_start=3), "curriculum_every is 0")):
        with pytest.raises(ValueError, match=match):
            family.spec(**bad)


def test_the_family_is_found_through_its_entry_point_alone():
    code = ("import sys; from icmix.families import get_family; f = get_family('linreg'); "
            "print(type(f).__module__, 'icmix.testbeds.linreg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["icmix.testbeds.linreg", "True"]


def test_the_gpt_trains_on_linreg_with_its_curriculum(tmp_path):
    import json

    from icmix.experiments.common import run_name
    from icmix.train import TrainConfig, load_run, train

    cfg = TrainConfig.from_dict({
        "task": {"kind": "linreg", "dim": 3, "points": 6, "curriculum_every": 10, "dims_start": 1, "points_start": 3},
        "model": {"kind": "gpt-regression", "n_layers": 2, "d_model": 32, "n_heads": 4},
        "optim": {"lr": 3e-3, "schedule": "cosine", "warmup_steps": 5},
        "steps": 30, "batch_size": 16, "eval_every": 10, "eval_size": 500, "checkpoint_every": 10, "seed": 0})
    assert run_name(cfg).startswith("gpt-regression2-d3-n6-gaussian-")
    family = get_family("linreg")
    task = family.build(cfg.task)
    objective = family.objective(task, cfg)
    first = objective.batch(0, 16, make_generator(0))
    assert first["xs"].shape == (16, 3, 3) and (first["xs"][..., 1:] == 0).all()  # one active dim, 3 points
    assert objective.batch(10, 16, make_generator(0))["xs"].shape == (16, 5, 3)
    ev = objective.eval_batch(500, make_generator(1))
    assert ev["xs"].shape == (500, 7, 3) and (ev["xs"] != 0).all()  # full size
    # The optimum the run's convergence is judged against: the posterior mean's error per dimension.
    pm = family.bayes_predictor(task).predict(ev["xs"].double(), ev["ys"].double())
    assert objective.optimum(ev) == pytest.approx(((pm[:, -1] - ev["ys"][:, -1].double()) ** 2).mean().item() / 3)
    run = train(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30] and all(np.isfinite(r["eval_nmse_last"]) for r in rows)
    _, model = load_run(run)
    assert model(ev["xs"][:5], ev["ys"][:5]).shape == (5, 7)


def test_baselines_equal_the_regression_evaluation_on_the_same_prompts():
    from icmix.evaluate import evaluate_regression

    for kind, spec, overrides in (("linreg", dict(dim=5, points=6, noise_std=0.5), ["dim=5", "points=6", "noise_std=0.5"]),
                                  ("mixlinreg", dict(dim=4, n_components=3, noise=0.5, n_points=7),
                                   ["dim=4", "n_components=3", "noise=0.5", "n_points=7"])):
        family = get_family(kind)
        task = family.build(family.spec(**spec))
        table = baselines(kind, overrides, samples=300, seed=4)
        xs, ys = task.sample(300, family.query_points(family.spec(**spec)), stream(4, Stream.BASELINES))
        ev, _ = evaluate_regression(xs, ys, family.predictors(task), spec["dim"])
        last = ev[ev.k == ev.k.max()].set_index("key")
        assert list(table.predictor) == list(last.index)
        for row in table.itertuples():
            assert row.loss == pytest.approx(last.loc[row.predictor, "nmse"] * spec["dim"], rel=1e-12)
            assert row.stderr == pytest.approx(last.loc[row.predictor, "nmse_sem"] * spec["dim"], rel=1e-9)


def test_sequence_baselines_agree_with_the_kl_of_the_family_evaluation():
    # CE(predictor) − CE(true) over the positions predicted estimates the mean KL(true ‖ predictor)
    # that the family's own evaluation computes (on other sequences): they agree within the errors.
    family = get_family("mtd")
    spec = family.spec(vocab_size=4, order=2, length=12)
    task = family.build(spec)
    names = ["bayes/variant=exact", "md/steps=1/tuning=theorem-1", "true"]
    table = baselines("mtd", ["vocab_size=4", "order=2", "length=12"], names, samples=4000, seed=0).set_index("predictor")
    preds = [p for p in family.predictors(task, include_gibbs=False, include_construction=False) if p.key.id in names]
    lengths = list(range(family.first_predicted(spec), spec.length + 1))
    ev = family.evaluate(task, preds, lengths, 4000, seed=1).groupby("key").kl_mean.mean()
    for name in names[:2]:
        excess = table.loss[name] - table.loss["true"]
        error = np.hypot(table.stderr[name], table.stderr["true"])
        assert abs(excess - ev[name]) < 4 * error + 0.003, name
    assert table.loss["true"] < table.loss["bayes/variant=exact"] < table.loss["md/steps=1/tuning=theorem-1"]


def test_the_baselines_command_prints_the_table_and_csv_and_refuses_bad_input(capsys):
    from icmix.cli import main

    assert main(["baselines", "linreg", "--set", "dim=6", "--set", "points=3", "--samples", "200", "--format", "csv",
                 "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "predictor,loss,stderr"
    assert [line.split(",")[0] for line in lines[1:]] == ["least_squares", "posterior_mean", "averaging", "knn",
                                                           "gd_step", "zero", "lsa_gd"]
    assert main(["baselines", "mtd", "--set", "length=8", "--samples", "50", "--no-progress"]) == 0
    out = capsys.readouterr().out
    rows = [line.split()[0] for line in out.splitlines()[1:] if line.strip() and not line.startswith(("loss", "not"))]
    assert rows[0] == "bayes/variant=exact" and rows[-1] == "true" and "em" not in rows and "bayes/variant=gibbs" not in rows
    assert "not scored (slow; name them with --predictors): bayes/variant=gibbs, em" in out
    for argv, match in ((["baselines", "linreg", "--predictors", "nope"], "unknown predictor 'nope'"),
                        (["baselines", "linreg", "--set", "x_dist=cauchy"], "x_dist"),
                        (["baselines", "linreg", "--samples", "1"], "samples"),
                        (["baselines", "nope"], "unknown task kind 'nope'")):
        assert main(argv) == 2
        assert match in capsys.readouterr().err


def test_the_lsa_construction_computes_the_gd_step():
    from icmix.testbeds.lsa import LinearSelfAttention, LSAConfig, construction, effective_weights, weight_cosine

    for spec in (dict(dim=5, points=9), dict(dim=3, points=12, x_dist="uniform", x_range=2.0, noise_std=0.3)):
        family, task = family_and_task(**spec)
        xs, ys = task.sample(500, spec["points"] + 1, make_generator(7))
        p = by_key(family, task)
        built, gd = p["lsa_gd"].predict(xs, ys), p["gd_step"].predict(xs, ys)
        assert torch.allclose(built, gd, rtol=1e-6, atol=1e-9)
        assert (built - gd).abs().max() <= 1e-6 * gd.abs().max()
    # The symmetry A -> cA, v -> v/c leaves the function and the effective weights' direction alone;
    # a random layer is far from the construction.
    a, b = construction(4, 0.3), construction(4, 0.3)
    with torch.no_grad():
        b.w_q.mul_(2.0)
        b.w_v.div_(2.0)
    xs, ys = torch.randn(3, 6, 4, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    assert torch.allclose(a(xs, ys), b(xs, ys)) and weight_cosine(a, b) == pytest.approx(1.0)
    assert effective_weights(a).shape == (5, 5, 4)
    random = LinearSelfAttention(LSAConfig(4, init_std=1.0), generator=make_generator(0), dtype=torch.float64)
    assert abs(weight_cosine(a, random)) < 0.5


def test_a_trained_lsa_layer_learns_the_gd_step(tmp_path):
    # One layer of linear self-attention trained on linreg prompts of n pairs comes to compute
    # (nearly) the optimal GD step: its loss close to lsa_gd's, its effective weights aligned.
    from icmix.testbeds.lsa import construction, weight_cosine
    from icmix.testbeds.linreg import gd_step_size
    from icmix.train import TrainConfig, load_run, train

    cfg = TrainConfig.from_dict({
        "task": {"kind": "linreg", "dim": 4, "points": 10},
        "model": {"kind": "lsa"}, "optim": {"lr": 0.01, "schedule": "cosine", "warmup_steps": 20},
        "loss_positions": "last", "steps": 600, "batch_size": 256, "eval_every": 200, "eval_size": 1000,
        "checkpoint_every": 600, "seed": 0})
    run = train(cfg, tmp_path / "lsa", progress=False)
    _, model = load_run(run)
    family = get_family("linreg")
    task = family.build(cfg.task)
    xs, ys = task.sample(20_000, 11, make_generator(9))
    with torch.no_grad():
        trained = ((model(xs, ys)[:, -1].double() - ys[:, -1]) ** 2).mean().item()
    built = query_errors(by_key(family, task)["lsa_gd"], xs, ys).mean()
    assert trained / built < 1.1
    assert weight_cosine(model, construction(4, float(gd_step_size(task, 10)))) > 0.9
    # its hook points, as on every icmix model
    from icmix.interp import hook_names, run_with_cache

    assert hook_names(model) == ["hook_attn_scores", "hook_update", "hook_out"]
    out, cache = run_with_cache(model, xs[:3].float(), ys[:3].float())
    assert cache["hook_attn_scores"].shape == (3, 11, 11) and torch.equal(cache["hook_out"], out)


def test_the_lsa_gd_figure_comes_through_its_entry_point_and_decides_its_claim(tmp_path):
    import pandas as pd

    from icmix.cli import main
    from icmix.experiments import get_figure

    fig = get_figure("lsa-gd")
    assert type(fig).__module__ == "icmix.testbeds.lsa_gd" and "quick" in fig.presets
    out = tmp_path / "lsa"
    assert main(["reproduce", "lsa-gd", "--preset", "quick", "--set", "steps=800", "--set", "seeds=0,1",
                 "--set", "n_prompts=3000", "--set", "dim=3", "--set", "points=6", "--out", str(out),
                 "--no-progress"]) == 0
    layers = pd.read_csv(out / "lsa-gd-layers.csv")
    table = pd.read_csv(out / "lsa-gd.csv")
    # the ratio is the two rows' losses divided, per seed
    for r in layers.itertuples():
        t = table[table.seed == r.seed].set_index("predictor").loss
        assert r.loss_ratio == pytest.approx(t["lsa/trained"] / t["lsa_gd"], rel=1e-9)
        assert t["lsa_gd"] == pytest.approx(t["gd_step"], rel=1e-6)
    from icmix.experiments.claims import Claim, judge

    claims = pd.read_csv(out / "claims.csv")
    assert list(claims.figures) == ["lsa-gd"]
    expected = judge(Claim("", "", "", ()), (layers.loss_ratio, 1.05, "<="), (layers.weight_cosine, 0.95, ">="))
    assert claims.verdict[0] == expected.verdict


def test_the_linreg_figure_compares_the_gpt_with_every_predictor(tmp_path):
    import pandas as pd

    from icmix.cli import main

    out = tmp_path / "linreg"
    assert main(["reproduce", "linreg", "--preset", "quick", "--set", "steps=20", "--set", "seeds=0,1",
                 "--set", "dim=4", "--set", "points=8", "--set", "dims_start=2", "--set", "points_start=5",
                 "--set", "n_prompts=400", "--set", "n_layers=1", "--set", "d_model=16", "--out", str(out),
                 "--no-progress"]) == 0
    table = pd.read_csv(out / "linreg.csv")
    assert set(table.key) == {"gpt", "least_squares", "posterior_mean", "averaging", "knn", "gd_step", "zero", "lsa_gd"}
    assert sorted(table.k.unique()) == list(range(9)) and set(table.seed) == {0, 1}
    ls = table[(table.key == "least_squares") & (table.k == 2)].nmse.mean()
    assert ls == pytest.approx(1 - 2 / 4, abs=0.08)  # the closed form, on 400 prompts per seed
    ratio = pd.read_csv(out / "linreg-ratio.csv")
    assert sorted(ratio.k.unique()) == [2, 4, 8] and ratio[ratio.k >= 4].ratio.isna().all()
    row = ratio[(ratio.seed == 0) & (ratio.k == 2)].iloc[0]
    got = table[(table.seed == 0) & (table.k == 2)].set_index("key").nmse
    assert (row.gpt, row.least_squares) == (pytest.approx(got["gpt"]), pytest.approx(got["least_squares"]))
    claims = pd.read_csv(out / "claims.csv")
    assert list(claims.figures) == ["linreg"]
