"""Experiments: one ``Figure`` per paper figure (``icmix.experiments.figure``): a frozen
``Config`` with some of the ``quick``/``cpu``/``paper`` presets, ``compute`` (every number),
``draw``, and the claims it declares (``Figure.claim``, ``icmix.experiments.claims``).
``get_figure(name)`` returns the one ``icmix reproduce NAME`` runs; figure modules (and
matplotlib) load only when a figure is asked for."""

from icmix.experiments.figure import Figure, Result, TrainedFigure, figure_names, get_figure, register_figure

__all__ = ["Figure", "Result", "TrainedFigure", "figure_names", "get_figure", "register_figure"]
