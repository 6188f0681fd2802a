"""The ``markov`` testbed (Edelman et al. 2024): the chains, the stationary start, and the
predictors against direct references, the bigram against exact Bayes by quadrature (k = 2, T = 6,
every sequence enumerated)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from icmix.families import get_family
from icmix.families.baselines import baselines
from icmix.random import make_generator


def family_and_task(**spec):
    family = get_family("markov")
    return family, family.build(family.spec(**spec))


@pytest.mark.parametrize("alpha", [1.0, 0.01, 0.001])
def test_the_stationary_distribution_solves_pi_p_equals_pi(alpha):
    # small alpha: nearly reducible chains whose rows underflow, where a linear solve went wrong
    from icmix.testbeds.markov import stationary

    for k in (3, 5):
        _, task = family_and_task(vocab_size=k, alpha=alpha)
        _, P = get_family("markov").sample(task, 4000, 2, make_generator(0))
        pi = stationary(P)
        assert (torch.einsum("bi,bij->bj", pi, P) - pi).abs().max() < 1e-9
        assert torch.allclose(pi.sum(-1), torch.ones(4000, dtype=torch.float64)) and (pi >= 0).all()
    # against the closed form for two states: pi = (q, p) / (p + q)
    P = torch.tensor([[[0.7, 0.3], [0.1, 0.9]]], dtype=torch.float64)
    assert torch.allclose(stationary(P), torch.tensor([[0.25, 0.75]], dtype=torch.float64), atol=1e-14)


@pytest.mark.parametrize("start", ["stationary", "uniform"])
def test_chains_start_where_they_should_and_follow_their_rows(start):
    from icmix.testbeds.markov import stationary

    family, task = family_and_task(vocab_size=3, start=start)
    tokens, P = family.sample(task, 40_000, 30, make_generator(1))
    first = torch.nn.functional.one_hot(tokens[:, 0], 3).double()
    expected = stationary(P) if start == "stationary" else torch.full((40_000, 3), 1 / 3, dtype=torch.float64)
    gap = (first - expected).numpy()  # zero mean, per state
    assert (np.abs(gap.mean(0)) < 4 * gap.std(0, ddof=1) / np.sqrt(len(gap))).all()
    # every transition t -> t+1 is drawn from the row of the state at t
    truth = family.true_predictive(task, tokens, P, range(1, 30))  # (B, 29, 3)
    drawn = torch.nn.functional.one_hot(tokens[:, 1:], 3).double()
    resid = (drawn - truth).reshape(-1, 3).numpy()
    assert (np.abs(resid.mean(0)) < 4 * resid.std(0, ddof=1) / np.sqrt(len(resid))).all()


def test_unigram_and_bigram_count_the_prefix_as_a_loop_does():
    family, task = family_and_task(vocab_size=4, alpha=0.5)
    tokens, _ = family.sample(task, 6, 12, make_generator(2))
    uniform, unigram, bigram = family.predictors(task)
    lengths = [1, 2, 5, 12]
    uni, big = unigram.predict(tokens, task, lengths), bigram.predict(tokens, task, lengths)
    assert torch.equal(uniform.predict(tokens, task, lengths), torch.full((6, 4, 4), 0.25, dtype=torch.float64))
    for b in range(6):
        for j, L in enumerate(lengths):
            seq = tokens[b, :L].tolist()
            counts = np.bincount(seq, minlength=4)
            assert uni[b, j].numpy() == pytest.approx((counts + 0.5) / (L + 2))
            a = seq[-1]
            trans = np.zeros(4)
            for x, y in zip(seq[:-1], seq[1:]):
                trans[y] += x == a
            assert big[b, j].numpy() == pytest.approx((trans + 0.5) / (trans.sum() + 2))


def exact_bayes_two_states(seq, L, start, alpha, nodes=200):
    """E[P[a, ·] | the prefix seq[:L]] for k = 2 by Gauss-Legendre quadrature over the two free
    entries p = P[0, 1], q = P[1, 0] under Beta(alpha, alpha) priors (the Dirichlet rows)."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    x, w = (x + 1) / 2, w / 2
    p, q = np.meshgrid(x, x, indexing="ij")
    P = np.stack([np.stack([1 - p, p], -1), np.stack([q, 1 - q], -1)], -2)
    weight = np.outer(w, w) * ((p * (1 - p)) * (q * (1 - q))) ** (alpha - 1)
    if start == "stationary":
        weight = weight * np.stack([q / (p + q), p / (p + q)], -1)[..., seq[0]]
    for i in range(L - 1):
        weight = weight * P[..., seq[i], seq[i + 1]]
    a = seq[L - 1]
    return np.array([(weight * P[..., a, b]).sum() for b in range(2)]) / weight.sum()


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_the_bigram_is_exact_bayes_when_the_start_carries_no_evidence(alpha):
    family, task = family_and_task(vocab_size=2, length=6, alpha=alpha, start="uniform")
    seqs = torch.tensor(list(itertools.product([0, 1], repeat=6)))
    big = family.bayes_predictor(task).predict(seqs, task, range(1, 7)).numpy()
    worst = max(np.abs(exact_bayes_two_states(s, L, "uniform", alpha) - big[i, L - 1]).max()
                for i, s in enumerate(seqs.tolist()) for L in range(1, 7))
    assert worst < 1e-10


def test_under_the_stationary_start_the_first_state_is_evidence_the_bigram_ignores():
    # The exact posterior predictive weighs the first state's probability under P's stationary
    # distribution; the bigram does not.  Measured: up to about 0.11 in probability at k = 2, T = 6.
    family, task = family_and_task(vocab_size=2, length=6, start="stationary")
    seqs = torch.tensor(list(itertools.product([0, 1], repeat=6)))
    big = family.bayes_predictor(task).predict(seqs, task, range(1, 7)).numpy()
    gaps = np.array([[np.abs(exact_bayes_two_states(s, L, "stationary", 1.0) - big[i, L - 1]).max()
                      for L in range(1, 7)] for i, s in enumerate(seqs.tolist())])
    assert 0.08 < gaps.max() < 0.13


def test_the_baselines_order_the_predictors_and_the_gpt_config_is_the_task_s():
    table = baselines("markov", ["vocab_size=3", "length=60"], samples=400, seed=0).set_index("predictor")
    assert list(table.index) == ["uniform", "unigram", "bigram", "true"]
    assert table.loss["uniform"] == pytest.approx(np.log(3))
    assert table.loss["true"] < table.loss["bigram"] < table.loss["unigram"] < table.loss["uniform"]
    family = get_family("markov")
    assert family.spec(vocab_size=3, length=100).model_fields() == {"vocab_size": 3, "max_length": 100}
    with pytest.raises(ValueError, match="start"):
        family.spec(start="random")
    with pytest.raises(ValueError, match="vocab_size"):
        family.spec(vocab_size=1)


def test_an_attention_only_gpt_trains_on_markov_chains(tmp_path):
    # The testbed's model: a 2-layer attention-only transformer (no MLPs), trained on next-token
    # prediction; its hook points are TransformerLens's for an attention-only block.
    import json

    from icmix.interp import hook_names
    from icmix.train import TrainConfig, load_run, train

    cfg = TrainConfig.from_dict({
        "task": {"kind": "markov", "vocab_size": 3, "length": 24},
        "model": {"kind": "gpt", "n_layers": 2, "n_heads": 1, "d_model": 16, "attn_only": True},
        "optim": {"lr": 3e-3, "schedule": "constant", "warmup_steps": 5}, "loss": "ce", "loss_positions": "all",
        "steps": 40, "batch_size": 32, "eval_every": 20, "eval_size": 256, "checkpoint_every": 20, "seed": 0})
    run = train(cfg, tmp_path / "run", progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40] and all(np.isfinite(r["eval_kl"]) for r in rows)
    _, model = load_run(run)
    assert not any("mlp" in k or "ln2" in k for k in model.state_dict())
    names = hook_names(model)
    assert "backbone.blocks.1.hook_attn_out" in names and "backbone.blocks.1.hook_resid_post" in names
    assert not any("mlp" in n or "resid_mid" in n for n in names)
    # the full GPT of the same config keeps its MLPs
    full = TrainConfig.from_dict({**json.loads(json.dumps(cfg.to_dict())),
                                  "model": {"kind": "gpt", "n_layers": 2, "n_heads": 1, "d_model": 16}})
    assert full.model_config().attn_only is False


def test_the_markov_figure_traces_the_loss_and_the_heads_over_training(tmp_path):
    import pandas as pd

    from icmix.cli import main
    from icmix.experiments import get_figure
    from icmix.random import Stream, stream
    from icmix.train import load_run

    assert type(get_figure("markov")).__module__ == "icmix.testbeds.markov_icl"
    out = tmp_path / "markov"
    assert main(["reproduce", "markov", "--preset", "quick", "--set", "steps=200", "--set", "eval_every=100",
                 "--set", "seeds=0,1", "--set", "length=30", "--set", "n_sequences=200",
                 "--out", str(out), "--no-progress"]) == 0
    heads = pd.read_csv(out / "markov-heads.csv")
    assert sorted(heads.step.unique()) == [100, 200] and len(heads) == 2 * 2 * 2  # seeds x evaluations x layers
    assert heads[["previous_token", "induction"]].stack().between(0, 1).all()
    # the scores training logged at the last step: the final model's, recomputed here on the run's evaluation batch
    from icmix.interp.scores import attention_patterns, induction_score, previous_token_score
    from icmix.testbeds.markov import HEAD_SEQUENCES
    from icmix.train.loop import build_objective, build_task

    run = next((out / "runs").glob("gpt2-markov-k3-T30-ce-seed1-*"))
    cfg, model = load_run(run)
    batch = build_objective(build_task(cfg), cfg).eval_batch(cfg.eval_size, stream(cfg.seed, Stream.TRAINING_EVALUATION))
    tokens = batch["inputs"][:HEAD_SEQUENCES]
    with torch.no_grad():
        patterns = attention_patterns(model.eval(), tokens)
    last = heads[(heads.seed == 1) & (heads.step == 200)].set_index("layer")
    for layer, p in enumerate(patterns):
        assert last.previous_token[layer] == pytest.approx(previous_token_score(p)[0].item(), abs=1e-6)
        assert last.induction[layer] == pytest.approx(induction_score(p, tokens)[0].item(), abs=1e-6)
    # uniform attention's scores on each seed's own scored chains, by hand: query i puts 1/(i + 1) on each
    # j <= i, so the previous token gets 1/(i + 1), and the keys after earlier occurrences of its state n_i/(i + 1)
    for seed in (0, 1):
        cfg_s, _ = load_run(next((out / "runs").glob(f"gpt2-markov-k3-T30-ce-seed{seed}-*")))
        x = build_objective(build_task(cfg_s), cfg_s).eval_batch(
            cfg_s.eval_size, stream(cfg_s.seed, Stream.TRAINING_EVALUATION))["inputs"][:HEAD_SEQUENCES].numpy()
        t = x.shape[1]
        previous = np.mean([1 / (i + 1) for i in range(1, t)])
        counts = [(sum(x[b, j - 1] == x[b, i] for j in range(1, i)), i) for b in range(len(x)) for i in range(1, t)]
        induction = np.mean([n / (i + 1) for n, i in counts if n])
        mine = heads[heads.seed == seed]
        assert mine.uniform_previous_token.unique() == pytest.approx([previous], abs=1e-12)
        assert mine.uniform_induction.unique() == pytest.approx([induction], abs=1e-12)
    assert heads.groupby("seed").uniform_induction.first().nunique() == 2  # each its own chains
    final = pd.read_csv(out / "markov-final.csv").set_index(["seed", "predictor"])
    assert final.loss[0, "uniform"] == pytest.approx(np.log(3))
    # the trained model's cross-entropy, recomputed from its outputs on the same fresh sequences
    family = get_family("markov")
    task = family.build(family.spec(vocab_size=3, length=30))
    tokens, _ = family.sample(task, 200, 31, stream(0, Stream.TESTBEDS))
    _, model = load_run(next((out / "runs").glob("gpt2-markov-k3-T30-ce-seed0-*")))
    with torch.no_grad():
        logp = torch.log_softmax(model(tokens[:, :-1]).double(), -1)
    ce = -logp.gather(-1, tokens[:, 1:, None])[..., 0].mean().item()
    assert final.loss[0, "trained"] == pytest.approx(ce, rel=1e-6)
    assert final.excess_over_bigram[0, "trained"] == pytest.approx(ce - final.loss[0, "bigram"], rel=1e-6)
    from icmix.experiments.claims import decide, seeds

    claims = pd.read_csv(out / "claims.csv")
    mean, ci, n, _ = seeds(final.excess_over_bigram[:, "trained"])
    assert list(claims.figures) == ["markov"] and claims.verdict[0] == decide(mean, ci, n, 0.01, "<=")


def test_training_logs_every_heads_scores_where_they_can_be_scored():
    # MarkovObjective.evaluate: each head's previous-token and induction score under its own key, as
    # icmix.interp scores the model's patterns (two layers of two heads); none where no query's state
    # occurred before its previous position (chains of 2 states, or too many states to recur).
    from icmix.interp.scores import attention_patterns, induction_score, previous_token_score
    from icmix.testbeds.markov import HEAD_SEQUENCES, MarkovObjective, head_metric
    from icmix.testbeds.markov_icl import head_scores_over_training
    from icmix.train import TrainConfig
    from icmix.train.loop import build_model, build_objective, build_task

    def setup(vocab_size, length):
        cfg = TrainConfig.from_dict({
            "task": {"kind": "markov", "vocab_size": vocab_size, "length": length},
            "model": {"kind": "gpt", "n_layers": 2, "n_heads": 2, "d_model": 16, "attn_only": True},
            "loss": "ce", "loss_positions": "all", "steps": 1, "batch_size": 4, "seed": 0})
        torch.manual_seed(0)
        objective = build_objective(build_task(cfg), cfg)
        return objective, build_model(cfg).eval(), objective.eval_batch(100, make_generator(3))

    objective, model, batch = setup(3, 12)
    assert isinstance(objective, MarkovObjective)
    row = objective.evaluate(model, batch, torch.device("cpu"))
    tokens = batch["inputs"][:HEAD_SEQUENCES]
    with torch.no_grad():
        patterns = attention_patterns(model, tokens)
    for layer, p in enumerate(patterns):
        prev, ind = previous_token_score(p), induction_score(p, tokens)
        for h in range(2):
            assert row[head_metric(layer, h, "previous_token")] == pytest.approx(prev[h].item(), abs=1e-7)
            assert row[head_metric(layer, h, "induction")] == pytest.approx(ind[h].item(), abs=1e-7)
    heads = head_scores_over_training([{"step": 5, **row}], 2, 2).set_index(["layer", "head"])
    assert heads.loc[(1, 0), "induction"] == row["L1H0_induction"] and heads.loc[(0, 1), "previous_token"] == row[
        "L0H1_previous_token"]
    for vocab_size, length in ((3, 2), (500, 3)):
        objective, model, batch = setup(vocab_size, length)
        row = objective.evaluate(model, batch, torch.device("cpu"))
        assert "eval_kl" in row and not any(k.startswith("L0H0") for k in row)
    with pytest.raises(ValueError, match="no head scores"):
        head_scores_over_training([{"step": 5, "eval_loss": 1.0}], 2, 2)
