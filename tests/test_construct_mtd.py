"""The 3-layer construction equals one-step mirror descent: differential table, layer checks, I/O."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from icmix import MTDTask
from icmix.cli import main
from icmix.construct import mirror_descent_transformer
from icmix.construct.check import md_reference, mtd_differential_check
from icmix.predictors import ConstructedMirrorDescent, TunedMirrorDescent
from icmix.evaluate import evaluate_mtd
from icmix.models import DisentangledConfig, DisentangledTransformer

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def transition_with_zeros(q: int, seed: int) -> torch.Tensor:
    """Dirichlet rows with about 40% of entries zeroed (each row keeps at least one)."""
    rng = np.random.default_rng(seed)
    pi = rng.dirichlet(np.ones(q), size=q)
    pi[rng.random((q, q)) < 0.4] = 0
    pi[np.arange(q), (np.arange(q) + 1) % q] = 0  # at least one zero per row
    pi[np.arange(q), np.arange(q)] += 0.5  # and a positive entry
    return torch.as_tensor(pi / pi.sum(1, keepdims=True))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("zeros", [False, True], ids=["dense", "zeros"])
@pytest.mark.parametrize("m", [1, 2, 3, 5])
@pytest.mark.parametrize("q", [2, 5, 20])
def test_differential_table(q, m, zeros, dtype):
    """Every position i >= m equals the one-step-MD predictive with eta = beta / (m (i + 1 - m))."""
    task = MTDTask(q, m, seed=q + 10 * m, transition=transition_with_zeros(q, q * m) if zeros else None)
    g = torch.Generator().manual_seed(q * 100 + m)
    sampled, _ = task.sample(3, 256, generator=g)
    arbitrary = torch.randint(q, (2, 256), generator=g)  # not from the model: has impossible rows if zeros
    tokens = torch.cat([sampled, arbitrary])
    if zeros:
        pi = task.transition
        impossible = torch.stack([pi[tokens[:, m - k : 256 - k], tokens[:, m:]] for k in range(1, m + 1)]).sum(0) == 0
        assert (pi == 0).any()
        if q > 2 or m == 1:
            assert impossible.any(), "the table should exercise tokens impossible under every lag"
    for beta in (0.3, 4.0, 40.0):
        model = mirror_descent_transformer(task.transition, m, beta, max_length=256, dtype=dtype)
        with torch.no_grad():
            for t in (m + 1, 64, 256):
                out = model(tokens[:, :t])
                ref = md_reference(tokens[:, :t], task.transition, m, beta)
                err = (out[:, m:].double() - ref).abs().max().item()
                assert err <= TOL[dtype], f"q={q} m={m} beta={beta} T={t}: {err:.2e}"
                assert torch.isfinite(out).all()


@pytest.mark.parametrize("m", [2, 3, 5])
def test_layer_blocks_equal_algorithm_intermediates(m):
    task = MTDTask(7, m, seed=m)
    model = mirror_descent_transformer(task.transition, m, 2.5, max_length=128)
    report = mtd_differential_check(model, task, 2.5, 8, 128, torch.Generator().manual_seed(0))
    assert report["max_error_gamma"] <= 1e-12  # layer-1 attention = responsibilities gamma_i(g)
    assert report["max_error_mean"] <= 1e-12  # layer-2 block = running mean of gamma
    assert report["max_error"] <= 1e-12


def test_named_blocks_and_weights():
    task = MTDTask(4, 2, seed=0)
    model = mirror_descent_transformer(task.transition, 2, 1.0, max_length=16)
    names = model.layout.names()
    assert names[:2] == ["token", "warmup"] and "attn3.0/token" in names and "attn2.0/attn1.0/offset" in names
    w = model.readout.weight.detach()
    torch.testing.assert_close(w[:, model.layout["attn3.0/token"]], task.transition.T)
    assert w.abs().sum() == task.transition.sum()  # nothing else is read


def test_causal_prefix_contract():
    """Output at i never depends on tokens after i, for a generic (random) disentangled model."""
    cfg = DisentangledConfig(vocab_size=6, n_layers=2, n_heads=(2, 1), max_length=20, mlp_width=4)
    model = DisentangledTransformer(cfg).double()
    g = torch.Generator().manual_seed(0)
    a = torch.randint(6, (3, 20), generator=g)
    b = a.clone()
    b[:, 12:] = torch.randint(6, (3, 8), generator=g)
    with torch.no_grad():
        nn.init.normal_(model.readout.weight)  # the default zero readout would hide everything
        (oa, ca), (ob, cb) = model.run_with_cache(a), model.run_with_cache(b)
    torch.testing.assert_close(oa[:, :12], ob[:, :12], rtol=0, atol=0)
    torch.testing.assert_close(ca["stream"][:, :12], cb["stream"][:, :12], rtol=0, atol=0)
    assert not torch.allclose(ca["stream"][:, 12:], cb["stream"][:, 12:])
    assert not torch.allclose(oa[:, 12:], ob[:, 12:])


def test_save_load_bit_for_bit(tmp_path):
    task = MTDTask(5, 3, seed=1)
    tokens, _ = task.sample(4, 50, generator=torch.Generator().manual_seed(0))
    for dtype in (torch.float64, torch.float32):
        model = mirror_descent_transformer(task.transition, 3, 3.0, max_length=64, dtype=dtype)
        model.save_pretrained(tmp_path / str(dtype))
        loaded = DisentangledTransformer.from_pretrained(tmp_path / str(dtype))
        assert loaded.config == model.config
        with torch.no_grad():
            assert torch.equal(model(tokens), loaded(tokens))


def test_mismatched_checkpoint_is_refused(tmp_path):
    model = mirror_descent_transformer(MTDTask(5, 3, seed=1).transition, 3, 3.0, max_length=64)
    model.save_pretrained(tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    meta["config"]["max_length"] = 32
    (tmp_path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not match its config"):
        DisentangledTransformer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a saved model"):
        DisentangledTransformer.from_pretrained(tmp_path / "nowhere")


def test_bad_inputs_are_rejected():
    pi = MTDTask(5, 3, seed=1).transition
    model = mirror_descent_transformer(pi, 3, 3.0, max_length=32)
    with pytest.raises(ValueError, match="exceeds the model's max_length 32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        model(torch.full((1, 10), 5))
    with pytest.raises(ValueError, match=r"shape \(B, T\)"):
        model(torch.zeros(10, dtype=torch.long))
    with pytest.raises(ValueError, match="square"):
        mirror_descent_transformer(pi[:, :4], 3, 1.0, 32)
    with pytest.raises(ValueError, match="row-stochastic"):
        mirror_descent_transformer(pi * 2, 3, 1.0, 32)
    with pytest.raises(ValueError, match="beta"):
        mirror_descent_transformer(pi, 3, -1.0, 32)
    with pytest.raises(ValueError, match="order must be smaller"):
        mirror_descent_transformer(pi, 3, 1.0, 3)


def test_construction_kl_equals_one_step_md_in_the_table():
    task = MTDTask(6, 3, seed=2)
    betas = tuple(np.geomspace(0.5, 64.0, 15))
    table = evaluate_mtd(task, [TunedMirrorDescent(steps=1, betas=betas), ConstructedMirrorDescent(betas=betas)],
                         [8, 32, 128], n_sequences=64, n_tune=64, seed=5, progress=False)
    md = table[table.estimator == "MD 1-step (tuned η)"].set_index("length")
    cons = table[table.estimator == "Construction (3-layer, tuned β)"].set_index("length")
    assert (md["beta"] == cons["beta"]).all()
    assert (md["kl_mean"] - cons["kl_mean"]).abs().max() <= 1e-10
    assert md["beta"].nunique() > 1  # the tuning really varies with length


def test_cli_construct_check(tmp_path, capsys):
    code = main(["construct", "mtd", "--vocab-size", "6", "--order", "2", "--beta", "3", "--max-length", "48",
                 "--check", "--n-sequences", "8", "--save", "--out", str(tmp_path)])
    assert code == 0
    text = capsys.readouterr().out
    err = float(text.split("max |error| = ")[1].split()[0])
    assert err <= 1e-10
    assert (tmp_path / "construction_attention.png").stat().st_size > 10_000
    assert (tmp_path / "model" / "model.safetensors").exists()
    assert main(["construct", "mtd", "--vocab-size", "6", "--order", "6", "--beta", "3", "--max-length", "6",
                 "--out", str(tmp_path / "bad")]) == 2
