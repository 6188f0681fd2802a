"""One parser for every ``key=value`` a user types: ``--set`` on a training config (dotted keys,
``optim.lr=3e-4``), ``--set`` on a figure's config (``icmix reproduce``, ``FIGURE.key=value``
for one figure of ``reproduce all``), ``--grid key=v1,v2`` (``icmix sweep``) and ``--slurm``.

A value is a Python literal, else a YAML scalar, else the string itself (``parse_value``);
``typed`` checks it against a dataclass field's type without changing what was typed.
"""

from __future__ import annotations

import ast
import dataclasses
import typing

import yaml


def split(item: str, what: str = "override", form: str = "key=value") -> tuple[str, str]:
    """``key=value`` as ``(key, raw value)``; ``ValueError`` naming ``what`` otherwise."""
    if not isinstance(item, str) or "=" not in item:
        raise ValueError(f"{what} {item!r} is not of the form {form}")
    key, raw = item.split("=", 1)
    return key.strip(), raw


def grid_axis(item: str) -> list[str]:
    """``--grid key=v1,v2,...`` as the overrides ``[key=v1, key=v2, ...]``."""
    key, values = split(item, "--grid", "key=v1,v2,...")
    axis = [f"{key}={v.strip()}" for v in values.split(",") if v.strip()]
    if not axis:
        raise ValueError(f"--grid {key} has no values")
    return axis


_NOT_A_LITERAL = object()


def _literal(raw: str):
    """``raw`` as a Python literal, or ``_NOT_A_LITERAL``."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return _NOT_A_LITERAL


def parse_value(raw: str):
    """A command-line value: a Python literal, a YAML scalar, or the string itself."""
    value = _literal(raw)
    if value is not _NOT_A_LITERAL:
        return value
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_dotted_overrides(data: dict, overrides: list[str]) -> dict:
    """``data`` (a nested mapping: a training config) with dotted ``key=value`` overrides applied."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        key, raw = split(item)
        parts = key.split(".")
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"cannot set {key}: {part} is not a section")
        node[parts[-1]] = parse_value(raw)
    return data


def names(text: str) -> tuple[str, ...]:
    """A comma list of names, bracketed or not: ``a,b``, ``[a, b]``, ``(a, b)``."""
    text = text.strip()
    if text[:1] + text[-1:] in ("[]", "()"):
        text = text[1:-1]
    return tuple(v.strip() for v in text.split(",") if v.strip())


def typed(name: str, value, hint):
    """``value`` as the type ``hint`` (int to float, list to tuple); ``ValueError`` naming ``name`` otherwise."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (origin is not None and type(None) in args):
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, str, bool) and type(value) is hint:
        return value
    if origin is tuple and args and args[0] is str and isinstance(value, str):  # --set tracking=wandb,tensorboard
        value = list(names(value))
    if origin is tuple and isinstance(value, (list, tuple)):
        inner = args[0] if args else float
        return tuple(typed(name, v, inner) for v in value)
    name_ = getattr(hint, "__name__", str(hint))
    raise ValueError(f"{name} must be {name_}, got {value!r}")


def apply_overrides(cfg, overrides: list[str] | None):
    """The frozen dataclass ``cfg`` (a figure's config) with ``key=value`` overrides applied.

    ``ValueError`` for an unknown key, a malformed override or a value not of the field's
    declared type (``lengths=abc``), naming the key, before the config's own checks compare it
    with numbers.  The value is not converted, so a config (and its cache key) is exactly what
    was typed; a list becomes a tuple for a tuple field, one value a 1-tuple."""
    if not overrides:
        return cfg
    fields = {f.name: f for f in dataclasses.fields(cfg)}
    hints = typing.get_type_hints(type(cfg))
    changes = {}
    for item in overrides:
        key, raw = split(item)
        if key not in fields:
            raise ValueError(f"unknown config key {key!r}; known keys: {', '.join(sorted(fields))}")
        hint, args = hints.get(key), typing.get_args(hints.get(key))
        value = parse_value(raw)
        if str in (hint, *args):  # a name stays as typed: `yes`, `on`, `null` are not YAML's bool and null here
            literal = _literal(raw)
            value = literal if isinstance(literal, str) or (literal is None and type(None) in args) else raw.strip()
        if typing.get_origin(hint) is tuple and str in args and isinstance(value, str):
            value = names(value)
        if isinstance(getattr(cfg, key), tuple) and not isinstance(value, tuple):
            value = tuple(value) if isinstance(value, list) else (value,)
        plain = (int, float, str, bool)
        inner = [a for a in args if a is not Ellipsis and a is not type(None)]
        if hint in plain or (inner and all(a in plain for a in inner)):
            typed(key, value, hint)
        changes[key] = value
    return dataclasses.replace(cfg, **changes)
