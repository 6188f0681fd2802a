"""The figure contract and its registry.

A figure is a ``Figure`` subclass instance:

- ``name``: what ``icmix reproduce NAME`` calls it (``mtd-fig3``);
- ``Config``: its frozen config dataclass; ``presets``: some of ``quick``, ``cpu``, ``paper`` ->
  ``Config`` (a figure defines the presets it has; ``reproduce all`` skips a figure that lacks
  the preset asked for);
- ``demo``: the fields (evaluation sizes only) that the ``demo`` preset changes in the ``cpu``
  preset: the same training runs (taken from the model zoo by ``make demo``), evaluated smaller;
- ``runs(cfg) -> {key: TrainConfig}``: the training runs it needs (none by default), trained
  (or reused) under ``OUT/runs`` before it computes;
- ``compute(cfg, out, progress) -> Result``: every number (the main table, extra tables, and
  whatever else ``draw`` needs), the slow part;
- ``draw(result, cfg) -> matplotlib figure`` and ``report(result, cfg) -> Markdown``;
- ``claims``: the claims it declares with its ``claim`` decorator (``icmix.experiments.claims``).

``run(cfg, out)`` is the same for every figure: compute, draw, then write ``NAME.csv``,
``NAME-<extra>.csv``, ``NAME.png``, ``NAME.json`` and ``NAME.md`` together.

The registry maps names to ``"module:attribute"`` and imports a figure's module (and
matplotlib) only when it is asked for, so ``import icmix.cli`` stays light.  Add your own
from another package: name it in the ``icmix.figures`` entry-point group of its
``pyproject.toml`` (``[project.entry-points."icmix.figures"] my-fig = "mypackage.figs:FIGURE"``),
or call ``register_figure(MyFigure())`` in a module loaded with ``icmix --plugin mypackage.figs``.
A figure declares its claims with its ``claim`` decorator.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import pandas as pd

PRESET_NAMES = ("quick", "cpu", "long", "paper")
DEMO = "demo"  # the cpu (or, where the zoo holds them, long: report.demo_tier) runs, evaluated smaller


@dataclass
class Result:
    """What ``compute`` returns: the main ``table`` (``NAME.csv``), ``extra`` tables
    (``NAME-<key>.csv``) and ``data`` that only ``draw`` uses (attention maps, matrices)."""

    table: pd.DataFrame
    extra: dict[str, pd.DataFrame] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)


class Figure(ABC):
    """One figure (see the module docstring for the contract)."""

    name: ClassVar[str]
    Config: ClassVar[type]
    presets: ClassVar[dict[str, Any]]
    demo: ClassVar[dict[str, Any]] = {}
    zoo: ClassVar[bool] = True  # whether the model zoo ships this figure's runs (a tier's runs)

    def preset(self, name: str):
        """The config of preset ``name``: one of ``presets``, or ``demo`` (the ``cpu`` preset with
        the fields of ``demo`` replaced; a test checks that it trains the ``cpu`` preset's runs).
        ``ValueError`` for a preset the figure does not have."""
        if name not in (*PRESET_NAMES, DEMO):
            raise ValueError(f"preset must be one of {(*PRESET_NAMES, DEMO)}, got {name!r}")
        if not self.has_preset(name):
            raise ValueError(f"figure {self.name!r} has no {name!r} preset (it has: {', '.join(self.presets)})")
        if name == DEMO:
            return dataclasses.replace(self.presets["cpu" if "cpu" in self.presets else "long"], **self.demo)
        return self.presets[name]

    def has_preset(self, name: str) -> bool:
        """Whether the figure has preset ``name`` (``demo`` comes with ``cpu``)."""
        return (name == DEMO and ("cpu" in self.presets or "long" in self.presets)) or name in self.presets

    def runs(self, cfg) -> dict:
        """``{key: TrainConfig}``: the training runs this figure needs (none by default)."""
        return {}

    @abstractmethod
    def compute(self, cfg, out: Path, progress: bool = True) -> Result:
        """Every number of the figure (training its ``runs`` first, under ``out/runs``)."""

    @abstractmethod
    def draw(self, result: Result, cfg):
        """The matplotlib figure of a ``Result``."""

    def report(self, result: Result, cfg) -> str:
        """A Markdown summary (``NAME.md``, printed)."""
        return ""

    @property
    def claims(self) -> list:
        """The claims this figure declares (``claim``), in order: ``ClaimSpec`` entries."""
        return self.__dict__.setdefault("_claims", [])

    def claim(self, paper: str, text: str, test: str, needs: tuple[str, ...] = (), trained=None,
              bounds: tuple[float, float] = (-math.inf, math.inf), **extra):
        """Declare a claim this figure measures: a decorator of ``fn(c, out, cfg, **extra) -> c``,
        which fills in the ``icmix.experiments.claims.Claim`` ``c`` from the tables under ``out``
        (``cfg``: this figure's config).  ``needs``: other figures whose tables it reads;
        ``trained(tc, cfg, **extra)``: which of this figure's training runs it rests on;
        ``bounds``: the values its measure can take (``ClaimSpec.bounds``);
        ``extra``: keywords for ``fn`` and the statements (one function declared twice with
        different ``extra`` gives two claims).  See ``icmix.experiments.claims``."""
        from icmix.experiments.claims import ClaimSpec

        def declare(fn):
            self.claims.append(ClaimSpec(fn, paper, text, test, self.name, (self.name, *needs), trained, extra,
                                         tuple(bounds)))
            return fn

        return declare

    def run(self, cfg, out: Path, progress: bool = True) -> dict[str, Path]:
        """Compute, draw and save; the written files by kind (``csv``, ``png``, ...)."""
        from icmix.experiments.common import save_outputs

        start = time.time()
        out = Path(out)
        result = self.compute(cfg, out, progress)
        fig = self.draw(result, cfg)
        return save_outputs(out, self.name, cfg, result.table, fig, time.time() - start, extra=result.extra or None,
                            summary=self.report(result, cfg) or None)


class TrainedFigure(Figure):
    """A figure of trained models: its config's ``runs()`` names the training runs it needs."""

    def runs(self, cfg) -> dict:
        """The runs the config's own ``runs()`` names."""
        return cfg.runs()


class TableFigure(TrainedFigure):
    """A figure of trained models made of three functions: ``compute(cfg, out, progress) ->
    table``, ``draw(table, cfg)`` and ``report(table, cfg)``."""

    def __init__(self, name: str, config: type, presets: dict, compute, draw, report):
        self.name, self.Config, self.presets = name, config, presets
        self._compute, self._draw, self._report = compute, draw, report

    def compute(self, cfg, out: Path, progress: bool = True) -> Result:
        """The table of the ``compute`` function, as a ``Result`` without extra tables."""
        return Result(self._compute(cfg, out, progress))

    def draw(self, result: Result, cfg):
        """The ``draw`` function on the result's table."""
        return self._draw(result.table, cfg)

    def report(self, result: Result, cfg) -> str:
        """The ``report`` function on the result's table."""
        return self._report(result.table, cfg)


# name -> "module:attribute" (loaded on first use) or a Figure instance
_FIGURES: dict[str, str | Figure] = {
    "mtd-construction": "icmix.experiments.constructions:mtd_construction",
    "mtd-fig3": "icmix.experiments.mtd_fig3:FIGURE",
    "mtd-fig4": "icmix.experiments.mtd_fig4:FIGURE",
    "mtd-fig5": "icmix.experiments.mtd_fig5:FIGURE",
    "mtd-fig6": "icmix.experiments.mtd_orders:fig6",
    "mtd-fig7": "icmix.experiments.mtd_fig7:FIGURE",
    "mtd-fig8": "icmix.experiments.mtd_orders:fig8",
    "mtdg": "icmix.experiments.mtdg:FIGURE",
    "text": "icmix.experiments.text:FIGURE",
    "mlr-construction": "icmix.experiments.constructions:mlr_construction",
    "mlr-fig2": "icmix.experiments.mlr_fig2:FIGURE",
    "mlr-fig3": "icmix.experiments.mlr_fig3:FIGURE",
    "mlr-fig4": "icmix.experiments.mlr_fig4:FIGURE",
    **{f"mlr-fig{i}": f"icmix.experiments.mlr_shifts:fig{i}" for i in range(5, 10)},
    "claims-scaling": "icmix.experiments.scaling:FIGURE",  # last: it reads the others' claims at each budget
}


ENTRY_POINTS = "icmix.figures"  # installed packages' figures: NAME = "package.module:FIGURE"
_plugins_loaded = False


def _load_plugins() -> None:
    """Register the figures installed packages name in the ``icmix.figures`` entry-point group
    (lazily, as ``module:attribute``: nothing is imported until the figure is asked for) and
    import the ``--plugin`` modules of this command (``icmix.plugins``)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    from icmix.plugins import load_entry_point, load_from_environment

    try:
        for plugin in entry_points(group=ENTRY_POINTS):
            if plugin.attr:
                _FIGURES.setdefault(plugin.name, plugin.value)
            else:  # a module that registers its figures when imported
                load_entry_point(plugin, "figure")
        load_from_environment()
    except BaseException:
        _plugins_loaded = False  # the next lookup raises the same error
        raise


def figure_names() -> list[str]:
    """Every registered figure's name, in report order (the built-in figures, then plugins';
    no figure module is imported)."""
    _load_plugins()
    return list(_FIGURES)


def figures_with(preset: str) -> list[str]:
    """The registered figures that have ``preset``, in report order.  A plugin's figure that does
    not load is left out with a warning, so that the others still run."""
    import warnings

    names = []
    for name in figure_names():
        try:
            figure = get_figure(name)
        except ValueError as err:
            warnings.warn(f"{err}; left out of this run", stacklevel=2)
            continue
        if figure.has_preset(preset):
            names.append(name)
    return names


def get_figure(name: str) -> Figure:
    """The registered figure ``name``; ``ValueError`` listing the registered ones (and saying
    how to register a figure) otherwise."""
    _load_plugins()
    try:
        entry = _FIGURES[name]
    except (KeyError, TypeError):
        from icmix.plugins import how_to_register

        raise ValueError(f"unknown figure {name!r}; registered: {', '.join(_FIGURES)}. "
                         f"A figure from another package: {how_to_register('figures')}") from None
    if isinstance(entry, str):
        module, attr = entry.split(":")
        try:
            loaded = getattr(importlib.import_module(module), attr)
        except Exception as err:  # a plugin's bug, named, rather than a traceback from deep inside
            if module.startswith("icmix."):
                raise
            raise ValueError(f"figure {name!r} ({entry}) could not be loaded: {type(err).__name__}: {err}") from err
        entry = _FIGURES[name] = _check(loaded, name)
    return entry


def register_figure(figure: Figure | str, target: str | None = None) -> None:
    """Register a figure: an instance (under its ``name``) or a name and ``"module:attribute"``
    (imported when the figure is first asked for).  A plugin module calls it as it is imported;
    an installed package can instead name the figure in its ``icmix.figures`` entry points."""
    if isinstance(figure, str):
        if target is None or ":" not in target:
            raise ValueError("register_figure(name, 'module:attribute') needs the figure's module and attribute")
        _FIGURES[figure] = target
    else:
        _FIGURES[figure.name] = _check(figure, figure.name)


def _check(figure, name: str) -> Figure:
    if not isinstance(figure, Figure):
        raise ValueError(f"figure {name!r} is not a Figure instance: {figure!r}")
    if figure.name != name:
        raise ValueError(f"figure registered as {name!r} calls itself {figure.name!r}")
    presets = getattr(figure, "presets", None)
    if (not isinstance(presets, dict) or not presets or not set(presets) <= set(PRESET_NAMES)
            or not all(isinstance(c, figure.Config) for c in presets.values())):
        raise ValueError(f"figure {name!r} must have one or more of the presets {PRESET_NAMES}, each a "
                         f"{figure.Config.__name__}; it has {sorted(presets) if isinstance(presets, dict) else presets!r}")
    return figure
