"""Named hook points: identity modules placed where a model's activations are worth reading or
editing, named after TransformerLens's hook points wherever the concept exists.

A hook point's name is its module path (``model.get_submodule(name)`` returns it), so
``register_forward_hook``, nnsight and ``icmix.interp`` all reach it by the same name.  A hook
point has no parameters: adding one changes no state-dict key.  With nothing attached it costs
one module call (``benchmarks/bench_train_step.py`` prints the overhead).

The names every model uses (``L`` layers; a model wrapping a backbone prefixes them, e.g.
``backbone.blocks.0.attn.hook_pattern``):

========================================  ===========================================================
``hook_embed``                            the input embedding, ``(B, T, C)``
``hook_pos_embed``                        learned absolute positions, ``(B, T, C)`` (GPT, ``learned``)
``blocks.{l}.hook_resid_pre``             the stream entering block ``l``
``blocks.{l}.attn.hook_q`` / ``_k`` /     queries, keys, values, ``(B, T, H, d_head)`` (models with
``_v``                                    separate Q/K/V)
``blocks.{l}.attn.hook_attn_scores``      scaled, biased and causally masked (``-inf``) scores,
                                          ``(B, H, T_query, T_key)``
``blocks.{l}.attn.hook_pattern``          the attention weights, rows summing to 1
``blocks.{l}.attn.hook_z``                each head's output before it is merged, ``(B, T, H, d_head)``
``blocks.{l}.hook_attn_out``              what the attention layer writes to the stream
``blocks.{l}.hook_resid_mid``             the stream after the attention layer
``blocks.{l}.hook_mlp_out``               what the MLP writes (models with an MLP)
``blocks.{l}.hook_resid_post``            the stream leaving block ``l``
``hook_resid_final``                      the stream the readout reads (GPTs: after the final
                                          LayerNorm, TransformerLens's ``ln_final.hook_normalized``)
``hook_out``                              the model's output (icmix's own name: TransformerLens has
                                          no hook on the logits)
========================================  ===========================================================
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules import module as _module


class HookPoint(nn.Module):
    """An identity module marking a named activation.  Attach ``register_forward_hook``s to it
    (``icmix.interp`` does), or let nnsight trace it; ``forward`` returns its input."""

    def forward(self, x: Tensor) -> Tensor:
        """``x``, unchanged."""
        return x

    @property
    def watched(self) -> bool:
        """Whether anything listens here: a forward hook or pre-hook on this module or every module
        (``register_module_forward_hook``), or a replaced ``forward`` (nnsight's tracer installs
        one).  A model computes what only a watched hook point needs (an explicit attention
        pattern) only when it is watched."""
        return bool(self._forward_hooks or self._forward_pre_hooks or "forward" in self.__dict__
                    or _module._global_forward_hooks or _module._global_forward_pre_hooks)


def any_watched(module: nn.Module) -> bool:
    """Whether any hook point inside ``module`` (itself included) is watched."""
    return any(m.watched for m in module.modules() if isinstance(m, HookPoint))


def call_and_compare(hook: HookPoint, x: Tensor) -> tuple[Tensor, bool]:
    """``(hook(x), edited)``: the hook point's output and whether it differs from ``x`` in any
    value, however it was changed (a replacement, an in-place edit, a write through ``.data``).
    The copy this needs is made only when the hook point is watched."""
    if not hook.watched:
        return x, False
    before = x.clone()
    after = hook(x)
    return after, not torch.equal(after, before)


class AttentionHooks(nn.Module):
    """The hook points of one attention layer, for models whose attention module cannot hold
    them under TransformerLens's path (``blocks.{l}.attn``) without changing state-dict keys:
    the model calls them from its own forward.  ``names`` picks which exist (a disentangled layer
    has no separate queries, keys or values)."""

    def __init__(self, names: tuple[str, ...] = ("hook_attn_scores", "hook_pattern", "hook_z")):
        super().__init__()
        for name in names:
            self.add_module(name, HookPoint())


class BlockHooks(nn.Module):
    """The stream hook points of one block (``hook_resid_pre``, ``hook_attn_out``,
    ``hook_resid_mid``, ``hook_mlp_out`` if ``mlp``, ``hook_resid_post``) and its ``attn``
    group (``AttentionHooks`` with ``attn_names``).  Parameter-free: a model whose blocks are not
    modules of their own keeps its state-dict keys and still names its activations by block."""

    def __init__(self, mlp: bool, attn_names: tuple[str, ...] = ("hook_attn_scores", "hook_pattern", "hook_z")):
        super().__init__()
        self.hook_resid_pre = HookPoint()
        self.attn = AttentionHooks(attn_names)
        self.hook_attn_out = HookPoint()
        self.hook_resid_mid = HookPoint()
        if mlp:
            self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

