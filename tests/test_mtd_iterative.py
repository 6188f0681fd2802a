"""Mirror descent and EM against naive per-sequence references and each other."""

import numpy as np
import pytest
import torch

from icmix.estimators.mtd import EM, MirrorDescent, em, lag_evidence, mirror_descent, predictive

from conftest import sample


def naive_md(tokens, pi, m, eta, steps):
    """Per-sequence loop straight from SPEC §1: lam <- lam * exp(eta * grad) / Z."""
    out = []
    for seq in tokens.tolist():
        c = np.array([[pi[seq[t - g], seq[t]] for g in range(1, m + 1)] for t in range(m, len(seq))])
        lam = np.full(m, 1 / m)
        for _ in range(steps):
            grad = (c / (c @ lam)[:, None]).sum(0)
            lam = lam * np.exp(eta * grad)
            lam /= lam.sum()
        out.append(lam)
    return np.array(out)


@pytest.mark.parametrize("steps", [1, 2, 5])
def test_md_matches_naive_loop(small_task, steps):
    tokens, _ = sample(small_task, 6, 25, 0)
    got = mirror_descent(tokens, small_task.transition, 3, eta=0.05, steps=steps)
    np.testing.assert_allclose(got.numpy(), naive_md(tokens, small_task.transition.numpy(), 3, 0.05, steps), atol=1e-13)


def test_one_step_closed_form_equals_general_gradient_path(small_task):
    """Step 1 uses cumulative responsibilities; the general gradient at lam = 1/M must agree."""
    tokens, _ = sample(small_task, 4, 40, 1)
    ev = lag_evidence(tokens, small_task.transition, 3, "all")
    md = MirrorDescent(ev, eta=0.02)
    fast = md.readout(md.step(md.init()))
    lam0 = torch.full_like(fast, 1 / 3)
    slow = torch.softmax(0.02 * ev.gradient(lam0), -1)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-14)


def test_md_prefixes_equal_truncated_runs(small_task):
    tokens, _ = sample(small_task, 3, 30, 2)
    lengths = [5, 12, 30]
    eta = torch.tensor([0.1, 0.05, 0.02], dtype=torch.float64)
    for steps in (1, 3):
        together = mirror_descent(tokens, small_task.transition, 3, eta, steps, lengths)
        for j, L in enumerate(lengths):
            alone = mirror_descent(tokens[:, :L], small_task.transition, 3, eta[j].item(), steps)
            torch.testing.assert_close(together[:, j], alone, rtol=0, atol=1e-14)


def test_em_increases_loglik_monotonically(small_task):
    tokens, _ = sample(small_task, 16, 80, 3)
    algo = EM(lag_evidence(tokens, small_task.transition, 3, [10, 40, 80]))
    state = algo.init()
    prev = algo.log_likelihood(state)
    for _ in range(300):
        state = algo.step(state)
        cur = algo.log_likelihood(state)
        assert (cur - prev).min() >= -1e-10
        prev = cur


def test_em_equals_md_iterated_to_convergence(small_task):
    """Both reach the MLE of the concave log-likelihood on the simplex."""
    tokens, lam = sample(small_task, 8, 200, 4)
    mle = em(tokens, small_task.transition, 3, max_iter=50000, tol=1e-13)
    md = mirror_descent(tokens, small_task.transition, 3, eta=1.0 / 197, steps=20000)
    assert (mle - md).abs().max() <= 1e-6
    # Not trivially equal to the start point:
    assert (mle - 1 / 3).abs().max() > 0.05


def test_predictive_matches_loop_and_sums_to_one(small_task):
    tokens, lam = sample(small_task, 5, 20, 5)
    pi = small_task.transition
    got = predictive(tokens, pi, lam)
    for b in range(5):
        want = sum(lam[b, g - 1] * pi[tokens[b, 20 - g]] for g in range(1, 4))
        torch.testing.assert_close(got[b], want, rtol=0, atol=1e-15)
    torch.testing.assert_close(got.sum(-1), torch.ones(5, dtype=torch.float64))
