"""Model-level checks: the two GPT attention paths agree, causality, save/load, stream widths."""

import pytest
import torch

from icmix.models import DisentangledConfig, DisentangledTransformer, GPTConfig, GPTTransformer


@pytest.mark.parametrize("positions", ["learned", "relative"])
def test_gpt_sdpa_and_explicit_attention_agree(positions):
    torch.manual_seed(0)
    model = GPTTransformer(GPTConfig(vocab_size=7, n_layers=2, n_heads=2, d_model=16, max_length=24, positions=positions)).double()
    with torch.no_grad():
        model.backbone.rel.normal_() if positions == "relative" else None
        tokens = torch.randint(7, (3, 20))
        fast = model(tokens)
        slow, patterns = model(tokens, return_attention=True)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
    assert len(patterns) == 2 and patterns[0].shape == (3, 2, 20, 20)
    torch.testing.assert_close(patterns[1].sum(-1), torch.ones(3, 2, 20, dtype=torch.float64))
    assert torch.all(patterns[0].triu(1) == 0)


def test_gpt_causal_and_save_load(tmp_path):
    torch.manual_seed(1)
    model = GPTTransformer(GPTConfig(vocab_size=5, n_layers=2, n_heads=2, d_model=8, max_length=16))
    a = torch.randint(5, (2, 16))
    b = a.clone()
    b[:, 9:] = (b[:, 9:] + 1) % 5
    with torch.no_grad():
        torch.testing.assert_close(model(a)[:, :9], model(b)[:, :9], rtol=0, atol=0)
    model.save_pretrained(tmp_path)
    loaded = GPTTransformer.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(a), loaded(a))
    with pytest.raises(ValueError, match="holds a 'gpt' model"):
        DisentangledTransformer.from_pretrained(tmp_path)
    with pytest.raises(ValueError, match="max_length"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_disentangled_stream_widths_follow_concatenation():
    """d_l = d_{l-1} (1 + H_l) + H_l K (+ MLP width): every block is accounted for by name."""
    cfg = DisentangledConfig(vocab_size=4, n_layers=3, n_heads=(2, 1, 1), max_length=10, value_offsets=3, mlp_width=5)
    model = DisentangledTransformer(cfg)
    d = 4 + 10
    for layout, heads in zip(model.layouts[1:], cfg.n_heads):
        d = d * (1 + heads) + heads * 3 + 5
        assert layout.width == d
        assert sum(w for _, w in layout.blocks) == d
    out, cache = model.run_with_cache(torch.randint(4, (2, 10)))
    assert cache["stream"].shape == (2, 10, d) and out.shape == (2, 10, 4)
    assert "attn1.1/offset" in model.layout and "mlp3" in model.layout


@pytest.mark.parametrize("positions", ["learned", "relative"])
def test_regression_gpt_last_layer_at_x_tokens_only(positions):
    """The fast pass computes the last block's queries, MLP and final LayerNorm at the x tokens
    alone; outputs and every gradient equal those of the full pass (explicit attention)."""
    from icmix.models import RegressionGPT, RegressionGPTConfig

    torch.manual_seed(0)
    model = RegressionGPT(RegressionGPTConfig(dim=5, max_points=9, n_layers=3, n_heads=2, d_model=16,
                                              positions=positions)).double()
    with torch.no_grad():
        model.backbone.rel.normal_() if positions == "relative" else None
    xs, ys = torch.randn(4, 9, 5, dtype=torch.float64), torch.randn(4, 9, dtype=torch.float64)
    grads = []
    for full in (False, True):
        model.zero_grad()
        out = model(xs, ys, return_attention=True)[0] if full else model(xs, ys)
        ((out - ys) ** 2).mean().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    (fast, g_fast), (slow, g_slow) = grads
    assert fast.shape == (4, 9)
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
    for a, b in zip(g_fast, g_slow):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
