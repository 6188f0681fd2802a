"""Figures 5-8 on tiny settings, and the per-layer step-size readout against known answers."""

import numpy as np
import pandas as pd
import pytest
import torch

from icmix import MTDTask, agreement
from icmix.cli import main
from icmix.construct import mirror_descent_transformer

TINY_TRAIN = ["--set", "steps=25", "--set", "batch_size=16", "--no-progress", "--seeds", "1"]


def test_readout_reads_one_md_step_off_the_construction():
    """The construction's layer 3 is one MD step at beta: the readout must find k = 1 and that beta."""
    task = MTDTask(8, 3, seed=2)
    x, _ = task.sample(64, 24, generator=torch.Generator().manual_seed(1))
    model = mirror_descent_transformer(task.transition, 3, 6.3, max_length=24)
    with torch.no_grad():
        _, attn = model(x, return_attention=True)
    rows = agreement.md_step_readout(attn, x, task.transition, 3)
    layer3 = rows[2]
    assert layer3["readable"] and layer3["k"] == 1
    assert layer3["beta"] == pytest.approx(6.3, rel=1e-3)
    assert layer3["fit_kl"] < 1e-9 and layer3["window_mass"] == pytest.approx(1.0)
    assert not rows[1]["readable"]  # layer 2 averages over positions, not over the lags
    for r in agreement.md_beta_by_length(attn[2], x, task.transition, 3, [6, 12, 24]):
        assert r["beta"] == pytest.approx(6.3, rel=1e-3) and r["fit_kl"] < 1e-9  # the same beta at every length


def test_readout_recovers_tied_steps_and_a_schedule():
    task = MTDTask(8, 3, seed=2)
    x, _ = task.sample(64, 24, generator=torch.Generator().manual_seed(1))
    lam = agreement.md_iterates(x, task.transition, 3, 6.0, 2)  # (2, B, N, M): tied steps
    assert torch.allclose(lam[0], agreement.md_iterates(x, task.transition, 3, [6.0])[0])
    # An "attention" whose window at offsets 0..2 is exactly the 2-step estimate.
    t = x.shape[1]
    attn = torch.zeros(64, 1, t, t, dtype=torch.float64)
    i = torch.arange(3, t)
    for g in range(1, 4):
        attn[:, 0, i, i - (g - 1)] = lam[-1][..., g - 1]
    row = agreement.md_step_readout([attn], x, task.transition, 3)[0]
    assert row["readable"] and row["k"] == 2
    assert row["beta"] == pytest.approx(6.0, rel=1e-3) and row["fit_kl"] < 1e-9
    assert row["schedule"] == pytest.approx((6.0, 6.0), rel=1e-2)  # tied steps read as tied
    # An untied schedule is recovered from a tied start.
    from icmix.estimators.mtd import lag_evidence

    target = agreement.md_iterates(x, task.transition, 3, [4.0, 11.0])[-1]
    sched, kl = agreement.fit_step_schedule(target, lag_evidence(x, task.transition, 3, "all"), 3, [7.0, 7.0])
    assert sched == pytest.approx([4.0, 11.0], rel=1e-3) and kl < 1e-9


def test_reproduce_fig5_tiny(tmp_path):
    out = tmp_path / "f5"
    assert main(["reproduce", "mtd-fig5", "--preset", "cpu", "--out", str(out), *TINY_TRAIN, "--set", "length=10",
                 "--set", "eval_lengths=(5,10)", "--set", "n_sequences=20", "--set", "n_tune=10",
                 "--set", "n_readout=8", "--set", "md_steps=(1,2)"]) == 0
    kl = pd.read_csv(out / "mtd-fig5.csv")
    assert {"trained 5-layer (MSE)", "trained 3-layer (CE)", "MD 2-step (tuned η)", "Bayes (exact)"} <= set(kl.estimator)
    readout = pd.read_csv(out / "mtd-fig5-readout.csv")
    assert len(readout) == 2 * (3 + 5) and set(readout.layer) == {1, 2, 3, 4, 5}
    losses = pd.read_csv(out / "mtd-fig5-losses.csv")
    assert set(zip(losses.depth, losses.loss)) == {(3, "mse"), (3, "ce"), (5, "mse"), (5, "ce")}
    tracking = pd.read_csv(out / "mtd-fig5-tracking.csv")
    assert set(tracking.k) == {1, 2} and (tracking.kl_md_to_model >= 0).all()
    assert (out / "mtd-fig5.png").stat().st_size > 20_000


def test_reproduce_fig6_fig8_share_runs_and_fig7(tmp_path):
    out = tmp_path / "f68"
    common = [*TINY_TRAIN, "--set", "gpt_steps=5", "--set", "gpt_width=8", "--set", "length=12",
              "--set", "eval_lengths=(6,12)", "--set", "n_sequences=20", "--set", "n_tune=10"]
    assert main(["reproduce", "mtd-fig6", "--preset", "cpu", "--out", str(out), *common]) == 0
    kl = pd.read_csv(out / "mtd-fig6.csv")
    assert set(kl.order) == {3, 5}
    cons = kl[kl.estimator == "Construction (3-layer, tuned β)"].kl_mean.to_numpy()
    md = kl[kl.estimator == "MD 1-step (tuned η)"].kl_mean.to_numpy()
    assert np.allclose(cons, md, rtol=1e-9)  # the construction is one MD step at every order
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert len(runs) == 4
    assert main(["reproduce", "mtd-fig8", "--preset", "cpu", "--out", str(out), *common, "--set", "n_attention=8"]) == 0
    assert sorted(p.name for p in (out / "runs").iterdir()) == runs  # reused, not retrained
    agree = pd.read_csv(out / "mtd-fig8.csv")
    assert set(agree.order) == {3, 5} and set(agree.layer) == {1, 2, 3}
    assert main(["reproduce", "mtd-fig7", "--preset", "cpu", "--out", str(out), *TINY_TRAIN, "--set", "lengths=(8,12)"]) == 0
    table = pd.read_csv(out / "mtd-fig7.csv")
    assert len(table) == 4 and (table.row_kl > 0).all()
    # fig7's length-12 runs are fig6's disentangled runs: only the two length-8 runs are new.
    assert len(list((out / "runs").iterdir())) == 6
