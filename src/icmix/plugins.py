"""Plugins: modules outside icmix that add task families, figures and claims.

An installed package names its modules in entry-point groups (``icmix.families``,
``icmix.figures``; see ``icmix.families`` and ``icmix.experiments.figure``).  A module that is
not installed is loaded for one command with ``icmix --plugin package.module`` (as
``pytest -p`` loads one): ``load`` imports it, from the current folder if it is not
importable otherwise, and it registers what it defines (``register_family``,
``register_figure``) as it is imported.

``load`` also records the module in the ``ICMIX_PLUGINS`` environment variable, so the worker
processes a command starts (training runs, figures in parallel, ``submitit`` jobs) load it too:
the registries call ``load_from_environment`` on first use.
"""

from __future__ import annotations

import importlib
import os
import sys

ENVIRONMENT = "ICMIX_PLUGINS"  # comma-separated module names, loaded by every icmix process

HOW_TO_REGISTER = (
    "register one in its package's pyproject.toml ([project.entry-points.\"icmix.{group}\"] NAME = "
    "\"package.module{attribute}\", then pip install -e .), or load a module for one command with "
    "`icmix --plugin package.module ...`")


def how_to_register(group: str) -> str:
    """The sentence that says how to register a plugin of ``group`` (``families``, ``figures``)."""
    return HOW_TO_REGISTER.format(group=group, attribute=":FIGURE" if group == "figures" else "")


def load(module: str) -> None:
    """Import the plugin ``module`` (``package.module``), from the current folder if need be,
    and record it for worker processes.  ``ValueError`` if it cannot be imported."""
    if not module or not all(part.isidentifier() for part in module.split(".")):
        raise ValueError(f"--plugin takes a module name (package.module), got {module!r}")
    try:
        importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name != module.split(".")[0] or os.getcwd() in sys.path:
            raise ValueError(f"plugin {module!r} could not be imported: {err}") from None
        sys.path.insert(0, os.getcwd())  # as `python -m` does: a module in the current folder
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as again:
            raise ValueError(f"plugin {module!r} could not be imported: {again} (not installed, and not in "
                             f"the current folder {os.getcwd()})") from None
    loaded = [m for m in os.environ.get(ENVIRONMENT, "").split(",") if m]
    if module not in loaded:
        os.environ[ENVIRONMENT] = ",".join([*loaded, module])


def load_from_environment() -> None:
    """Import the plugins ``ICMIX_PLUGINS`` names (a worker of a command run with ``--plugin``)."""
    for module in [m for m in os.environ.get(ENVIRONMENT, "").split(",") if m]:
        if module not in sys.modules:
            load(module)
