"""The figure contract and its registry.

A figure is a ``Figure`` subclass instance:

- ``name``: what ``icmix reproduce NAME`` calls it (``mtd-fig3``);
- ``Config``: its frozen config dataclass; ``presets``: ``{"quick", "cpu", "paper"}`` -> ``Config``;
- ``demo``: the fields (evaluation sizes only) that the ``demo`` preset changes in the ``cpu``
  preset: the same training runs (taken from the model zoo by ``make demo``), evaluated smaller;
- ``runs(cfg) -> {key: TrainConfig}``: the training runs it needs (none by default), trained
  (or reused) under ``OUT/runs`` before it computes;
- ``compute(cfg, out, progress) -> Result``: every number (the main table, extra tables, and
  whatever else ``draw`` needs), the slow part;
- ``draw(result, cfg) -> matplotlib figure`` and ``report(result, cfg) -> Markdown``;
- ``claims``: the claims of ``icmix.experiments.claims`` that read its tables.

``run(cfg, out)`` is the same for every figure: compute, draw, then write ``NAME.csv``,
``NAME-<extra>.csv``, ``NAME.png``, ``NAME.json`` and ``NAME.md`` together.

The registry maps names to ``"module:attribute"`` and imports a figure's module (and
matplotlib) only when it is asked for, so ``import icmix.cli`` stays light.  Add your own
with ``register_figure(MyFigure())`` or ``register_figure("my-fig", "mypackage.figs:FIGURE")``.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import pandas as pd

PRESET_NAMES = ("quick", "cpu", "paper")
DEMO = "demo"  # the cpu preset's training runs, evaluated at smaller sizes (``Figure.demo``)


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

    def preset(self, name: str):
        """The config of preset ``name``: one of ``presets``, or ``demo`` (the ``cpu`` preset with
        the fields of ``demo`` replaced; a test checks that it trains the ``cpu`` preset's runs)."""
        if name == DEMO:
            return dataclasses.replace(self.presets["cpu"], **self.demo)
        if name not in self.presets:
            raise ValueError(f"preset must be one of {(*PRESET_NAMES, DEMO)}, got {name!r}")
        return self.presets[name]

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
        """The claims (``claims.CLAIMS`` entries) that read this figure's tables."""
        from icmix.experiments.claims import CLAIMS

        return [entry for entry in CLAIMS if self.name in entry[0].claim[3]]

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
        return cfg.runs()


class TableFigure(TrainedFigure):
    """A figure of trained models made of three functions: ``compute(cfg, out, progress) ->
    table``, ``draw(table, cfg)`` and ``report(table, cfg)``."""

    def __init__(self, name: str, config: type, presets: dict, compute, draw, report):
        self.name, self.Config, self.presets = name, config, presets
        self._compute, self._draw, self._report = compute, draw, report

    def compute(self, cfg, out: Path, progress: bool = True) -> Result:
        return Result(self._compute(cfg, out, progress))

    def draw(self, result: Result, cfg):
        return self._draw(result.table, cfg)

    def report(self, result: Result, cfg) -> str:
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
}


def figure_names() -> list[str]:
    """Every registered figure's name, in report order (no figure module is imported)."""
    return list(_FIGURES)


def get_figure(name: str) -> Figure:
    """The registered figure ``name``; ``ValueError`` listing the registered ones otherwise."""
    try:
        entry = _FIGURES[name]
    except KeyError:
        raise ValueError(f"unknown figure {name!r}; known: {', '.join(_FIGURES)}") from None
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = _FIGURES[name] = _check(getattr(importlib.import_module(module), attr), name)
    return entry


def register_figure(figure: Figure | str, target: str | None = None) -> None:
    """Register a figure: an instance (under its ``name``) or a name and ``"module:attribute"``."""
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
    missing = [p for p in PRESET_NAMES if p not in figure.presets]
    if missing or not all(isinstance(c, figure.Config) for c in figure.presets.values()):
        raise ValueError(f"figure {name!r} must have presets {PRESET_NAMES}, each a {figure.Config.__name__}")
    return figure
