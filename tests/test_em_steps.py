"""k-step EM (the MTD family's regularised EM): against EM iterations written out by hand,
in the family's standard predictors, in mtd-fig3's table and in ``icmix estimate``."""

import numpy as np
import pandas as pd
import pytest
import torch

from icmix import MTDTask
from icmix.cli import main
from icmix.estimators.mtd import predictive
from icmix.families import get_family
from icmix.families.mtd import em_steps
from icmix.metrics import kl_divergence


def em_by_hand(tokens: np.ndarray, pi: np.ndarray, m: int, k: int) -> np.ndarray:
    """k EM iterations from lam = 1/m, from the definition (SPEC §1): for each transition t,
    c_tg = pi[x_{t-g}, x_t]; E-step r_tg = lam_g c_tg / sum_h lam_h c_th; M-step lam_g = mean_t r_tg."""
    out = []
    for x in tokens:
        c = np.array([[pi[x[t - g], x[t]] for g in range(1, m + 1)] for t in range(m, len(x))])  # (N, m)
        lam = np.full(m, 1.0 / m)
        for _ in range(k):
            r = lam * c
            lam = (r / r.sum(1, keepdims=True)).mean(0)
        out.append(lam)
    return np.array(out)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_em_steps_are_em_iterations_by_hand(k):
    task = MTDTask(7, 3, seed=4)
    tokens, _ = task.sample(16, 40, generator=torch.Generator().manual_seed(5))
    pi = task.transition.double().numpy()
    lam = em_steps(tokens, task.transition, 3, k)
    np.testing.assert_allclose(lam.numpy(), em_by_hand(tokens.numpy(), pi, 3, k), rtol=1e-12, atol=1e-14)
    # per prefix: the estimate after L tokens uses the first L tokens only
    per = em_steps(tokens, task.transition, 3, k, [10, 25])
    for j, length in enumerate([10, 25]):
        np.testing.assert_allclose(per[:, j].numpy(), em_by_hand(tokens[:, :length].numpy(), pi, 3, k), rtol=1e-12)


def test_em_steps_is_a_standard_mtd_predictor_and_in_fig3(tmp_path):
    task = MTDTask(6, 2, seed=1)
    keys = {(p.key.predictor, p.key.steps) for p in get_family("mtd").predictors(task, md_steps=(1, 3))}
    assert {("em", 1), ("em", 3), ("em", None), ("md", 1), ("md", 3)} <= keys
    out = tmp_path / "fig3"
    assert main(["reproduce", "mtd-fig3", "--out", str(out), "--no-progress", "--seeds", "1", "--set", "lengths=(6, 12)",
                 "--set", "n_sequences=30", "--set", "n_tune=10", "--set", "gibbs_samples=20", "--set", "gibbs_burn_in=5",
                 "--set", "md_steps=(1, 2)", "--set", "vocab_size=6", "--set", "order=2"]) == 0
    table = pd.read_csv(out / "mtd-fig3.csv")
    rows = table[(table.predictor == "em") & (table.steps == 2)].set_index("length")
    assert list(rows.index) == [6, 12] and set(rows.estimator) == {"EM 2-step (from λ=1/m)"}
    # The table's KL is the KL of the hand-computed estimate, on the evaluation's own sequences.
    fig_task = MTDTask(6, 2, 1.0, seed=0)
    tokens, lam_true = fig_task.sample(30, 12, generator=torch.Generator().manual_seed(1))
    p_true = predictive(tokens, fig_task.transition, lam_true[:, None].expand(-1, 2, -1), [6, 12])
    pi = fig_task.transition.double().numpy()
    for j, length in enumerate([6, 12]):
        lam = torch.from_numpy(em_by_hand(tokens[:, :length].numpy(), pi, 2, 2))
        p_hat = predictive(tokens[:, :length], fig_task.transition, lam)
        assert rows.loc[length, "kl_mean"] == pytest.approx(kl_divergence(p_true[:, j], p_hat).mean().item(), rel=1e-10)
    assert "EM 2-step (from λ=1/m)" in (out / "mtd-fig3.md").read_text()


def test_estimate_cli_offers_em_steps(tmp_path, capsys):
    task = MTDTask(5, 2, seed=2)
    tokens, _ = task.sample(3, 30, generator=torch.Generator().manual_seed(3))
    np.save(tmp_path / "x.npy", tokens.numpy())
    np.save(tmp_path / "pi.npy", task.transition.numpy())
    out = tmp_path / "lam.csv"
    assert main(["estimate", str(tmp_path / "x.npy"), "--transition", str(tmp_path / "pi.npy"), "--order", "2",
                 "--estimator", "em-steps", "--steps", "3", "--out", str(out)]) == 0
    got = pd.read_csv(out)[["lag1", "lag2"]].to_numpy()
    np.testing.assert_allclose(got, em_by_hand(tokens.numpy(), task.transition.double().numpy(), 2, 3), rtol=1e-6)
