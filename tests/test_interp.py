"""Hook points and ``icmix.interp``: every model class names its activations as TransformerLens
does, a cache records them, a hook edits them, and scores read them.  References: the models'
own ``return_attention`` patterns, a head ablated through the weights, hand-built patterns."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from icmix import interp
from icmix.construct import mirror_descent_transformer, per_lag_mirror_descent_transformer, posterior_mean_transformer
from icmix.models import (DisentangledConfig, DisentangledTransformer, GPTConfig, GPTTransformer, RegressionGPT,
                          RegressionGPTConfig)
from icmix.tasks.mtd import MTDTask

STREAM = ("hook_resid_pre", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z", "hook_attn_out",
          "hook_resid_mid", "hook_resid_post")
QKV = ("attn.hook_q", "attn.hook_k", "attn.hook_v")


def _gpt(positions="learned"):
    torch.manual_seed(0)
    model = GPTTransformer(GPTConfig(vocab_size=5, n_layers=2, n_heads=2, d_model=16, max_length=12,
                                     positions=positions)).eval()
    return model, (torch.randint(5, (3, 12)),), "backbone.", 2, STREAM + QKV + ("hook_mlp_out",)


def _regression():
    torch.manual_seed(0)
    model = RegressionGPT(RegressionGPTConfig(dim=3, max_points=6, n_layers=2, n_heads=2, d_model=16)).eval()
    return model, (torch.randn(3, 6, 3), torch.randn(3, 6)), "backbone.", 2, STREAM + QKV + ("hook_mlp_out",)


def _disentangled():
    torch.manual_seed(0)
    model = DisentangledTransformer(DisentangledConfig(vocab_size=4, n_layers=2, n_heads=(2, 1), max_length=10,
                                                       mlp_width=3)).eval()
    for p in model.parameters():  # the readout starts at zero: give every block a say
        torch.nn.init.normal_(p, std=0.3)
    return model, (torch.randint(4, (3, 10)),), "", 2, STREAM + ("hook_mlp_out",)


def _md_construction():
    task = MTDTask(vocab_size=3, order=2, seed=1)
    model = mirror_descent_transformer(task.transition, 2, 5.0, 10)
    return model, (torch.randint(3, (3, 10)),), "", 3, STREAM


def _mtdg_construction():
    pis = torch.softmax(torch.randn(2, 3, 3, generator=torch.Generator().manual_seed(2)), -1)
    model = per_lag_mirror_descent_transformer(pis, 2, 5.0, 10)
    return model, (torch.randint(3, (3, 10)),), "", 3, STREAM


def _pm_construction():
    comps = torch.randn(2, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    model = posterior_mean_transformer(comps, 0.5, 6)
    g = torch.Generator().manual_seed(4)
    return (model, (torch.randn(3, 6, 3, generator=g, dtype=torch.float64),
                    torch.randn(3, 6, generator=g, dtype=torch.float64)), "", 3, STREAM + QKV + ("hook_mlp_out",))


MODELS = {"gpt": _gpt, "gpt-relative": lambda: _gpt("relative"), "gpt-regression": _regression,
          "disentangled": _disentangled, "md-construction": _md_construction, "mtdg-construction": _mtdg_construction,
          "pm-construction": _pm_construction}


def _patterns(model, inputs):
    """The patterns the model gives without hooks (``return_attention`` or its own cache), and the
    keyword that makes a hooked run take the same path (the GPTs' explicit attention)."""
    with torch.no_grad():
        if isinstance(model, (GPTTransformer, RegressionGPT)):
            return model(*inputs, return_attention=True)[1], {"return_attention": True}
        return model.run_with_cache(*inputs)[1]["attention"], {}


@pytest.mark.parametrize("kind", MODELS)
def test_every_model_names_its_activations_and_caches_them(kind):
    model, inputs, prefix, layers, per_block = MODELS[kind]()
    names = interp.hook_names(model)
    expected = {f"{prefix}blocks.{layer}.{s}" for layer in range(layers) for s in per_block}
    expected |= {"hook_embed", "hook_out"}
    assert expected <= set(names), sorted(expected - set(names))
    if kind == "gpt":
        assert {"backbone.hook_pos_embed", "backbone.hook_resid_final"} <= set(names)
    for name in names:  # each name is its module path
        assert isinstance(model.get_submodule(name), torch.nn.Module)
    with torch.no_grad():
        plain = model(*inputs)
        out, cache = interp.run_with_cache(model, *inputs)
    assert torch.equal(out, plain)
    assert set(cache) == set(names) - ({"backbone.hook_pos_embed"} if kind == "gpt-relative" else set())
    reference, same_path = _patterns(model, inputs)
    with torch.no_grad():
        _, explicit = interp.run_with_cache(model, *inputs, names=lambda n: n.endswith("hook_pattern"), **same_path)
    if kind in ("disentangled", "pm-construction"):  # layers with 2 and 1 heads
        with pytest.raises(ValueError, match="differ in shape"):
            cache.stack("attn.hook_pattern")
        patterns = None
    else:
        patterns = cache.stack("attn.hook_pattern")
    for layer in range(layers):
        p = cache[f"{prefix}blocks.{layer}.attn.hook_pattern"]
        t = p.shape[-1]
        # a GPT's later layers read a stream the fused kernel made, so equal to rounding; on the
        # path ``return_attention`` takes, bit for bit
        assert torch.allclose(p, reference[layer], atol=1e-6)
        assert torch.equal(explicit[f"{prefix}blocks.{layer}.attn.hook_pattern"], reference[layer])
        assert torch.allclose(p.sum(-1), torch.ones((), dtype=p.dtype), atol=1e-6)
        assert (p.triu(1) == 0).all()  # causal: no weight on later keys
        s = cache[f"{prefix}blocks.{layer}.attn.hook_attn_scores"]
        assert s.shape == p.shape and torch.isneginf(s.triu(1)[..., torch.ones(t, t).triu(1).bool()]).all()
        z = cache[f"{prefix}blocks.{layer}.attn.hook_z"]
        assert z.shape[:3] == (p.shape[0], t, p.shape[1])  # (B, T, H, d_head)
        if f"{prefix}blocks.{layer}.attn.hook_q" in cache:
            assert cache[f"{prefix}blocks.{layer}.attn.hook_q"].shape == z.shape
    if patterns is not None:
        assert patterns.shape[0] == layers


@pytest.mark.parametrize("kind", MODELS)
def test_an_identity_hook_everywhere_leaves_the_output_bit_identical(kind):
    model, inputs, *_ = MODELS[kind]()
    seen = []

    def identity(t, name):
        seen.append(name)

    def in_place_noop(t, name):
        t.add_(0.0)  # an in-place edit that changes nothing: counted as an edit, still the same numbers
        return None

    with torch.no_grad():
        plain = model(*inputs)
        out = interp.run_with_hooks(model, *inputs, fwd_hooks=[(lambda n: True, identity)])
        assert torch.equal(out, plain)
        assert set(seen) == set(interp.hook_names(model)) - {n for n in interp.hook_names(model)
                                                              if n.endswith("hook_pos_embed") and kind == "gpt-relative"}
        out = interp.run_with_hooks(model, *inputs, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), in_place_noop)])
        assert torch.allclose(out, plain, atol=1e-5)
    assert not any(p._forward_hooks for p in interp.hook_points(model).values())  # all removed


@pytest.mark.parametrize("kind", MODELS)
def test_zeroing_one_heads_output_changes_only_what_depends_on_it(kind):
    model, inputs, prefix, layers, _ = MODELS[kind]()
    for layer in range(layers):
        target = f"{prefix}blocks.{layer}.attn.hook_z"

        def zero_head0(z, name):
            return z.index_fill(2, torch.tensor([0]), 0.0)

        with torch.no_grad():
            plain, cache = interp.run_with_cache(model, *inputs)
            out, ablated = interp.run_with_cache(model, *inputs, fwd_hooks=[(target, zero_head0)])
        assert not torch.allclose(out, plain)
        # everything computed before the head's output is untouched: the earlier blocks, the embedding,
        # and this layer's stream, queries, keys, values, scores and pattern
        upstream = [n for n in cache if n.startswith(("hook_embed", f"{prefix}hook_pos_embed"))
                    or any(n.startswith(f"{prefix}blocks.{earlier}.") for earlier in range(layer))
                    or n.startswith(tuple(f"{prefix}blocks.{layer}.{s}" for s in (
                        "hook_resid_pre", "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores",
                        "attn.hook_pattern")))]
        assert len(upstream) >= 3
        for name in upstream:
            assert torch.equal(ablated[name], cache[name]), name
        assert (ablated[target][:, :, 0] == 0).all()
        assert torch.equal(ablated[target][:, :, 1:], cache[target][:, :, 1:])  # the other heads (if any)
        assert not torch.equal(ablated[f"{prefix}blocks.{layer}.hook_attn_out"], cache[f"{prefix}blocks.{layer}.hook_attn_out"])


def test_a_head_ablated_by_a_hook_equals_the_head_ablated_in_the_weights():
    model, (tokens,), *_ = _gpt()
    d_head = model.config.d_model // model.config.n_heads
    with torch.no_grad():
        hooked = interp.run_with_hooks(model, tokens, fwd_hooks=[
            ("backbone.blocks.0.attn.hook_z", lambda z, n: z.index_fill(2, torch.tensor([1]), 0.0))])
        model.backbone.blocks[0].attn.proj.weight[:, d_head:2 * d_head] = 0.0  # head 1's columns of W_O
        assert torch.allclose(hooked, model(tokens), atol=1e-6)


def test_an_edited_pattern_is_used_downstream_and_the_fused_kernel_when_it_is_only_read():
    model, (tokens,), *_ = _gpt()
    for block in model.backbone.blocks:  # sharp patterns, far from the uniform one forced below
        torch.nn.init.normal_(block.attn.qkv.weight, std=1.0)
    t = tokens.shape[1]
    uniform = torch.ones(t, t).tril()
    uniform = uniform / uniform.sum(-1, keepdim=True)
    with torch.no_grad():
        plain = model(tokens)
        out = interp.run_with_hooks(model, tokens, fwd_hooks=[
            (lambda n: n.endswith("hook_pattern"), lambda p, n: uniform.expand_as(p))])
        _, cache = interp.run_with_cache(model, tokens, fwd_hooks=[
            (lambda n: n.endswith("hook_pattern"), lambda p, n: uniform.expand_as(p))])

        def in_place(p, n):
            p.copy_(uniform.expand_as(p))

        in_place_out = interp.run_with_hooks(model, tokens, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), in_place)])
        # the same model with the patterns forced by hand: every query averages its prefix's values
        h = model.embed(tokens) + model.backbone.pos[:t]
        for block in model.backbone.blocks:
            x = block.ln1(h)
            v = block.attn.qkv(x)[..., 2 * model.config.d_model:]
            h = h + block.attn.proj(uniform @ v)
            h = h + block.mlp(block.ln2(h))
        by_hand = model.readout(model.backbone.ln_f(h))
    assert not torch.allclose(out, plain, atol=1e-3)
    assert torch.allclose(out, by_hand, atol=1e-5) and torch.allclose(in_place_out, by_hand, atol=1e-5)
    assert torch.equal(cache["backbone.blocks.1.attn.hook_pattern"], uniform.expand(3, 2, t, t))


def test_the_fused_kernel_runs_unless_a_hook_changes_a_value(monkeypatch):
    from icmix.models import gpt

    model, (tokens,), *_ = _gpt()
    calls = []
    fused = gpt.F.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(gpt.F, "scaled_dot_product_attention", counted)
    patterns = lambda n: n.endswith(("hook_pattern", "hook_attn_scores"))  # noqa: E731
    with torch.no_grad():
        plain = model(tokens)
        assert len(calls) == 2
        calls.clear()
        _, cache = interp.run_with_cache(model, tokens, names=patterns)  # reads only
        assert len(calls) == 2 and len(cache) == 4

        def through_data(p, name):  # an edit no version counter sees
            p.data[..., 0] = 0.5
        calls.clear()
        edited = interp.run_with_hooks(model, tokens, fwd_hooks=[("backbone.blocks.0.attn.hook_pattern", through_data)])
        assert len(calls) == 1 and not torch.allclose(edited, plain)  # layer 0 explicit, layer 1 fused
    with torch.inference_mode():
        out, cache = interp.run_with_cache(model, tokens, names=patterns)
        assert torch.equal(out, plain) and len(cache) == 4


def test_a_predicate_that_picks_nothing_is_refused_and_the_cache_survives_later_edits():
    model, (tokens,), *_ = _gpt()
    with pytest.raises(ValueError, match="picks none of the"):
        interp.run_with_hooks(model, tokens, fwd_hooks=[(lambda n: n.endswith("hook_patern"), lambda t, n: t * 0)])

    def zero_in_place(t, name):
        t.zero_()

    with torch.no_grad():
        _, clean = interp.run_with_cache(model, tokens)
        _, cache = interp.run_with_cache(model, tokens, fwd_hooks=[("backbone.blocks.1.hook_resid_pre", zero_in_place)])
    # block 0's output is the very tensor block 1 receives: its cached copy keeps what flowed out of block 0
    assert torch.equal(cache["backbone.blocks.0.hook_resid_post"], clean["backbone.blocks.0.hook_resid_post"])
    assert (cache["backbone.blocks.1.hook_resid_pre"] == 0).all()


def test_hooks_are_removed_when_the_forward_raises():
    model, (tokens,), *_ = _gpt()

    def boom(t, name):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        interp.run_with_hooks(model, tokens, fwd_hooks=[("backbone.blocks.1.hook_resid_post", boom)])
    assert not any(p._forward_hooks for p in interp.hook_points(model).values())
    with pytest.raises(ValueError, match="did you mean 'backbone.blocks.0.attn.hook_pattern'"):
        interp.run_with_cache(model, tokens, names="blocks.0.attn.hook_pattern")


def test_the_regression_gpt_computes_whole_blocks_when_its_last_block_is_watched():
    model, (xs, ys), *_ = _regression()
    with torch.no_grad():
        plain = model(xs, ys)
        out, cache = interp.run_with_cache(model, xs, ys, names="backbone.blocks.1.hook_resid_post")
    assert torch.equal(out, plain)
    assert cache["backbone.blocks.1.hook_resid_post"].shape == (3, 12, 16)  # every token, not only the x tokens


def test_scores_read_hand_built_patterns():
    b, h, t = 2, 3, 8
    prev = torch.zeros(t, t)
    prev[0, 0] = 1
    prev[torch.arange(1, t), torch.arange(t - 1)] = 1  # head 0: the previous token
    period = 4
    induct = torch.eye(t)
    induct[torch.arange(period, t), torch.arange(period, t)] = 0
    induct[torch.arange(period, t), torch.arange(1, t - period + 1)] = 1  # head 1: the induction target
    uniform = torch.ones(t, t).tril() / torch.arange(1, t + 1)[:, None]  # head 2
    pattern = torch.stack([prev, induct, uniform]).expand(b, h, t, t)
    tokens = interp.repeated_sequences(10, period, b, torch.Generator().manual_seed(0))
    assert (tokens[:, :period].sort(-1).values.diff(dim=-1) > 0).all()  # distinct tokens in the first copy
    assert interp.previous_token_score(pattern).tolist() == pytest.approx(
        [1.0, 0.0, (1 / torch.arange(2, t + 1)).mean().item()])
    assert interp.induction_score(pattern, tokens, start=period).tolist() == pytest.approx(
        [0.0, 1.0, (1 / torch.arange(5, t + 1)).mean().item()])
    # a token seen twice before: both keys that followed it are targets
    tokens = torch.tensor([[1, 2, 1, 3, 1]])
    p = torch.zeros(1, 1, 5, 5)
    p[0, 0, 4, 1], p[0, 0, 4, 3], p[0, 0, 4, 4] = 0.25, 0.5, 0.25  # 2 and 3 followed the earlier 1s
    p[0, 0, 2, 1], p[0, 0, 2, 0] = 0.75, 0.25
    p[0, 0, [0, 1, 3], [0, 1, 3]] = 1.0
    assert interp.induction_score(p, tokens).item() == pytest.approx((0.75 + 0.75) / 2)  # queries 2 and 4
    itself = torch.eye(5)[None, None]  # a head on its own token, where the token repeats the previous one
    assert interp.induction_score(itself, torch.tensor([[1, 1, 1, 1, 1]])).item() == 0.0
    with pytest.raises(ValueError, match="start must be in"):
        interp.induction_score(itself, tokens, start=5)
    profile = interp.offset_profile(pattern, 3)
    assert profile[0].tolist() == pytest.approx([0, 1, 0, 0]) and profile[2].tolist() == pytest.approx(
        [(1 / torch.arange(4, t + 1)).mean().item()] * 4)
    assert interp.offset_mass(pattern, [1, 2]).tolist()[0] == pytest.approx(1.0)


def test_a_trained_previous_token_task_shows_in_the_scores():
    """A GPT trained for a few hundred steps to copy the previous token: layer 0 holds a head whose
    previous-token score is near 1, and patching that layer's output carries the whole metric."""
    torch.manual_seed(0)
    model = GPTTransformer(GPTConfig(vocab_size=6, n_layers=1, n_heads=2, d_model=32, max_length=10))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        tokens = torch.randint(6, (32, 10))
        loss = torch.nn.functional.cross_entropy(model(tokens)[:, 1:].reshape(-1, 6), tokens[:, :-1].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    scores = interp.head_scores(model, vocab_size=6, period=5, batch=32)
    assert scores["previous_token"].max() > 0.9
    g = torch.Generator().manual_seed(1)
    clean, corrupt = torch.randint(6, (16, 10), generator=g), torch.randint(6, (16, 10), generator=g)

    def metric(logits):  # log-probability of the clean run's previous tokens
        return logits[:, 1:].log_softmax(-1).gather(-1, clean[:, :-1, None]).mean()

    table = interp.activation_patching(model, (clean,), (corrupt,), metric).set_index("hook")
    assert table.loc["hook_out", "fraction"] == pytest.approx(1.0)
    assert table.loc["backbone.blocks.0.hook_resid_post", "fraction"] == pytest.approx(1.0, abs=1e-5)
    assert table.loc["backbone.hook_pos_embed", "effect"] == 0.0  # the positions are the same in both runs
    # at the last position only: the last logits carry it all, layer 0's attention output at the
    # last query as well (a one-layer model), the position embedding nothing
    last = interp.activation_patching(model, (clean,), (corrupt,), lambda o: o[:, -1].log_softmax(-1).gather(
        -1, clean[:, -2, None]).mean(), position=-1).set_index("hook")
    assert last.loc["hook_out", "fraction"] == pytest.approx(1.0)
    assert last.loc["backbone.blocks.0.hook_resid_post", "fraction"] == pytest.approx(1.0, abs=1e-5)
    assert last.loc["backbone.hook_pos_embed", "effect"] == 0.0
    # the regression GPT's predictions are N long, its stream 2N: one position would mean two tokens
    reg, (xs, ys), *_ = _regression()
    with pytest.raises(ValueError, match="position=-1 is ambiguous"):
        interp.activation_patching(reg, (xs, ys), (xs, -ys), lambda o: o.mean(), position=-1)


needs_nnsight = pytest.mark.skipif(importlib.util.find_spec("nnsight") is None,
                                   reason="the [interp] extra (nnsight) is not installed")


@needs_nnsight
@pytest.mark.parametrize("kind", ["gpt", "disentangled"])
def test_nnsight_reaches_every_hook_point_by_its_name(kind, tmp_path):
    """nnsight traces the same hook points: a saved pattern equals ``run_with_cache``'s, and a
    zero-ablation written in nnsight equals ``run_with_hooks``'."""
    script = tmp_path / "trace.py"  # nnsight reads a trace's body from its source file
    script.write_text(f"""
import torch
from nnsight import NNsight
from icmix import interp
import test_interp as t
model, inputs, prefix, layers, _ = t.MODELS[{kind!r}]()
with torch.no_grad():
    _, cache = interp.run_with_cache(model, *inputs)
    ablated = interp.run_with_hooks(model, *inputs, fwd_hooks=[
        (prefix + "blocks.1.attn.hook_z", lambda z, n: z.index_fill(2, torch.tensor([0]), 0.0))])
traced = NNsight(model)
with torch.no_grad(), traced.trace(*inputs):
    saved = traced.get(prefix + "blocks.0.attn.hook_pattern").output.save()
with torch.no_grad(), traced.trace(*inputs):
    traced.get(prefix + "blocks.1.attn.hook_z").output[:, :, 0] = 0
    out = traced.output.save()
assert torch.equal(saved, cache[prefix + "blocks.0.attn.hook_pattern"]), "pattern"
assert torch.equal(out, ablated), (out - ablated).abs().max()
print("ok")
""")
    import subprocess
    import sys
    from pathlib import Path

    env = {**__import__("os").environ, "PYTHONPATH": str(Path(__file__).parent)}
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-3000:]


needs_tl = pytest.mark.skipif(importlib.util.find_spec("transformer_lens") is None,
                              reason="the [tl] extra (TransformerLens) is not installed")


@needs_tl
def test_a_zoo_gpt_exported_to_transformer_lens_computes_the_same_logits_and_patterns():
    from icmix import zoo
    from icmix.interp.lens import to_transformer_lens

    model, cfg, task = zoo.load("long/gpt3-m3-T32-mse-seed0")
    bridge = to_transformer_lens(model)
    tokens, _ = task.sample(16, cfg.task.length, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours, cache = interp.run_with_cache(model, tokens)
        logits, tl_cache = bridge.run_with_cache(tokens)
        assert (logits - ours).abs().max() < 1e-4
        for layer in range(model.config.n_layers):
            for name in ("attn.hook_pattern", "attn.hook_q", "attn.hook_z", "hook_resid_post"):
                theirs, mine = tl_cache[f"blocks.{layer}.{name}"], cache[f"backbone.blocks.{layer}.{name}"]
                assert theirs.shape == mine.shape, (layer, name)
                if name == "attn.hook_pattern":  # weights in [0, 1]: absolutely
                    assert (theirs - mine).abs().max() < 1e-5, layer
                else:  # the stream grows to ~10: float32 rounding relative to its size
                    assert torch.allclose(theirs, mine, rtol=1e-5, atol=1e-5), (layer, name)

        def zero_head(z, hook=None):  # TransformerLens calls fn(tensor, hook=...), icmix fn(tensor, name)
            z = z.clone()
            z[:, :, 1] = 0
            return z

        tl_ablated = bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.2.attn.hook_z", zero_head)])
        ablated = interp.run_with_hooks(model, tokens, fwd_hooks=[("backbone.blocks.2.attn.hook_z", zero_head)])
    assert (tl_ablated - ablated).abs().max() < 1e-4 and (ablated - ours).abs().max() > 1e-3


@needs_tl
def test_transformer_lens_export_refuses_what_it_cannot_host():
    from icmix.interp.lens import to_transformer_lens

    with pytest.raises(ValueError, match="relative positions"):
        to_transformer_lens(_gpt("relative")[0])
    with pytest.raises(ValueError, match="cannot host a DisentangledTransformer"):
        to_transformer_lens(_disentangled()[0])


def test_zoo_load_gives_model_config_and_task_and_refuses_a_damaged_entry(tmp_path):
    import shutil

    from icmix import zoo
    from icmix.models.base import Pretrained
    from icmix.tasks.mtd import MTDTask

    name = "long/disentangled3-m3-T32-mse-seed0"
    model, cfg, task = zoo.load(name)
    entry = zoo.lookup(name)
    assert not model.training and isinstance(task, MTDTask) and cfg.task.order == task.order == 3
    again = DisentangledTransformer.from_pretrained(entry.path / "model")
    tokens = torch.randint(10, (2, 32))
    assert isinstance(model, Pretrained) and torch.equal(model(tokens), again(tokens))
    copy = tmp_path / "long" / entry.name
    shutil.copytree(entry.path, copy)
    weights = copy / "model" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="model/model.safetensors differs"):
        zoo.load(entry.name, root=tmp_path)
    with pytest.raises(ValueError, match="matches 2 zoo runs"):
        zoo.load("disentangled3-m3-T32-mse-seed0")  # the cpu and long tiers both hold one


def test_icmix_inspect_writes_maps_scores_and_the_construction_comparison(tmp_path, capsys):
    from icmix import agreement, zoo
    from icmix.cli import main
    from icmix.inspection import model_inputs
    from icmix.train.loop import build_objective

    out = tmp_path / "inspect"
    assert main(["inspect", "long/disentangled3-m3-T32-mse-seed0", "--out", str(out), "--batch", "16"]) == 0
    files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert files == ["attention-layer1.png", "attention-layer2.png", "attention-layer3.png", "construction.csv",
                     "construction.png", "head-scores.csv"]
    import pandas as pd

    scores, cons = pd.read_csv(out / "head-scores.csv"), pd.read_csv(out / "construction.csv")
    # the lag mass again, from the model's own return_attention and agreement.lag_offset_mass
    model, cfg, task = zoo.load("long/disentangled3-m3-T32-mse-seed0")
    batch = build_objective(task, cfg).eval_batch(16, torch.Generator().manual_seed(0))
    with torch.no_grad():
        _, patterns = model(*model_inputs(batch), return_attention=True)
    assert scores.loc[scores.layer == 1, "lag_mass"].item() == pytest.approx(agreement.lag_offset_mass(patterns[0], 3),
                                                                               abs=1e-5)
    assert list(cons.layer) == [1, 2, 3] and list(cons.block) == [0, 1, 2]
    assert cons.cosine.between(-1, 1).all() and (cons.beta > 0).all()
    assert "against the mirror-descent construction" in capsys.readouterr().out
    assert main(["inspect", "no-such-run", "--out", str(tmp_path / "never")]) == 2
    assert main(["inspect", "runs/typo", "--out", str(tmp_path / "never")]) == 2
    assert "runs/typo is not a run folder, and 'runs' is not a zoo tier" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_icmix_inspect_reads_a_regression_gpt_run_folder(tmp_path):
    from icmix import zoo
    from icmix.cli import main

    entry = next(e for n, e in sorted(zoo.entries().items()) if n.startswith("gpt-regression4") and e.preset == "cpu")
    out = tmp_path / "inspect"
    assert main(["inspect", str(entry.path), "--out", str(out), "--batch", "8"]) == 0
    import pandas as pd

    scores = pd.read_csv(out / "head-scores.csv")
    assert "induction" not in scores and "lag_mass" not in scores and not (out / "construction.csv").exists()
    assert len(scores) == 4 * 4 and scores.previous_token.between(0, 1).all()
