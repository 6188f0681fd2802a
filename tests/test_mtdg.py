"""MTDg (SPEC §3): one transition matrix per lag.

Every estimator is checked against a NumPy reference that reads ``pi_g[y_{t-g}, y_t]`` with
plain loops (never ``lag_evidence``), and, with M identical matrices, against MTD itself.
"""

import itertools

import numpy as np
import pytest
import torch

from icmix import MTDTask
from icmix.estimators.mtd import (GibbsSampler, bayes_exact, bayes_gibbs, em, lag_evidence, mirror_descent,
                                  predictive)
from icmix.families.mtd import em_steps

from conftest import sample
from test_mtd_bayes import enumerate_posterior_vector_prior


@pytest.fixture
def mtdg():
    return MTDTask(vocab_size=5, order=3, seed=7, per_lag=True)


def evidence_loop(tokens: np.ndarray, pis: np.ndarray) -> np.ndarray:
    """``c[b, t - M, g - 1] = pi_g[y_{t-g}, y_t]`` by three plain loops."""
    m = pis.shape[0]
    b, t = tokens.shape
    c = np.empty((b, t - m, m))
    for i in range(b):
        for s in range(m, t):
            for g in range(1, m + 1):
                c[i, s - m, g - 1] = pis[g - 1][tokens[i, s - g], tokens[i, s]]
    return c


def md_loop(c: np.ndarray, eta: float, steps: int) -> np.ndarray:
    lam = np.full(c.shape[-1], 1 / c.shape[-1])
    for _ in range(steps):
        lam = lam * np.exp(eta * (c / (c @ lam)[:, None]).sum(0))
        lam /= lam.sum()
    return lam


def em_loop(c: np.ndarray, iters: int, tol: float = 0.0) -> np.ndarray:
    lam = np.full(c.shape[-1], 1 / c.shape[-1])
    for _ in range(iters):
        r = lam * c
        new = (r / r.sum(1, keepdims=True)).mean(0)
        done = np.abs(new - lam).max() < tol
        lam = new
        if done:
            break
    return lam


def test_task_draws_one_matrix_per_lag_from_the_seed(mtdg):
    pis = mtdg.transition
    assert pis.shape == (3, 5, 5) and mtdg.per_lag
    torch.testing.assert_close(pis.sum(-1), torch.ones(3, 5, dtype=torch.float64), rtol=0, atol=1e-12)
    assert not torch.equal(pis[0], pis[1])  # distinct matrices
    assert torch.equal(MTDTask(5, 3, seed=7, per_lag=True).transition, pis)  # reproducible
    assert not MTDTask(5, 3, seed=7).per_lag


def test_sampler_uses_lag_gs_matrix():
    """With all weight on lag g, the lag-g transition counts follow pi_g (a chi-square test),
    and not the other lags' matrices."""
    from scipy.stats import chi2

    task = MTDTask(4, 3, seed=2, per_lag=True)
    for g in (1, 3):
        lam = torch.zeros(400, 3, dtype=torch.float64)
        lam[:, g - 1] = 1.0
        tokens, _ = task.sample(400, 60, generator=torch.Generator().manual_seed(g), lam=lam)
        x = tokens.numpy()
        counts = np.zeros((4, 4))
        np.add.at(counts, (x[:, 3 - g:-g].ravel(), x[:, 3:].ravel()), 1)
        for which in range(3):
            expected = counts.sum(1, keepdims=True) * task.transition[which].numpy()
            stat = ((counts - expected) ** 2 / expected).sum()
            if which == g - 1:
                assert stat < chi2.ppf(1 - 1e-4, df=12), stat
            else:
                assert stat > chi2.ppf(1 - 1e-4, df=12), stat


def test_evidence_and_predictive_match_loops(mtdg):
    tokens, lam = sample(mtdg, 4, 12, 0)
    pis = mtdg.transition.numpy()
    c = lag_evidence(tokens, mtdg.transition, 3).c.numpy()
    np.testing.assert_array_equal(c, evidence_loop(tokens.numpy(), pis))
    lengths = [3, 7, 12]
    lam_p = torch.rand(4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lam_p /= lam_p.sum(-1, keepdim=True)
    p = predictive(tokens, mtdg.transition, lam_p, lengths).numpy()
    x = tokens.numpy()
    for b in range(4):
        for j, L in enumerate(lengths):
            ref = sum(lam_p[b, j, g - 1].item() * pis[g - 1][x[b, L - g]] for g in range(1, 4))
            np.testing.assert_allclose(p[b, j], ref, rtol=0, atol=1e-15)


@pytest.mark.parametrize("steps", [1, 3])
def test_mirror_descent_matches_reference(mtdg, steps):
    tokens, _ = sample(mtdg, 6, 40, 2)
    c = evidence_loop(tokens.numpy(), mtdg.transition.numpy())
    lam = mirror_descent(tokens, mtdg.transition, 3, eta=0.05, steps=steps).numpy()
    for b in range(6):
        np.testing.assert_allclose(lam[b], md_loop(c[b], 0.05, steps), rtol=0, atol=1e-13)


def test_em_matches_reference(mtdg):
    tokens, _ = sample(mtdg, 6, 80, 3)
    c = evidence_loop(tokens.numpy(), mtdg.transition.numpy())
    mle = em(tokens, mtdg.transition, 3, max_iter=20_000, tol=1e-12).numpy()
    two = em_steps(tokens, mtdg.transition, 3, 2).numpy()
    for b in range(6):
        np.testing.assert_allclose(mle[b], em_loop(c[b], 20_000, 1e-12), rtol=0, atol=1e-6)
        np.testing.assert_allclose(two[b], em_loop(c[b], 2), rtol=0, atol=1e-14)


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_exact_bayes_matches_path_enumeration(mtdg, alpha):
    tokens, _ = sample(mtdg, 3, 10, 4)  # N = 7 transitions: 3^7 paths
    c = evidence_loop(tokens.numpy(), mtdg.transition.numpy())
    mean = bayes_exact(tokens, mtdg.transition, 3, alpha).numpy()
    for b in range(3):
        np.testing.assert_allclose(mean[b], enumerate_posterior_vector_prior(c[b], np.full(3, alpha))[0], rtol=0, atol=1e-8)


def test_gibbs_agrees_with_exact_within_its_mc_error():
    task = MTDTask(6, 3, seed=3, per_lag=True)
    tokens, _ = sample(task, 16, 48, 5)
    exact = bayes_exact(tokens, task.transition, 3)
    sampler = GibbsSampler(lag_evidence(tokens, task.transition, 3), 1.0, 3000, 300,
                           torch.Generator().manual_seed(0))
    state = sampler.init()
    for _ in range(3300):
        state = sampler.step(state)
    mean, se = sampler.readout(state)[:, 0], sampler.standard_error(state)[:, 0]
    z = (mean - exact).abs() / se
    assert z.max() < 5.0, f"max z-score {z.max():.2f}"
    assert ((exact - 1 / 3).abs() / se).max() > 20  # not vacuous


def test_identical_matrices_give_mtd_exactly(small_task):
    """M copies of pi: sampling and every estimator equal MTD's, bit for bit."""
    pi = small_task.transition
    stack = pi.expand(3, -1, -1).clone()
    g = MTDTask(6, 3, transition=stack)
    assert g.per_lag
    a, lam_a = sample(small_task, 8, 30, 9)
    b, lam_b = sample(g, 8, 30, 9)
    assert torch.equal(a, b) and torch.equal(lam_a, lam_b)
    lengths = [5, 17, 30]
    same = [
        lambda p: mirror_descent(a, p, 3, 0.02, 2, lengths),
        lambda p: em(a, p, 3, lengths=lengths),
        lambda p: em_steps(a, p, 3, 3, lengths),
        lambda p: bayes_exact(a, p, 3, lengths=lengths),
        lambda p: bayes_gibbs(a, p, 3, num_samples=50, burn_in=10, generator=0, lengths=lengths),
        lambda p: predictive(a, p, lam_a),
    ]
    for f in same:
        assert torch.equal(f(pi), f(stack))


def test_wrong_number_of_matrices_is_a_clear_error(mtdg):
    tokens, _ = sample(mtdg, 2, 10, 0)
    with pytest.raises(ValueError, match="needs 3 matrices for order 3, got 2"):
        mirror_descent(tokens, mtdg.transition[:2], 3, 0.1)
    with pytest.raises(ValueError, match="lam has 3 lag weights per row but transition holds 2 matrices"):
        predictive(tokens, mtdg.transition[:2], torch.full((2, 3), 1 / 3))
    with pytest.raises(ValueError, match=r"\(Q, Q\), one matrix shared by every lag, or \(M, Q, Q\)"):
        mirror_descent(tokens, mtdg.transition[None], 3, 0.1)
    bad = mtdg.transition.clone()
    bad[1, 2, 0] += 0.5
    with pytest.raises(ValueError, match=r"transition\[1\] \(lag 2\).*row 2"):
        bayes_exact(tokens, bad, 3)
    with pytest.raises(ValueError, match="per_lag needs one transition matrix per lag"):
        MTDTask(5, 3, transition=mtdg.transition[0], per_lag=True)


def test_theorem1_second_order_agreement_per_lag():
    """SPEC §3: with pi_g = (1 - eps) U + eps P_g, |lam_Bayes - lam_MD(eta = 1/(m+1))| ~ eps^2
    (5.2e-5, 5.1e-6, 5.8e-7 at eps = 0.01, 0.003, 0.001 for q = 6, m = 3, T = 12)."""
    q, m, t = 6, 3, 12
    base = MTDTask(q, m, seed=0, per_lag=True)
    tokens, _ = sample(base, 64, t, 1)
    uniform = torch.full((m, q, q), 1 / q, dtype=torch.float64)
    eps = np.array([0.01, 0.003, 0.001])
    gaps = []
    for e in eps:
        pis = (1 - e) * uniform + e * base.transition
        gaps.append((bayes_exact(tokens, pis, m) - mirror_descent(tokens, pis, m, 1 / (m + 1))).abs().max().item())
    slope = np.polyfit(np.log(eps), np.log(gaps), 1)[0]
    assert 1.85 < slope < 2.15, (slope, gaps)
    assert gaps[0] < 1e-4


def test_cli_estimate_takes_one_matrix_per_lag(tmp_path, mtdg, capsys):
    from icmix.cli import main

    tokens, _ = sample(mtdg, 3, 20, 1)
    np.save(tmp_path / "tok.npy", tokens.numpy())
    np.save(tmp_path / "pis.npy", mtdg.transition.numpy())
    out = tmp_path / "lam.csv"
    assert main(["estimate", str(tmp_path / "tok.npy"), "--transition", str(tmp_path / "pis.npy"), "--order", "3",
                 "--estimator", "md", "bayes-exact", "--out", str(out)]) == 0
    import pandas as pd

    table = pd.read_csv(out)
    got = table[table.estimator == "bayes-exact"][["lag1", "lag2", "lag3"]].to_numpy()
    np.testing.assert_allclose(got, bayes_exact(tokens, mtdg.transition, 3).numpy(), rtol=0, atol=1e-12)
    np.save(tmp_path / "two.npy", mtdg.transition[:2].numpy())
    assert main(["estimate", str(tmp_path / "tok.npy"), "--transition", str(tmp_path / "two.npy"),
                 "--order", "3"]) == 2
    assert "icmix: error: one transition matrix per lag needs 3 matrices" in capsys.readouterr().err
    assert not (tmp_path / "two.csv").exists()


# ---- the construction (icmix.construct.mirror_descent_mtdg) --------------------------------

@pytest.mark.parametrize("q, m, beta", [(5, 3, 4.0), (4, 1, 2.0), (6, 2, 9.0), (3, 5, 0.5)])
def test_construction_is_one_md_step(q, m, beta):
    from icmix.construct import per_lag_mirror_descent_transformer
    from icmix.construct.check import md_reference, mtd_differential_check

    task = MTDTask(q, m, seed=q + m, per_lag=True)
    model = per_lag_mirror_descent_transformer(task.transition, m, beta, max_length=40)
    report = mtd_differential_check(model, task, beta, 16, 40, torch.Generator().manual_seed(0))
    assert report["max_error"] < 1e-10 and report["max_error_gamma"] < 1e-12 and report["max_error_mean"] < 1e-12
    # The reference reads the per-lag matrices: the shared-matrix MD differs by far more.
    tokens, _ = sample(task, 16, 40, 0)
    with torch.no_grad():
        out = model(tokens)[:, m:]
    if m > 1:
        assert (out - md_reference(tokens, task.transition[0], m, beta)).abs().max() > 1e-3


def test_construction_handles_zeros_and_float32():
    from icmix.construct import per_lag_mirror_descent_transformer
    from icmix.construct.check import md_reference

    task = MTDTask(5, 3, seed=1, per_lag=True)
    pis = task.transition.clone()
    pis[0, :, 2] = 0.0  # lag 1 never moves to token 2
    pis[2, 1, :] = 0.0
    pis[2, 1, 4] = 1.0  # lag 3 from token 1 always moves to 4
    pis /= pis.sum(-1, keepdim=True)
    zeros = MTDTask(5, 3, transition=pis)
    tokens, _ = sample(zeros, 32, 30, 2)
    ref = md_reference(tokens, pis, 3, 6.0)
    with torch.no_grad():
        out = per_lag_mirror_descent_transformer(pis, 3, 6.0, 30)(tokens)[:, 3:]
        out32 = per_lag_mirror_descent_transformer(pis, 3, 6.0, 30, dtype=torch.float32)(tokens)[:, 3:]
    assert (out - ref).abs().max() < 1e-10
    assert (out32.double() - ref).abs().max() < 1e-5


def test_construction_with_identical_matrices_is_the_papers():
    from icmix.construct import mirror_descent_transformer, per_lag_mirror_descent_transformer, three_way_interaction

    task = MTDTask(6, 3, seed=4)
    stack = task.transition.expand(3, -1, -1)
    tokens, _ = sample(task, 8, 32, 1)
    with torch.no_grad():
        ours = per_lag_mirror_descent_transformer(stack, 3, 5.0, 32)(tokens)[:, 3:]
        papers = mirror_descent_transformer(task.transition, 3, 5.0, 32)(tokens)[:, 3:]
    assert (ours - papers).abs().max() < 1e-13
    # Why the paper's single head cannot serve MTDg: log pi_g has a lag x source x target interaction.
    assert three_way_interaction(stack) < 1e-12
    assert three_way_interaction(MTDTask(6, 3, seed=4, per_lag=True).transition) > 0.5


def test_three_way_interaction_is_the_least_squares_residual():
    """Against an independent least-squares fit of u(a, b) + v(g, a) + w(g, b)."""
    from icmix.construct import three_way_interaction

    pis = MTDTask(4, 3, seed=6, per_lag=True).transition
    log = pis.log().numpy()
    m, q, _ = log.shape
    cols = []
    for g, a, b in itertools.product(range(m), range(q), range(q)):
        row = np.zeros(q * q + m * q + m * q)
        row[a * q + b] = row[q * q + g * q + a] = row[q * q + m * q + g * q + b] = 1
        cols.append(row)
    design = np.array(cols)
    coef, *_ = np.linalg.lstsq(design, log.ravel(), rcond=None)
    resid = log.ravel() - design @ coef
    assert abs(np.abs(resid).max() - three_way_interaction(pis)) < 1e-10


def test_construction_at_q64():
    from icmix.construct import per_lag_mirror_descent_transformer
    from icmix.construct.check import md_reference

    task = MTDTask(64, 3, seed=0, per_lag=True)
    tokens, _ = sample(task, 8, 48, 0)
    with torch.no_grad():
        out = per_lag_mirror_descent_transformer(task.transition, 3, 8.0, 48)(tokens)[:, 3:]
    assert (out - md_reference(tokens, task.transition, 3, 8.0)).abs().max() < 1e-10


def test_family_predictors_serve_mtdg():
    """The mtdg family's line-up: the construction equals tuned one-step MD (and says it is MTDg's)."""
    from icmix.families import get_family
    from icmix.families.mtd import BAYES, CONSTRUCTION, MD1

    family = get_family("mtdg")
    task = family.build(family.spec(vocab_size=5, order=3, seed=2, length=32))
    assert task.per_lag
    preds = family.predictors(task, md_steps=(1,), gibbs_samples=100, gibbs_burn_in=20)
    table = family.evaluate(task, preds, [8, 32], n_sequences=64, n_tune=32, seed=0)
    kl = {(k, L): v for k, L, v in zip(table["key"], table["length"], table["kl_mean"])}
    for L in (8, 32):
        assert abs(kl[(CONSTRUCTION.id, L)] - kl[(MD1.id, L)]) < 1e-10
        assert 0 < kl[(BAYES.id, L)] < kl[(MD1.id, 8)]
    assert "ReLU MLPs" in table.loc[table["key"] == CONSTRUCTION.id, "estimator"].iloc[0]


@pytest.mark.parametrize("q", [10, 64])
def test_reproduce_mtdg_tiny(tmp_path, q):
    """The figure end to end at toy sizes: both trained models, the construction equal to
    one-step MD, the check table, and its claims read off the CSVs; also at q = 64."""
    import dataclasses

    import pandas as pd

    from icmix.cli import main
    from icmix.experiments import claims, get_figure

    out = tmp_path / "g"
    assert main(["reproduce", "mtdg", "--preset", "quick", "--out", str(out), "--seeds", "1", "--no-progress",
                 "--set", "steps=25", "--set", "batch_size=16", "--set", "gpt_steps=5", "--set", "gpt_width=8",
                 "--set", "length=12", "--set", "eval_lengths=(6,12)", "--set", "n_sequences=20",
                 "--set", "n_tune=10", "--set", "n_check=4", "--set", f"vocab_size={q}"]) == 0
    kl = pd.read_csv(out / "mtdg.csv")
    assert set(kl.family) == {"mtdg"} and set(kl.model_kind.dropna()) == {"disentangled", "gpt"}
    cons, md = (kl[kl.key == k].kl_mean.to_numpy() for k in ("construction/steps=1/tuning=tuned", "md/steps=1/tuning=tuned"))
    assert np.allclose(cons, md, rtol=1e-9)
    check = pd.read_csv(out / "mtdg-check.csv")
    assert check.max_error.max() < 1e-10 and check.three_way_interaction.min() > 0.5
    assert sorted(p.name.split("-seed")[0] for p in (out / "runs").iterdir()) == ["disentangled3-mtdg-m3-T12-mse",
                                                                               "gpt3-mtdg-m3-T12-mse"]
    cfg = dataclasses.replace(get_figure("mtdg").presets["quick"], length=12, eval_lengths=(6, 12), seeds=(0,))
    rows = {c.claim: c for c in claims.evaluate(out, {"mtdg": cfg}, {"mtdg"}, [get_figure("mtdg")]) if c.paper == "MTDg (beyond)"}
    assert len(rows) == 3 and all(c.verdict in ("holds", "doesn't", "not converged", "inconclusive") for c in rows.values())
    assert next(c for c in rows.values() if "exactly" in c.claim).verdict == "holds"
