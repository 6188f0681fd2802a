"""Agreement metrics against known answers, the trained-run predictor, and a tiny mtd-fig4 run."""

import numpy as np
import pandas as pd
import pytest
import torch

from icmix import MTDTask, agreement
from icmix.cli import main
from icmix.construct import mirror_descent_transformer
from icmix.train import TrainedPredictor
from icmix.models import DisentangledTransformer
from icmix.train import TrainConfig


def test_agreement_metrics_on_the_construction_itself():
    """The construction agrees perfectly with itself; its layer-1 scores reproduce pi."""
    task = MTDTask(6, 3, seed=4)
    model = mirror_descent_transformer(task.transition, 3, 5.0, max_length=40)
    tokens, _ = task.sample(16, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, attn = model(tokens, return_attention=True)
    for a in attn:
        sim = agreement.attention_agreement(a, a[:, 0], 3)
        assert sim["cosine"] == pytest.approx(1.0, abs=1e-12)
        assert sim["support_mass"] == pytest.approx(1.0, abs=1e-12)
    assert agreement.lag_offset_mass(attn[0], 3) == pytest.approx(1.0, abs=1e-12)
    tok = model.layouts[0]["token"]
    tr = agreement.transition_agreement(model.attention[0].A[0, tok, tok].detach(), task.transition)
    assert tr["row_kl"] < 1e-12 and tr["attention_kl"] < 1e-12
    w = model.readout.weight.detach()[:, model.layout["attn3.0/token"]]
    ro = agreement.readout_agreement(w, task.transition)
    assert ro["cosine"] == pytest.approx(1.0) and ro["relative_error"] < 1e-12


def test_lag_attention_tv_against_hand_computed_values():
    t = 4
    ref = torch.zeros(1, t, t)
    ref[0, 2, 1], ref[0, 3, 2] = 1.0, 1.0  # lag 1 only (M = 2)
    trained = torch.zeros(1, 1, t, t)
    trained[0, 0, 2, 1], trained[0, 0, 2, 0] = 0.2, 0.2  # row 2: half lag 1, half lag 2 after renormalising
    trained[0, 0, 2, 2] = 0.6  # off-lag mass is ignored
    trained[0, 0, 3, 2] = 0.5  # row 3: all of its lag mass on lag 1
    trained[0, 0, 3, 3] = 0.5
    assert agreement.lag_attention_tv(trained, ref, 2) == pytest.approx((0.5 + 0.0) / 2)
    assert agreement.lag_offset_mass(trained, 2) == pytest.approx((0.4 + 0.5) / 2)


def test_restrict_offsets_masks_exactly_the_other_offsets():
    """On a random model the restricted layer attends only to the kept offsets; on the
    construction, which already attends only to lags 1..M, the output does not change."""
    from icmix.models import DisentangledConfig

    torch.manual_seed(0)
    model = DisentangledTransformer(DisentangledConfig(vocab_size=5, n_layers=2, max_length=12, positions="warmup",
                                                       value_offsets=3))
    for prm in model.parameters():
        torch.nn.init.normal_(prm)
    tokens = torch.randint(0, 5, (4, 12))
    model.restrict_offsets(1, [1, 2])
    with torch.no_grad():
        _, attn = model(tokens, return_attention=True)
    a = attn[0][:, 0].double()
    i = torch.arange(2, 12)
    kept = torch.zeros_like(a, dtype=torch.bool)
    kept[:, i, i - 1] = kept[:, i, i - 2] = True
    assert (a[~kept & (torch.arange(12)[:, None] >= 2)] == 0).all()  # exp(-1e4) is exactly 0
    assert agreement.lag_offset_mass(attn[0], 2) == pytest.approx(1.0, abs=1e-6)  # float32 softmax
    assert attn[1][:, 0, -1].min() > 0  # layer 2 untouched

    task = MTDTask(6, 3, seed=1)
    cons = mirror_descent_transformer(task.transition, 3, 7.0, max_length=30)
    x, _ = task.sample(8, 30, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = cons(x)[:, 3:]
        after = cons.restrict_offsets(1, [1, 2, 3])(x)[:, 3:]
    assert torch.allclose(before, after, atol=1e-12)


def test_attention_agreement_against_hand_computed_values():
    ref = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])  # (B=1, T=2, T=2)
    trained = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [0.5, 0.5]]]])  # 2 heads
    sim = agreement.attention_agreement(trained, ref, start=1)
    assert sim["head"] == 1 and sim["cosine"] == pytest.approx(1.0)
    sim0 = agreement.attention_agreement(trained[:, :1], ref, start=1)
    assert sim0["cosine"] == pytest.approx(0.5 / np.sqrt(0.5))  # <(1,0),(.5,.5)> / |(.5,.5)|
    assert sim0["support_mass"] == pytest.approx(1.0)


def test_trained_predictor_refuses_another_task(tmp_path):
    from icmix.train import TrainConfig, train

    cfg = TrainConfig.from_dict({"task": {"vocab_size": 4, "order": 2, "length": 10, "seed": 1},
                                 "model": {"kind": "disentangled", "n_layers": 1}, "steps": 2, "eval_every": 1,
                                 "eval_size": 4, "checkpoint_every": 2, "batch_size": 4})
    run = train(cfg, tmp_path / "r", progress=False)
    pred = TrainedPredictor.from_run(run)
    same = MTDTask(4, 2, seed=1)
    tokens, _ = same.sample(3, 10, generator=torch.Generator().manual_seed(0))
    p = pred.predict(tokens, same, [5, 10])
    assert p.shape == (3, 2, 4) and torch.allclose(p.sum(-1), torch.ones(3, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="trained on a different task"):
        pred.predict(tokens, MTDTask(4, 2, seed=2), [10])
    with pytest.raises(ValueError, match="max_length"):
        pred.predict(torch.zeros(1, 12, dtype=torch.long), same, [12])


def test_reproduce_fig4_tiny(tmp_path):
    out = tmp_path / "f4"
    args = ["reproduce", "mtd-fig4", "--out", str(out), "--no-progress", "--seeds", "1", "--set", "steps=6", "--set", "gpt_steps=6",
            "--set", "length=10", "--set", "eval_lengths=(5,10)", "--set", "n_sequences=20", "--set", "n_tune=10",
            "--set", "gpt_width=8", "--set", "gpt_heads=2", "--set", "gpt_layers=2", "--set", "ablation_steps=3"]
    assert main(args) == 0
    kl = pd.read_csv(out / "mtd-fig4.csv")
    assert {"trained disentangled (3-layer)", "trained standard (GPT)", "Construction (3-layer, tuned β)"} <= set(kl.estimator)
    agree = pd.read_csv(out / "mtd-fig4-agreement.csv")
    assert "layer-1 mass on lag offsets 1..m" in set(agree.metric_label) and "lag_mass" in set(agree.metric)
    restricted = agree[(agree.metric == "ablation_lag_mass") & agree.variant.str.startswith("restricted")]["value"]
    assert len(restricted) == 2 and np.allclose(restricted, 1.0)
    assert (out / "mtd-fig4.png").stat().st_size > 20_000
    # A second call reuses the finished runs instead of training again.
    (gpt,) = (out / "runs").glob("gpt*-seed0-*")  # run directories are named by run_name (shared by figures)
    mtime = (gpt / "model" / "model.safetensors").stat().st_mtime
    assert main(args) == 0
    assert (gpt / "model" / "model.safetensors").stat().st_mtime == mtime


def test_fig4_never_mixes_runs_of_another_config(tmp_path):
    """Run directories are named by a hash of the whole config: another config trains its own
    runs beside the first, which stay untouched."""
    base = ["reproduce", "mtd-fig4", "--out", str(tmp_path), "--no-progress", "--seeds", "1", "--set", "gpt_steps=4",
            "--set", "length=10", "--set", "eval_lengths=(5,10)", "--set", "n_sequences=20", "--set", "n_tune=10",
            "--set", "gpt_width=8", "--set", "gpt_heads=2", "--set", "gpt_layers=1", "--set", "ablation_steps=2"]
    assert main(base + ["--set", "steps=4"]) == 0
    (first,) = (tmp_path / "runs").glob("disentangled3-*")
    mtime = (first / "model" / "model.safetensors").stat().st_mtime
    assert main(base + ["--set", "steps=5"]) == 0
    runs = sorted((tmp_path / "runs").glob("disentangled3-*"))
    assert len(runs) == 2 and (first / "model" / "model.safetensors").stat().st_mtime == mtime
    assert sorted(TrainConfig.from_yaml(r / "config.yaml").steps for r in runs) == [4, 5]
