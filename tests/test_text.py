"""Real text (SPEC §3): the corpus, its split and windows, the fits, and the text figure."""

import numpy as np
import pytest
import torch
from scipy import optimize

from icmix import MTDTask
from icmix.estimators.mtd import bayes_exact, fit
from icmix.random import dirichlet
from icmix.tasks.text import Alphabet, TextCorpus, pydoc_documents, read_documents

from conftest import sample


def test_alphabet_keeps_the_most_frequent_lowercased_characters():
    alphabet = Alphabet.fit(["Aab", "bAc!"], q=3)  # a: 3, b: 2, then c and ! tie (1 each)
    assert alphabet.symbols == "ab" and alphabet.size == 3
    np.testing.assert_array_equal(alphabet.encode("BAC!a"), [1, 0, 2, 2, 0])
    assert alphabet.decode([0, 1, 2]) == "ab⊥"
    with pytest.raises(ValueError, match="needs at least 9"):
        Alphabet.fit(["abc"], q=10)


def test_pydoc_split_is_by_document_without_leakage():
    corpus = TextCorpus.load(q=32, test_fraction=0.2, seed=0)
    docs = pydoc_documents()
    assert len(corpus.train) + len(corpus.test) == len(docs)
    encoded = {corpus.alphabet.encode(d).tobytes(): i for i, d in enumerate(docs)}
    train_ids = {encoded[d.tobytes()] for d in corpus.train}
    test_ids = {encoded[d.tobytes()] for d in corpus.test}
    assert not train_ids & test_ids
    share = sum(map(len, corpus.test)) / sum(map(len, docs))
    assert 0.15 < share <= 0.2
    # Every window lies inside one document of its split.
    windows = corpus.windows("test", 50, 64, generator=0)
    test_text = [d.tobytes() for d in corpus.test]
    for w in windows.numpy():
        assert any(w.tobytes() in d for d in test_text)
    assert torch.equal(windows, corpus.windows("test", 50, 64, generator=0))
    # Another split seed gives another split.
    assert TextCorpus.load(q=32, seed=1).describe() != corpus.describe()


def test_read_documents_from_a_file_and_a_directory(tmp_path):
    (tmp_path / "one.txt").write_text("first doc\n\nsecond doc\nline two\n\n\nthird")
    assert read_documents(tmp_path / "one.txt") == ["first doc", "second doc\nline two", "third"]
    d = tmp_path / "dir"
    d.mkdir()
    (d / "b.txt").write_text("bee")
    (d / "a.txt").write_text("ay")
    assert read_documents(d) == ["ay", "bee"]
    with pytest.raises(ValueError, match="at least 2"):
        (tmp_path / "single.txt").write_text("only one")
        read_documents(tmp_path / "single.txt")


def test_skip_bigrams_against_hand_counts():
    # Alphabet a=0, b=1, other=2.  Documents "abab" and "ba".
    docs = [np.array([0, 1, 0, 1]), np.array([1, 0])]
    pis = fit.skip_bigrams(docs, q=3, order=2, kappa=0.5).numpy()
    # lag 1 pairs: ab, ba, ab | ba  -> a->b twice, b->a twice
    np.testing.assert_allclose(pis[0], [[0.5 / 3.5, 2.5 / 3.5, 0.5 / 3.5],
                                        [2.5 / 3.5, 0.5 / 3.5, 0.5 / 3.5],
                                        [1 / 3, 1 / 3, 1 / 3]], rtol=0, atol=1e-15)
    # lag 2 pairs: a_a, b_b (none across the document boundary)
    np.testing.assert_allclose(pis[1], [[1.5 / 2.5, 0.5 / 2.5, 0.5 / 2.5],
                                        [0.5 / 2.5, 1.5 / 2.5, 0.5 / 2.5],
                                        [1 / 3, 1 / 3, 1 / 3]], rtol=0, atol=1e-15)
    np.testing.assert_allclose(fit.unigram(docs, 3, 0.5).numpy(), np.array([3.5, 3.5, 0.5]) / 7.5, atol=1e-15)


def test_global_lambda_is_the_mle_over_all_documents():
    task = MTDTask(5, 3, seed=1, per_lag=True)
    docs = [d.numpy() for d in sample(task, 4, 60, 0)[0]]
    lam = fit.global_lambda(docs, task.transition, 3, tol=1e-13).numpy()
    c = np.concatenate([np.array([[task.transition[g - 1][d[t - g], d[t]].item() for g in (1, 2, 3)]
                                  for t in range(3, len(d))]) for d in docs])
    ref = np.full(3, 1 / 3)
    for _ in range(20_000):
        r = ref * c
        ref = (r / r.sum(1, keepdims=True)).mean(0)
    np.testing.assert_allclose(lam, ref, rtol=0, atol=1e-8)


def test_empirical_prior_maximises_the_marginal_likelihood():
    """Monte-Carlo EM against the exact maximiser of sum_b log p(window_b | alpha) (m = 2: the
    exact DP's log evidence, optimised by Nelder-Mead)."""
    task = MTDTask(6, 2, seed=3)
    true_alpha = torch.tensor([4.0, 1.0], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    lam = dirichlet(true_alpha.expand(300, 2), g)
    tokens, _ = task.sample(300, 30, generator=g, lam=lam)

    def neg_log_ev(log_alpha):
        alpha = np.exp(log_alpha)
        return -bayes_exact(tokens, task.transition, 2, alpha, return_log_evidence=True)[1].sum().item()

    best = np.exp(optimize.minimize(neg_log_ev, np.zeros(2), method="Nelder-Mead",
                                    options=dict(xatol=1e-4, fatol=1e-6)).x)
    mcem = fit.fit_dirichlet_prior(tokens, task.transition, 2, em_iters=30, samples=200, burn_in=50, tol=1e-4).numpy()
    np.testing.assert_allclose(mcem, best, rtol=0.1)
    # And the fitted prior is worth its name: higher marginal likelihood than Dirichlet(1).
    assert neg_log_ev(np.log(mcem)) < neg_log_ev(np.zeros(2)) - 1.0


def test_dirichlet_mle_recovers_a_known_concentration():
    alpha = torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64)
    mean_log = torch.digamma(alpha) - torch.digamma(alpha.sum())
    torch.testing.assert_close(fit.dirichlet_mle(mean_log), alpha, rtol=1e-9, atol=0)


def test_tune_observed_picks_the_lowest_cross_entropy():
    from icmix.estimators.mtd import mirror_descent, predictive
    from icmix.predictors import TunedMirrorDescent

    task = MTDTask(5, 2, seed=0)
    tokens, _ = sample(task, 40, 33, 1)
    lengths = [8, 32]
    md = TunedMirrorDescent(steps=1, betas=(0.5, 5.0, 50.0))
    md.tune_observed(tokens[:, :32], tokens[:, lengths], task, lengths)
    for j, L in enumerate(lengths):
        ce = []
        for beta in md.betas:
            lam = mirror_descent(tokens[:, :L], task.transition, 2, beta / (2 * (L - 2)))
            p = predictive(tokens[:, :L], task.transition, lam)
            ce.append(-p[torch.arange(40), tokens[:, L]].log().mean().item())
        assert md.chosen_beta[L] == md.betas[int(np.argmin(ce))]


def test_gpt_attention_window_limits_the_receptive_field():
    from icmix.models.gpt import GPTConfig, GPTTransformer

    model = GPTTransformer(GPTConfig(vocab_size=7, n_layers=2, max_length=20)).eval()
    x = torch.randint(7, (3, 20), generator=torch.Generator().manual_seed(0))
    far = x.clone()
    far[:, :15] = (far[:, :15] + 1) % 7  # outside 2 layers x (3 - 1) + 1 = 5 tokens
    near = x.clone()
    near[:, 15] = (near[:, 15] + 1) % 7
    with torch.no_grad(), model.attention_window(3):
        assert torch.equal(model(x)[:, -1], model(far)[:, -1])
        assert not torch.equal(model(x)[:, -1], model(near)[:, -1])
        _, attn = model(x, return_attention=True)
    assert attn[0][:, :, 10, :8].abs().max() == 0
    assert model.backbone.window is None  # restored
    with torch.no_grad():
        assert not torch.equal(model(x)[:, -1], model(far)[:, -1])


def test_reproduce_text_tiny(tmp_path):
    import pandas as pd

    from icmix.cli import main

    out, corpus = tmp_path / "t", tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(pydoc_documents()[:12]))  # a small corpus of the user's own: --set corpus=PATH
    assert main(["reproduce", "text", "--preset", "quick", "--out", str(out), "--no-progress", "--set", "steps=5",
                 "--set", f"corpus={corpus}",
                 "--set", "batch_size=2", "--set", "gpt_width=8", "--set", "lengths=(8,32)", "--set", "orders=(2,3)",
                 "--set", "n_windows=24", "--set", "n_tune=12", "--set", "prior_windows=8",
                 "--set", "gibbs_samples=10", "--set", "gibbs_burn_in=5"]) == 0
    t = pd.read_csv(out / "text.csv")
    assert {"unigram", "bigram", "global-lambda", "em", "trained"} <= set(t.predictor)
    assert set(t[t.predictor == "bayes"].variant) == {"exact/uniform-prior", "exact/empirical-prior"}
    assert (t.ce_mean > 0).all() and set(t.length) == {8, 32}
    ce = t.set_index(["key", "length"]).ce_mean
    assert (ce["bigram"] < ce["unigram"]).all()  # the previous character is worth something on text
    gain = pd.read_csv(out / "text-gain.csv")
    for (m, matrices, length), row in gain.set_index(["order", "matrices", "length"]).iterrows():
        at = t[(t.order == m) & (t.matrices == matrices) & (t.length == length)].set_index("key").ce_mean
        assert abs(row.gain_mean - (at["global-lambda"] - at[row.bayes])) < 1e-12  # paired mean = difference of means
    lam = pd.read_csv(out / "text-lambda.csv")
    assert np.allclose(lam.groupby(["order", "matrices", "window"]).lam.sum(), 1.0)
    assert set(pd.read_csv(out / "text-fit.csv").matrices) == {"shared", "per-lag"}


def test_the_text_baselines_score_held_out_windows_under_the_training_split_counts(tmp_path):
    # `icmix baselines text`: uniform, unigram and bigram fitted (add-1/2) on the training split, each
    # scored by the cross-entropy of the next character of held-out windows; recomputed here by hand.
    from icmix.families import get_family
    from icmix.families.baselines import baselines
    from icmix.random import Stream, stream

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n\n".join(pydoc_documents()[:30]))
    overrides = [f"corpus={corpus}", "vocab_size=6", "length=10"]
    table = baselines("text", overrides, samples=300, seed=2).set_index("predictor")
    assert list(table.index) == ["uniform", "unigram", "bigram"]
    family = get_family("text")
    text = family.build(family.spec(corpus=str(corpus), vocab_size=6, length=10))
    windows = text.windows("test", 300, 11, stream(2, Stream.BASELINES)).numpy()
    uni, pair = np.full(6, 0.5), np.full((6, 6), 0.5)
    for doc in text.train:
        for i, a in enumerate(doc):
            uni[a] += 1
            if i:
                pair[doc[i - 1], a] += 1
    uni, pair = uni / uni.sum(), pair / pair.sum(1, keepdims=True)
    ce = {"uniform": np.full((300, 10), np.log(6)), "unigram": -np.log(uni[windows[:, 1:]]),
          "bigram": -np.log(pair[windows[:, :-1], windows[:, 1:]])}
    for name, c in ce.items():
        assert table.loss[name] == pytest.approx(c.mean(), rel=1e-10)
        assert table.stderr[name] == pytest.approx(c.mean(1).std(ddof=1) / np.sqrt(300), rel=1e-8, abs=1e-15)
    assert table.loss["bigram"] < table.loss["unigram"] < table.loss["uniform"]
