"""Exact Bayes against independent references (quadrature, enumeration); Gibbs against exact."""

import itertools

import numpy as np
import pytest
import torch
from scipy import integrate
from scipy.special import betaln, gammaln

from icmix import MTDTask
from icmix.estimators.mtd import GibbsSampler, bayes_exact, exact_cost, lag_evidence

from conftest import sample


def quadrature_posterior(c: np.ndarray, alpha: float):
    """E[lam_1 | y] and the log evidence for M = 2 by 1-D adaptive quadrature over u = lam_1."""

    def log_f(u):
        return np.log(u * c[:, 0] + (1 - u) * c[:, 1]).sum() + (alpha - 1) * (np.log(u) + np.log1p(-u))

    grid = np.linspace(1e-6, 1 - 1e-6, 4001)
    shift = max(log_f(u) for u in grid)
    kw = dict(epsabs=0, epsrel=1e-12, limit=400)
    z = integrate.quad(lambda u: np.exp(log_f(u) - shift), 0, 1, **kw)[0]
    e = integrate.quad(lambda u: u * np.exp(log_f(u) - shift), 0, 1, **kw)[0]
    return e / z, np.log(z) + shift - betaln(alpha, alpha)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exact_matches_quadrature_m2(alpha, seed):
    task = MTDTask(5, 2, seed=seed)
    tokens, _ = sample(task, 4, 10 + 20 * seed, seed)
    mean, log_ev = bayes_exact(tokens, task.transition, 2, alpha, return_log_evidence=True)
    c = lag_evidence(tokens, task.transition, 2).c.numpy()
    for b in range(tokens.shape[0]):
        e, le = quadrature_posterior(c[b], alpha)
        assert abs(mean[b, 0].item() - e) <= 1e-6
        assert abs(mean[b].sum().item() - 1) <= 1e-12
        assert abs(log_ev[b].item() - le) <= 1e-6


def enumerate_posterior_mean(c: np.ndarray, alpha: float) -> np.ndarray:
    """Brute force over every lag path Z (M^N of them) with the Dirichlet-multinomial prior."""
    n, m = c.shape
    num, den = np.zeros(m), 0.0
    for path in itertools.product(range(m), repeat=n):
        counts = np.bincount(path, minlength=m)
        log_prior = gammaln(m * alpha) - gammaln(n + m * alpha) + (gammaln(counts + alpha) - gammaln(alpha)).sum()
        w = np.exp(log_prior + np.log(c[np.arange(n), path]).sum())
        num += w * (counts + alpha) / (n + m * alpha)
        den += w
    return num / den


@pytest.mark.parametrize("alpha", [0.7, 1.0, 3.0])
def test_exact_matches_path_enumeration_m3(alpha):
    task = MTDTask(4, 3, seed=5)
    tokens, _ = sample(task, 3, 10, 1)  # N = 7 transitions: 3^7 paths
    mean = bayes_exact(tokens, task.transition, 3, alpha)
    c = lag_evidence(tokens, task.transition, 3).c.numpy()
    for b in range(3):
        np.testing.assert_allclose(mean[b].numpy(), enumerate_posterior_mean(c[b], alpha), atol=1e-12)


def test_exact_prefixes_equal_truncated_runs(small_task):
    tokens, _ = sample(small_task, 5, 30, 3)
    lengths = [4, 9, 17, 30]
    all_at_once = bayes_exact(tokens, small_task.transition, 3, lengths=lengths)
    for j, L in enumerate(lengths):
        alone = bayes_exact(tokens[:, :L], small_task.transition, 3)
        torch.testing.assert_close(all_at_once[:, j], alone, rtol=0, atol=1e-13)


def test_exact_refuses_impractical_sizes():
    task = MTDTask(5, 6, seed=0)
    tokens, _ = sample(task, 1, 200, 0)
    states, work = exact_cost(6, 194)
    assert work > 2**28
    with pytest.raises(ValueError, match="impractical.*bayes_gibbs"):
        bayes_exact(tokens, task.transition, 6)


def test_exact_order_one_is_trivial():
    task = MTDTask(4, 1, seed=0)
    tokens, _ = sample(task, 3, 12, 0)
    assert torch.equal(bayes_exact(tokens, task.transition, 1), torch.ones(3, 1, dtype=torch.float64))


def test_gibbs_agrees_with_exact_within_its_mc_error():
    """m = 3, T <= 64.  Tolerance: 5 batch-means standard errors (ESS-derived), per entry.

    With 60 entries, a 5-sigma band fails by chance with probability < 1e-4.
    """
    task = MTDTask(8, 3, seed=4)
    tokens, _ = sample(task, 20, 64, 2)
    exact = bayes_exact(tokens, task.transition, 3, lengths=[16, 64])
    sampler = GibbsSampler(lag_evidence(tokens, task.transition, 3, [16, 64]), 1.0, 4000, 500,
                           torch.Generator().manual_seed(0))
    state = sampler.init()
    for _ in range(4500):
        state = sampler.step(state)
    mean, se = sampler.readout(state), sampler.standard_error(state)
    ess = sampler.effective_sample_size(state)
    assert ess.min() > 100, "too few effective samples for a meaningful tolerance"
    assert se.max() < 0.01
    z = (mean - exact).abs() / se
    assert z.max() < 5.0, f"max z-score {z.max():.2f}"
    # And the agreement is not vacuous: Gibbs differs from the prior mean by far more than its error.
    assert ((exact - 1 / 3).abs() / se).max() > 20


def test_theorem1_second_order_agreement():
    """pi_eps = (1 - eps) U + eps P: |lam_Bayes - lam_MD| ~ eps^2 while |lam_Bayes - 1/m| ~ eps."""
    from icmix.estimators.mtd import mirror_descent

    q, m, T = 6, 3, 12
    base = MTDTask(q, m, seed=0)
    tokens, _ = sample(base, 64, T, 1)
    uniform = torch.full((q, q), 1 / q, dtype=torch.float64)
    eps = np.array([0.1, 0.03, 0.01, 0.003])
    to_md, to_prior = [], []
    for e in eps:
        pi = (1 - e) * uniform + e * base.transition
        bayes = bayes_exact(tokens, pi, m)
        md = mirror_descent(tokens, pi, m, eta=1 / (m + 1))
        to_md.append((bayes - md).abs().max().item())
        to_prior.append((bayes - 1 / m).abs().max().item())
    slope_md = np.polyfit(np.log(eps), np.log(to_md), 1)[0]
    slope_prior = np.polyfit(np.log(eps), np.log(to_prior), 1)[0]
    assert 1.85 < slope_md < 2.15, slope_md
    assert 0.9 < slope_prior < 1.1, slope_prior


def enumerate_posterior_vector_prior(c: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, float]:
    """Posterior mean and log evidence under Dirichlet(alpha_1..alpha_M), over every lag path."""
    n, m = c.shape
    num, den = np.zeros(m), 0.0
    for path in itertools.product(range(m), repeat=n):
        counts = np.bincount(path, minlength=m)
        log_prior = gammaln(alpha.sum()) - gammaln(n + alpha.sum()) + (gammaln(counts + alpha) - gammaln(alpha)).sum()
        w = np.exp(log_prior + np.log(c[np.arange(n), path]).sum())
        num += w * (counts + alpha) / (n + alpha.sum())
        den += w
    return num / den, float(np.log(den))


def test_one_concentration_per_lag_exact_and_gibbs():
    task = MTDTask(4, 3, seed=5)
    tokens, _ = sample(task, 3, 10, 1)
    alpha = np.array([0.4, 2.5, 1.3])
    mean, log_ev = bayes_exact(tokens, task.transition, 3, alpha, return_log_evidence=True)
    c = lag_evidence(tokens, task.transition, 3).c.numpy()
    for b in range(3):
        ref_mean, ref_log_ev = enumerate_posterior_vector_prior(c[b], alpha)
        np.testing.assert_allclose(mean[b].numpy(), ref_mean, rtol=0, atol=1e-12)
        assert abs(log_ev[b].item() - ref_log_ev) < 1e-10
    # A symmetric vector is the scalar prior, bit for bit.
    assert torch.equal(bayes_exact(tokens, task.transition, 3, [0.7] * 3), bayes_exact(tokens, task.transition, 3, 0.7))
    tokens, _ = sample(task, 12, 40, 2)
    exact = bayes_exact(tokens, task.transition, 3, alpha)
    sampler = GibbsSampler(lag_evidence(tokens, task.transition, 3), alpha, 3000, 300, torch.Generator().manual_seed(0))
    state = sampler.init()
    for _ in range(3300):
        state = sampler.step(state)
    z = (sampler.readout(state)[:, 0] - exact).abs() / sampler.standard_error(state)[:, 0]
    assert z.max() < 5.0
    with pytest.raises(ValueError, match="one concentration per lag"):
        bayes_exact(tokens, task.transition, 3, [1.0, 1.0])
