"""MTD sampler: shapes, seeding, and the sampled law (statistical tier)."""

import numpy as np
import pytest
import torch
from scipy import stats

from icmix import MTDTask
from icmix.estimators.mtd import em, predictive


def test_shapes_dtypes_and_simplex():
    task = MTDTask(10, 3, seed=0)
    tokens, lam = task.sample(8, 50, generator=torch.Generator().manual_seed(1))
    assert tokens.shape == (8, 50) and tokens.dtype == torch.int64
    assert lam.shape == (8, 3) and lam.dtype == torch.float64
    assert torch.allclose(lam.sum(1), torch.ones(8, dtype=torch.float64))
    assert torch.allclose(task.transition.sum(1), torch.ones(10, dtype=torch.float64))
    assert tokens.min() >= 0 and tokens.max() < 10


def test_same_seed_same_numbers_and_no_global_rng():
    task = MTDTask(5, 2, seed=3)
    torch.manual_seed(123)
    a = task.sample(4, 20, generator=torch.Generator().manual_seed(9))
    torch.manual_seed(456)
    b = task.sample(4, 20, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    c = task.sample(4, 20, generator=torch.Generator().manual_seed(10))
    assert not torch.equal(a[0], c[0])
    assert torch.equal(MTDTask(5, 2, seed=3).transition, task.transition)
    assert not torch.equal(MTDTask(5, 2, seed=4).transition, task.transition)


def test_next_token_law_matches_mtd_predictive():
    """Chi-square: y_{m+1} over many sequences against sum_b p_b(j) from the true lam."""
    task = MTDTask(6, 3, seed=2)
    tokens, lam = task.sample(20000, 4, generator=torch.Generator().manual_seed(5))
    p = predictive(tokens[:, :3], task.transition, lam)  # (B, Q)
    expected = p.sum(0).numpy()
    observed = np.bincount(tokens[:, 3].numpy(), minlength=6)
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert stats.chi2.sf(chi2, df=5) > 1e-3


def test_lag_choice_follows_lambda():
    """With one-hot lam on lag g, every transition follows pi from y_{t-g}: the MLE recovers it."""
    task = MTDTask(8, 3, seed=1)
    lam = torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    tokens, _ = task.sample(2, 3000, generator=torch.Generator().manual_seed(0), lam=lam)
    est = em(tokens, task.transition, 3, max_iter=3000, tol=1e-9)
    assert est[0, 1] > 0.97
    assert torch.allclose(est[1], lam[1], atol=0.06)  # sqrt(1/3000)-scale error, x ~3


def test_user_transition_accepted_and_validated():
    pi = np.full((3, 3), 1 / 3)
    assert torch.allclose(MTDTask(3, 1, transition=pi).transition, torch.tensor(pi))
    with pytest.raises(ValueError, match="vocab_size"):
        MTDTask(4, 1, transition=pi)
