"""The training engine on regression prompts: config, curriculum, learning, resume."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from icmix.estimators import regression as reg
from icmix.train import TrainConfig, build_task, load_run, train
from icmix.train.checkpoint import latest_checkpoint
from icmix.train.config import RegressionTaskSpec

TINY = {
    "task": {"kind": "mixlinreg", "dim": 4, "n_components": 3, "noise": 0.0, "seed": 1, "n_points": 9,
             "curriculum_every": 10, "dims_start": 2, "points_start": 5},
    "model": {"kind": "gpt-regression", "n_layers": 2, "d_model": 32, "n_heads": 4},
    "optim": {"lr": 3e-3, "schedule": "cosine", "warmup_steps": 5},
    "loss_positions": "all", "steps": 40, "batch_size": 32, "eval_every": 10, "eval_size": 64,
    "checkpoint_every": 10, "keep_checkpoints": 10, "seed": 0,
}


def tiny(**over) -> TrainConfig:
    d = json.loads(json.dumps(TINY))
    for key, value in over.items():
        section, _, name = key.rpartition(".")
        (d[section] if section else d)[name] = value
    return TrainConfig.from_dict(d)


def test_curriculum_stages():
    spec = RegressionTaskSpec(dim=20, n_points=41, curriculum_every=2000, dims_start=5, points_start=11)
    assert spec.stage(0) == (5, 11) and spec.stage(1999) == (5, 11) and spec.stage(2000) == (6, 13)
    assert spec.stage(30_000) == (20, 41) and spec.stage(10**9) == (20, 41)
    assert RegressionTaskSpec(dim=7, n_points=9).stage(0) == (7, 9)  # no curriculum: full size


def test_curriculum_zeroes_inactive_coordinates():
    cfg = tiny()
    task = build_task(cfg)
    xs, ys = task.sample(8, 5, generator=torch.Generator().manual_seed(0), active_dims=2)
    assert (xs[..., 2:] == 0).all() and (xs[..., :2] != 0).all()
    assert torch.allclose(reg.posterior_mean(xs, ys, task.components, 0.0)[:, -1], ys[:, -1])  # still a mixture


@pytest.mark.parametrize("over, match", [
    ({"model.kind": "disentangled"}, "does not fit"),
    ({"loss": "ce"}, "loss 'mse'"),
    ({"task.dims_start": 9}, "dims_start"),
    ({"task.noise": -1.0}, "noise"),
    ({"task.n_points": 0}, "n_points"),
    ({"task.kind": "regression"}, "task.kind"),
    ({"model.dim": 4}, "set by the task"),
    ({"task.n_train": 0}, "n_train"),
    ({"task.n_train": 100}, "only the points curriculum"),  # TINY grows the dims
])
def test_bad_regression_configs(over, match):
    with pytest.raises(ValueError, match=match):
        tiny(**over)


def test_fixed_training_set_batches_drop_and_shuffle_its_prompts():
    from icmix.families.mixlinreg import RegressionObjective, training_set

    cfg = tiny(**{"task.n_train": 50, "task.dims_start": 4})
    task = build_task(cfg)
    objective = RegressionObjective(task, cfg)
    xs_all, ys_all = training_set(task, 50, 9, cfg.task.seed)
    assert torch.equal(objective.prompts[1], ys_all.float())
    gen = torch.Generator().manual_seed(3)
    for step, points in ((0, 5), (10, 7), (40, 9)):
        batch = objective.batch(step, 64, gen)
        assert batch["xs"].shape == (64, points, 4) and batch["ys"].shape == (64, points)
        for b in range(64):
            # every pair is a pair of one training prompt, each at most once, in a random order
            hits = (batch["xs"][b, :, None, None, :] == objective.prompts[0][None]).all(-1)  # (points, n, N)
            prompt = hits.any(-1).all(0).nonzero().flatten()
            assert len(prompt) == 1
            pos = hits[:, prompt[0]].float().argmax(-1)
            assert len(set(pos.tolist())) == points
            assert torch.equal(batch["ys"][b], objective.prompts[1][prompt[0], pos])
    # a full-length batch is a permutation of the prompt (shuffled, nothing dropped)
    assert not torch.equal(pos, torch.arange(9))
    # and evaluation is on fresh prompts, the same as a fresh-data run's
    fresh = RegressionObjective(task, tiny(**{"task.dims_start": 4}))
    a, b = (o.eval_batch(16, torch.Generator().manual_seed(1)) for o in (objective, fresh))
    assert torch.equal(a["xs"], b["xs"]) and not (a["xs"][:, :, None, None] == objective.prompts[0][None, None]).all(-1).any()


def test_fixed_training_set_run_overfits_a_tiny_set_and_resumes_exactly(tmp_path):
    cfg = tiny(**{"task.n_train": 8, "task.dims_start": 4, "task.noise": 0.5, "steps": 60})
    run = train(cfg, tmp_path / "a", progress=False)
    b = tmp_path / "b"
    shutil.copytree(run, b)
    (b / "model" / "model.safetensors").unlink()
    for step in (40, 50, 60):
        shutil.rmtree(b / "checkpoints" / f"step_{step:07d}", ignore_errors=True)
    (b / "checkpoints" / "LATEST").write_text("step_0000030")
    assert latest_checkpoint(b).name == "step_0000030"  # a real resume, not a restart
    train(None, b, resume=True, progress=False)
    assert (b / "metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    # 8 prompts: the training loss falls well below the loss on fresh prompts
    assert rows[-1]["train_loss"] < 0.7 * rows[-1]["eval_loss"]


def test_regression_training_learns_and_resumes_exactly(tmp_path):
    cfg = tiny()
    run = train(cfg, tmp_path / "a", progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [10, 20, 30, 40] and "eval_nmse_last" in rows[-1]
    assert rows[-1]["eval_loss"] < rows[0]["eval_loss"]
    _, model = load_run(run)
    xs, ys = build_task(cfg).sample(4, 9, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    assert model(xs, ys).shape == (4, 9)
    # Kill after the step-20 checkpoint (simulated), resume: the same bits as the uninterrupted run.
    shutil.copytree(run, tmp_path / "b")
    b = tmp_path / "b"
    (b / "model" / "model.safetensors").unlink()
    for step in (30, 40):
        shutil.rmtree(b / "checkpoints" / f"step_{step:07d}", ignore_errors=True)
    (b / "checkpoints" / "LATEST").write_text("step_0000020")
    assert latest_checkpoint(b).name == "step_0000020"  # a real resume, not a restart
    train(None, b, resume=True, progress=False)
    assert (b / "metrics.jsonl").read_bytes() == (run / "metrics.jsonl").read_bytes()
    wa, wb = load_file(run / "model" / "model.safetensors"), load_file(b / "model" / "model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_reproduce_mlr_fig2_tiny(tmp_path):
    import pandas as pd

    from icmix.cli import main

    out = tmp_path / "m2"
    assert main(["reproduce", "mlr-fig2", "--preset", "cpu", "--out", str(out), "--seeds", "1", "--no-progress", "--set", "steps=20",
                 "--set", "n_eval=40", "--set", "components=(3,)", "--set", "dim=4", "--set", "n_points=9",
                 "--set", "dims_start=2", "--set", "points_start=5", "--set", "d_model=16",
                 "--set", "noises=(0.0,1.0)"]) == 0  # the cpu preset is sigma = 1 only; the noiseless panel too
    table = pd.read_csv(out / "mlr-fig2.csv")
    assert set(table.noise) == {0.0, 1.0} and set(table.k) == set(range(9))
    assert {"transformer", "posterior mean (oracle)", "argmin (oracle)", "OLS", "ridge (Bayesian OLS)",
            "constructed transformer"} == set(table.label)
    built = table[table.label == "constructed transformer"].set_index("k")["nmse"]
    pm = table[(table.noise == 1.0) & (table.label == "posterior mean (oracle)")].set_index("k")["nmse"]
    assert ((built - pm).abs() / pm).max() < 1e-6  # the construction is the posterior mean
    exact = table[(table.noise == 0) & (table.label == "posterior mean (oracle)") & (table.k >= 1)]
    assert (exact.nmse < 1e-20).all()  # noise-free: one pair identifies the component
    assert (out / "mlr-fig2.png").stat().st_size > 20_000


def test_reproduce_mlr_shift_figures_reuse_fig2_runs(tmp_path):
    import pandas as pd

    from icmix.cli import main

    out = tmp_path / "m"
    common = ["--out", str(out), "--seeds", "1", "--no-progress", "--set", "steps=10", "--set", "n_eval=30",
              "--set", "components=(3,)", "--set", "noises=(1.0,)", "--set", "dim=4", "--set", "n_points=9",
              "--set", "dims_start=2", "--set", "points_start=5", "--set", "d_model=16"]
    assert main(["reproduce", "mlr-fig2", *common]) == 0
    runs = sorted(p.name for p in (out / "runs").iterdir())
    for name in ("mlr-fig5", "mlr-fig6", "mlr-fig9"):
        assert main(["reproduce", name, *common, "--set", "kappas=(0.5,1.0)", "--set", "alphas=(1.0,2.0)",
                     "--set", "epsilons=(0.0,1.0)"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == runs  # fig2's model, not retrained
    fig2 = pd.read_csv(out / "mlr-fig2.csv")
    fig5 = pd.read_csv(out / "mlr-fig5.csv")
    # Unshifted (kappa = 1) prompts are fig2's prompts: the same transformer errors.
    a = fig2[fig2.label == "transformer"].set_index("k")["nmse"]
    b = fig5[fig5["value"] == 1.0].set_index("k")["nmse"]
    assert (a - b).abs().max() < 1e-12
    fig9 = pd.read_csv(out / "mlr-fig9.csv")
    assert set(fig9.label) == {"posterior mean (oracle)"} and set(fig9["value"]) == {0.0, 1.0}


def test_reproduce_mlr_fig4_tiny(tmp_path):
    import pandas as pd

    from icmix.cli import main

    out = tmp_path / "m4"
    assert main(["reproduce", "mlr-fig4", "--out", str(out), "--seeds", "1", "--no-progress", "--set", "steps=10",
                 "--set", "n_eval=30", "--set", "n_em=300", "--set", "components=(3,)", "--set", "dim=4",
                 "--set", "n_points=9", "--set", "dims_start=2", "--set", "points_start=5", "--set", "d_model=16"]) == 0
    table = pd.read_csv(out / "mlr-fig4.csv")
    assert set(table.other) == {f"{rule} ({w})" for rule in ("posterior mean", "argmin") for w in ("oracle", "EM", "SA")}
    assert (table.d2 >= 0).all() and set(table.k) == set(range(9))
    # sigma = 0 has no EM: refused (exit 2) before anything runs
    assert main(["reproduce", "mlr-fig4", "--out", str(tmp_path / "bad"), "--set", "noises=(0.0,)"]) == 2
    assert not (tmp_path / "bad").exists()


def test_reproduce_mlr_fig3_tiny(tmp_path):
    import pandas as pd

    from icmix.cli import main

    out = tmp_path / "m3"
    assert main(["reproduce", "mlr-fig3", "--out", str(out), "--seeds", "1", "--no-progress", "--set", "steps=10",
                 "--set", "n_eval=40", "--set", "dim=4", "--set", "n_points=9", "--set", "points_start=5",
                 "--set", "d_model=16", "--set", "n_trains=(60,120)", "--set", "dropouts=(0.0,0.1)"]) == 0
    table, est = pd.read_csv(out / "mlr-fig3.csv"), pd.read_csv(out / "mlr-fig3-estimates.csv")
    assert set(table.n_train) == {60, 120} and set(est.estimator) == {"EM", "SA"}
    assert set(table.label) == {"transformer", "posterior mean (EM)", "posterior mean (SA)", "posterior mean (oracle)"}
    assert (est.oracle_prediction_error >= 1.0 / 4 - 1e-12).all()  # never below sigma^2 / d
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 2 and "-n60-" in runs[1] and "-n120-" in runs[0]
    cfg = TrainConfig.from_yaml(out / "runs" / runs[0] / "config.yaml")
    assert cfg.task.n_train == 120 and cfg.task.dims_start == 4 and cfg.model.params["dropout"] == 0.1
    # the oracle posterior mean does not depend on n
    oracle = table[table.label == "posterior mean (oracle)"].pivot(index="k", columns="n_train", values="nmse")
    assert (oracle[60] - oracle[120]).abs().max() < 1e-12
    assert main(["reproduce", "mlr-fig3", "--out", str(tmp_path / "bad"), "--set", "dropouts=(0.1,)"]) == 2
    assert not (tmp_path / "bad").exists()
