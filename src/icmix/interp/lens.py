"""Export an icmix ``GPTTransformer`` to TransformerLens 4.x (the ``[tl]`` extra), offline.

TransformerLens 4 replaced ``HookedTransformer`` with ``TransformerBridge``.  Its native
architecture (``TransformerLensNative``: a pre-LayerNorm GPT with separate Q/K/V/O projections,
learned absolute positions and a GELU MLP) is the icmix GPT's, so the export is a renaming of
weights: the fused ``qkv`` projection is split into ``q``, ``k`` and ``v``.  The recipe:

1. a ``TransformerBridgeConfig`` with the GPT's sizes, ``act_fn="gelu"`` (exact GELU, as
   ``nn.GELU``), ``eps=1e-5`` (``nn.LayerNorm``'s), ``architecture="TransformerLensNative"``;
2. the native module built from it, the readout given its bias (the native head has none),
   and the weights loaded into it *before* bridging (a bridged model's ``load_state_dict``
   expects the bridge's own keys);
3. ``build_bridge_from_module``, which wraps it under TransformerLens's hook names
   (``blocks.{l}.attn.hook_pattern`` and so on).  Nothing touches the Hugging Face hub.

What 4.x cannot host, and why:

- a GPT with ``positions="relative"``: its per-head, per-offset score bias has no native
  counterpart (native positions are ``standard`` or ``rotary``);
- ``RegressionGPT``: a linear read-in of real vectors and a readout at every other token; the
  native model embeds token ids and reads out every position;
- ``DisentangledTransformer`` and the constructions: their stream is concatenated, not added,
  and a head's query-key product is one matrix with no separate value or output projection.

For those, ``icmix.interp`` (``run_with_cache``, ``run_with_hooks``) and nnsight work directly.
"""

from __future__ import annotations

import torch
from torch import nn

from icmix.models.gpt import GPTTransformer


def native_state_dict(model: GPTTransformer) -> dict[str, torch.Tensor]:
    """The GPT's weights under the TransformerLens-native module's keys (``tok_embed``, ``pos``,
    ``layers.{l}.attn.q``/``k``/``v``/``o``, ``layers.{l}.mlp.fc_in``/``fc_out``, ``ln_out``,
    ``head``)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    c = model.config.d_model
    out = {"tok_embed.weight": sd["embed.weight"], "pos.weight": sd["backbone.pos"],
           "ln_out.weight": sd["backbone.ln_f.weight"], "ln_out.bias": sd["backbone.ln_f.bias"],
           "head.weight": sd["readout.weight"], "head.bias": sd["readout.bias"]}
    for layer in range(model.config.n_layers):
        src, dst = f"backbone.blocks.{layer}.", f"layers.{layer}."
        w, b = sd[src + "attn.qkv.weight"], sd[src + "attn.qkv.bias"]
        for i, name in enumerate("qkv"):
            out[dst + f"attn.{name}.weight"] = w[i * c:(i + 1) * c]
            out[dst + f"attn.{name}.bias"] = b[i * c:(i + 1) * c]
        out[dst + "attn.o.weight"], out[dst + "attn.o.bias"] = sd[src + "attn.proj.weight"], sd[src + "attn.proj.bias"]
        for ln in ("ln1", "ln2"):
            out[dst + f"{ln}.weight"], out[dst + f"{ln}.bias"] = sd[src + f"{ln}.weight"], sd[src + f"{ln}.bias"]
        out[dst + "mlp.fc_in.weight"], out[dst + "mlp.fc_in.bias"] = sd[src + "mlp.0.weight"], sd[src + "mlp.0.bias"]
        out[dst + "mlp.fc_out.weight"], out[dst + "mlp.fc_out.bias"] = sd[src + "mlp.2.weight"], sd[src + "mlp.2.bias"]
    return out


def to_transformer_lens(model: GPTTransformer):
    """A TransformerLens ``TransformerBridge`` computing what ``model`` computes (logits
    ``(B, T, Q)`` from tokens ``(B, T)``), in eval mode, with TransformerLens's own
    ``run_with_cache`` and ``run_with_hooks``.  Needs ``pip install 'icmix[tl]'``.

    Raises:
        ValueError: the model is not a ``GPTTransformer`` with learned positions and no
            dropout (see the module docstring for what TransformerLens cannot host).
        ImportError: TransformerLens 4 is not installed.
    """
    if not isinstance(model, GPTTransformer):
        raise ValueError(f"TransformerLens 4 cannot host a {type(model).__name__} (see icmix.interp.lens): "
                         "use icmix.interp or nnsight on it directly")
    cfg = model.config
    if cfg.positions != "learned":
        raise ValueError("TransformerLens 4 cannot host relative positions (a per-head score bias per offset)")
    if cfg.attn_only:
        raise ValueError("the export covers GPTs with MLPs; an attention-only GPT is not exported yet")
    if cfg.dropout:
        raise ValueError("export a model without dropout (TransformerLens's native GPT has none)")
    try:
        from transformer_lens.config import TransformerBridgeConfig
        from transformer_lens.model_bridge.sources import build_bridge_from_module
        from transformer_lens.model_bridge.sources.native import NativeModel
    except ImportError as err:
        raise ImportError("to_transformer_lens needs TransformerLens 4: pip install 'icmix[tl]'") from err

    tl_cfg = TransformerBridgeConfig(
        d_model=cfg.d_model, n_layers=cfg.n_layers, n_heads=cfg.n_heads, d_head=cfg.d_model // cfg.n_heads,
        d_mlp=cfg.mlp_ratio * cfg.d_model, n_ctx=cfg.max_length, d_vocab=cfg.vocab_size, act_fn="gelu",
        normalization_type="LN", eps=1e-5, positional_embedding_type="standard", architecture="TransformerLensNative",
        init_weights=False)
    dtype = next(model.parameters()).dtype
    native = NativeModel(tl_cfg)
    native.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=True)  # icmix's readout has a bias
    native = native.to(dtype)
    native.load_state_dict(native_state_dict(model), strict=True)  # a missing or extra key raises
    bridge = build_bridge_from_module(native, architecture="TransformerLensNative", tl_config=tl_cfg, dtype=dtype,
                                      model_name="icmix-" + type(model).__name__)
    return bridge.eval()
