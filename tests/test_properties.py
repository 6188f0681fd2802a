"""Property-based tests: every estimate lies on the simplex and zeros in pi never give NaN."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icmix.estimators.mtd import bayes_exact, bayes_gibbs, em, mirror_descent, predictive


@st.composite
def mtd_problem(draw):
    q = draw(st.integers(2, 6))
    m = draw(st.integers(1, 4))
    t = draw(st.integers(m + 1, m + 14))
    seed = draw(st.integers(0, 2**31 - 1))
    zero_frac = draw(st.sampled_from([0.0, 0.3, 0.7]))
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(q), size=q)
    pi[rng.random((q, q)) < zero_frac] = 0.0
    dead = pi.sum(1) == 0
    pi[dead, rng.integers(q, size=dead.sum())] = 1.0  # keep every row stochastic
    pi /= pi.sum(1, keepdims=True)
    tokens = torch.as_tensor(rng.integers(q, size=(3, t)))  # arbitrary tokens, not only model draws
    eta = draw(st.sampled_from([1e-3, 0.25, 5.0, 1e3]))
    return tokens, torch.as_tensor(pi), m, eta, seed


def assert_on_simplex(lam, m):
    assert lam.shape[-1] == m
    assert torch.isfinite(lam).all()
    assert (lam >= 0).all()
    torch.testing.assert_close(lam.sum(-1), torch.ones_like(lam[..., 0]), rtol=0, atol=1e-9)


@pytest.mark.filterwarnings("ignore:EM did not reach")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mtd_problem())
def test_every_estimate_is_on_the_simplex(problem):
    tokens, pi, m, eta, seed = problem
    estimates = [
        mirror_descent(tokens, pi, m, eta, steps=1, lengths="all"),
        mirror_descent(tokens, pi, m, eta, steps=3),
        em(tokens, pi, m, max_iter=50, tol=1e-3),
        bayes_exact(tokens, pi, m, lengths="all"),
        bayes_gibbs(tokens, pi, m, num_samples=20, burn_in=5, generator=seed),
    ]
    for lam in estimates:
        assert_on_simplex(lam, m)
    p = predictive(tokens, pi, estimates[1])
    assert torch.isfinite(p).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(tokens.shape[0], dtype=p.dtype), rtol=0, atol=1e-9)
