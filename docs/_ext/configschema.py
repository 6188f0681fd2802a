"""``.. config-schema::`` renders every configuration field with its type, default and comment.

Three sources, all read from the code at build time so the page cannot drift from it:
``TrainConfig`` and its sections (``optim``, one table per model ``kind`` and per task ``kind`` of
the registered families), and every registered figure's ``Config`` with the presets it has.
A field's description is the comment on its line in the source, or the comment lines above it, or
its entry in the class docstring.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import typing

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective


def _comments(cls) -> dict[str, str]:
    """``{field: comment}`` from the class's source: the comment on a field's line (the class body's own
    annotated assignments, not a method's), else the comment lines right above it."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    lines = source.splitlines()
    comments = {tok.start[0]: tok.string.lstrip("# ") for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                if tok.type == tokenize.COMMENT}
    found = {}
    for node in ast.parse(source).body[0].body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        row, above = node.end_lineno, []
        for up in range(node.lineno - 1, 0, -1):  # the comment block directly above the field
            if not lines[up - 1].strip().startswith("#"):
                break
            above.insert(0, comments[up])
        found[node.target.id] = comments.get(row, "") or " ".join(above)
    return found


def _documented(cls) -> dict[str, str]:
    """``{field: text}`` from the class docstring: an ``Args:`` entry (``name: text`` and its
    continuation lines), or a prose segment (between semicolons or sentences) naming the field in
    double backticks: ``name``: text gives the text after the colon, otherwise the whole segment."""
    fields = {f.name for f in dataclasses.fields(cls)}
    doc = inspect.getdoc(cls) or ""
    found, current = {}, None
    for line in doc.splitlines():  # Args: sections
        m = re.match(r"^\s+([a-z_][a-z0-9_]*):\s+(.+)$", line)
        if m and m[1] in fields:
            current = m[1]
            found[current] = m[2].strip()
        elif current and line.startswith("        ") and line.strip():
            found[current] += " " + line.strip()
        else:
            current = None
    prose = " ".join(line.strip() for line in doc.split("Args:")[0].splitlines())
    for segment in re.split(r";\s+|\.\s+", prose):
        names = [n for n in re.findall(r"``([a-z_][a-z0-9_]*)``", segment) if n in fields]
        head, colon, tail = segment.partition(":")
        for name in names:
            if name in found:
                continue
            text = tail.strip() if colon and f"``{name}``" in head else segment.strip()
            found[name] = text.replace("``", "`").rstrip(".")
    return found


def _type(tp) -> str:
    """A field's annotation as written: ``tuple[int, ...]``, ``int | None``, ``str``."""
    text = tp if isinstance(tp, str) else inspect.formatannotation(tp)
    return str(text).replace("typing.", "")


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
        return type(value).__name__ + "()" if dataclasses.is_dataclass(value) else repr(value)
    return "(required)"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(cls, skip=()) -> list[str]:
    """A Markdown table of the dataclass ``cls``'s public fields."""
    hints = typing.get_type_hints(cls) if not isinstance(cls, str) else {}
    notes = {}
    for klass in reversed(cls.__mro__):  # a base class's meanings first, the class's own over them
        if dataclasses.is_dataclass(klass):
            notes.update(_documented(klass))
            notes.update({k: v for k, v in _comments(klass).items() if v})
    rows = ["| field | type | default | meaning |", "|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        if f.name.startswith("_") or f.name in skip:
            continue
        rows.append(f"| `{f.name}` | `{_cell(_type(hints.get(f.name, f.type)))}` | `{_cell(_default(f))}` | "
                    f"{_cell(notes.get(f.name, ''))} |")
    return rows


def schema() -> list[str]:
    """The whole page body, in MyST Markdown."""
    from icmix.experiments.figure import figure_names, get_figure
    from icmix.families import families
    from icmix.models import MODELS
    from icmix.train.config import OptimConfig, TrainConfig

    lines = ["## Training configs (`icmix train CONFIG.yaml`)", "",
             "The top level of a training config. `task:` and `model:` are the sections below, chosen by their `kind`.",
             "", *table(TrainConfig), "", "### `optim:`", "", *table(OptimConfig), ""]
    lines += ["### `model:` by kind", ""]
    for kind, (config, _) in MODELS.items():
        lines += [f"#### `kind: {kind}` (`{config.__module__}.{config.__name__}`)", "",
                  *table(config, skip=("vocab_size", "max_length")), ""]
    lines += ["### `task:` by kind", "",
              "Each registered task family names its spec (`icmix.families`); a plugin's family adds its own.", ""]
    for kind, family in sorted(families().items()):
        spec = family.spec
        lines += [f"#### `kind: {kind}` (`{spec.__module__}.{spec.__name__}`)", "", *table(spec), ""]
    lines += ["## Figure configs (`icmix reproduce NAME --set FIELD=VALUE`)", "",
              "Each figure's `Config`, with the defaults of the dataclass; a preset (`--preset`) replaces some of them.",
              ""]
    for name in figure_names():
        fig = get_figure(name)
        presets = ", ".join(f"`{p}`" for p in fig.presets)
        lines += [f"### `{name}`", "", f"Presets: {presets}.", "", *table(fig.Config), ""]
    return lines


class ConfigSchema(SphinxDirective):
    """The directive: parses the generated Markdown as if it were written in the page."""

    has_content = False

    def run(self):
        container = nodes.section()
        container.document = self.state.document
        text = StringList(schema(), source="config-schema")
        self.state.nested_parse(text, self.content_offset, container)
        return container.children


def setup(app):
    """Register the directive."""
    app.add_directive("config-schema", ConfigSchema)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
