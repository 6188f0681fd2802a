"""Read and edit a model's activations at its named hook points (``icmix.models.hooks``).

    >>> out, cache = run_with_cache(model, tokens, names=lambda n: n.endswith("hook_pattern"))
    >>> cache.stack("attn.hook_pattern").shape          # (L, B, H, T, T)
    >>> zero = lambda z, name: z.index_fill(2, torch.tensor([0]), 0.0)   # head 0 of (B, T, H, d)
    >>> run_with_hooks(model, tokens, fwd_hooks=[("backbone.blocks.1.attn.hook_z", zero)])

A hook function is ``fn(tensor, name)``; it returns ``None`` to leave the activation as it is,
or a tensor that replaces it.  Every hook is removed when the call returns, an exception
included.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from icmix.models.hooks import HookPoint

HookFn = Callable[[Tensor, str], "Tensor | None"]
_LAYER = re.compile(r"(?:^|\.)blocks\.(\d+)\.(.+)$")  # the match starts at the prefix's end


def hook_points(model: nn.Module) -> dict[str, HookPoint]:
    """``{name: hook point}`` of ``model``, in registration order (each name is its module path)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, HookPoint)}


def hook_names(model: nn.Module) -> list[str]:
    """The names of ``model``'s hook points; ``model.get_submodule(name)`` returns each."""
    return list(hook_points(model))


def select(model: nn.Module, which) -> list[str]:
    """The hook names ``which`` picks: ``None`` (all), a name, a predicate ``name -> bool``, or an
    iterable of names and predicates.  An unknown name is a ``ValueError`` naming the closest, and
    so is a predicate that picks nothing."""
    points = hook_names(model)
    if which is None:
        return points
    if isinstance(which, str) or callable(which):
        which = [which]
    chosen: list[str] = []
    for w in which:
        if callable(w):
            picked = [n for n in points if w(n)]
            if not picked:  # a typo in a predicate must not pass for a hook that did nothing
                raise ValueError(f"{getattr(w, '__name__', 'a predicate')} picks none of the {len(points)} hook points "
                                 f"of {type(model).__name__} ({', '.join(points[:4])}, ...)")
            chosen += [n for n in picked if n not in chosen]
        elif w in points:
            chosen += [] if w in chosen else [w]
        else:
            close = difflib.get_close_matches(str(w), points, n=3)
            raise ValueError(f"{type(model).__name__} has no hook point {w!r}"
                             + (f"; did you mean {' or '.join(map(repr, close))}?" if close else
                                f"; it has {len(points)}: {', '.join(points[:6])}, ..."))
    return chosen


class ActivationCache(Mapping):
    """What ``run_with_cache`` recorded: a mapping from hook name to (detached) tensor, with
    helpers to gather one activation across layers or split it by head."""

    def __init__(self, store: dict[str, Tensor]):
        self._store = store

    def __getitem__(self, name: str) -> Tensor:
        try:
            return self._store[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self._store), n=3)
            raise KeyError(f"{name!r} was not cached" + (f"; did you mean {' or '.join(map(repr, close))}?"
                                                         if close else "")) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations: {', '.join(list(self)[:4])}{', ...' if len(self) > 4 else ''})"

    def layers(self, suffix: str) -> list[str]:
        """The cached names ``[prefix.]blocks.{l}.<suffix>``, by layer ``l``.  ``ValueError`` if they
        come from more than one stack of blocks (two prefixes): select one with ``names``."""
        found: dict[str, dict[int, str]] = {}
        for name in self._store:
            m = _LAYER.search(name)
            if m and m.group(2) == suffix:
                found.setdefault(name[:m.start()], {})[int(m.group(1))] = name
        if not found:
            raise KeyError(f"nothing cached ends in blocks.<l>.{suffix}")
        if len(found) > 1:
            raise ValueError(f"blocks.<l>.{suffix} is cached under {len(found)} prefixes "
                             f"({', '.join(repr(p) for p in found)}): cache one of them")
        (by_layer,) = found.values()
        return [by_layer[layer] for layer in sorted(by_layer)]

    def stack(self, suffix: str) -> Tensor:
        """One activation of every layer, stacked on a new first dimension: ``stack("attn.hook_pattern")``
        is ``(L, B, H, T, T)``.  The layers' shapes must agree: where they do not (a disentangled
        stream grows, layers with different head counts), ``ValueError``; read ``layers(suffix)``."""
        tensors = [self._store[n] for n in self.layers(suffix)]
        if len({t.shape for t in tensors}) > 1:
            raise ValueError(f"the layers' {suffix} differ in shape ({', '.join(str(tuple(t.shape)) for t in tensors)}):"
                             f" read them one by one, cache.layers({suffix!r})")
        return torch.stack(tensors)

    def heads(self, name: str) -> Tensor:
        """Activation ``name`` with its head dimension first: ``(H, B, T, d_head)`` for the
        ``hook_q``/``_k``/``_v``/``_z`` of shape ``(B, T, H, d_head)``, ``(H, B, T, T)`` for scores and
        patterns."""
        t = self[name]
        leaf = name.rsplit(".", 1)[-1]
        if leaf in ("hook_attn_scores", "hook_pattern"):
            return t.transpose(0, 1)
        if leaf in ("hook_q", "hook_k", "hook_v", "hook_z"):
            return t.permute(2, 0, 1, 3)
        raise ValueError(f"{name!r} has no head dimension")


def _as_hook(fn: HookFn, name: str):
    def hook(module, args, output):
        return fn(output, name)
    return hook


@contextmanager
def hooks(model: nn.Module, fwd_hooks: Iterable[tuple]) -> Iterator[nn.Module]:
    """Within the block, each ``(selector, fn)`` of ``fwd_hooks`` is attached to the hook points
    its selector picks (see ``select``); all are removed on leaving, an exception included."""
    points = hook_points(model)
    handles = []
    try:
        for which, fn in fwd_hooks:
            for name in select(model, which):
                handles.append(points[name].register_forward_hook(_as_hook(fn, name)))
        yield model
    finally:
        for handle in handles:
            handle.remove()


def run_with_hooks(model: nn.Module, *inputs, fwd_hooks: Iterable[tuple] = (), **kwargs):
    """``model(*inputs, **kwargs)`` with ``fwd_hooks`` attached (see ``hooks``): the output, in
    which every replacement a hook returned has been used downstream."""
    with hooks(model, fwd_hooks):
        return model(*inputs, **kwargs)


def run_with_cache(model: nn.Module, *inputs, names=None, fwd_hooks: Iterable[tuple] = (),
                   **kwargs) -> tuple[object, ActivationCache]:
    """``(output, cache)``: ``model(*inputs, **kwargs)`` and the activations at the hook points
    ``names`` picks (``None``: all), detached, as they flowed on (after any edit of
    ``fwd_hooks``, which run first).  With ``fwd_hooks`` each is also copied, since a later hook
    may edit in place a tensor an earlier hook point passed on (``blocks.{l}.hook_resid_post`` is
    ``blocks.{l+1}.hook_resid_pre``); without, the cache holds the activations themselves."""
    store: dict[str, Tensor] = {}
    fwd_hooks = list(fwd_hooks)
    copy = bool(fwd_hooks)

    def record(tensor: Tensor, name: str) -> None:
        store[name] = tensor.detach().clone() if copy else tensor.detach()

    chosen = select(model, names)
    with hooks(model, [*fwd_hooks, *((n, record) for n in chosen)]):
        out = model(*inputs, **kwargs)
    order = {n: i for i, n in enumerate(hook_names(model))}
    return out, ActivationCache(dict(sorted(store.items(), key=lambda kv: order[kv[0]])))
