"""Plugins: modules outside icmix that add task families, figures and claims.

An installed package names its modules in entry-point groups (``icmix.families``,
``icmix.figures``; see ``icmix.families`` and ``icmix.experiments.figure``).  A module that is
not installed is loaded for one command with ``icmix --plugin package.module`` (as
``pytest -p`` loads one): ``load`` imports it, from the current folder if it is not
importable otherwise, and it registers what it defines (``register_family``,
``register_figure``) as it is imported.

``load`` also records the module (and the folder it was found in, if it was not importable
otherwise) in the ``ICMIX_PLUGINS`` environment variable, so the worker processes a command
starts (training runs, figures in parallel, ``submitit`` jobs, wherever they start) load it too:
the registries call ``load_from_environment`` on their first lookup.
"""

from __future__ import annotations

import importlib
import os
import sys

ENVIRONMENT = "ICMIX_PLUGINS"  # comma-separated `module` or `module=FOLDER`, loaded by every icmix process

HOW_TO_REGISTER = (
    "register one in its package's pyproject.toml ([project.entry-points.\"icmix.{group}\"] NAME = "
    "\"package.module{attribute}\", then pip install -e .), or load a module for one command with "
    "`icmix --plugin package.module ...`")


def how_to_register(group: str) -> str:
    """The sentence that says how to register a plugin of ``group`` (``families``, ``figures``)."""
    return HOW_TO_REGISTER.format(group=group, attribute=":FIGURE" if group == "figures" else "")


def load_entry_point(entry_point, what: str):
    """Load an installed package's entry point (``importlib.metadata.EntryPoint``); a plugin's
    error becomes a ``ValueError`` that names the plugin (``what``: ``task family``, ``figure``)."""
    try:
        return entry_point.load()
    except Exception as err:  # a plugin's bug, named, rather than a traceback from deep inside
        raise ValueError(f"the {what} plugin {entry_point.name!r} ({entry_point.value}) could not be loaded: "
                         f"{type(err).__name__}: {err}") from err


def load(module: str, folder: str | None = None) -> None:
    """Import the plugin ``module`` (``package.module``), from the current folder (or ``folder``)
    if it is not importable otherwise, and record it for worker processes, with the folder it
    came from.  ``ValueError`` if it cannot be imported."""
    if not module or not all(part.isidentifier() for part in module.split(".")):
        raise ValueError(f"--plugin takes a module name (package.module), got {module!r}")
    folder = folder or os.getcwd()
    try:
        importlib.import_module(module)
        found = None
    except ModuleNotFoundError as err:
        if err.name != module.split(".")[0]:
            raise ValueError(f"plugin {module!r} could not be imported: {err}") from None
        if folder not in sys.path:
            sys.path.insert(0, folder)  # as `python -m` does: a module in the current folder
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as again:
            raise ValueError(f"plugin {module!r} could not be imported: {again} (not installed, and not in "
                             f"{folder})") from None
        found = folder
    loaded = dict(_entries())
    if module not in loaded:
        loaded[module] = found
        os.environ[ENVIRONMENT] = ",".join(m if f is None else f"{m}={f}" for m, f in loaded.items())


def _entries() -> list[tuple[str, str | None]]:
    """``(module, folder or None)`` of each plugin ``ICMIX_PLUGINS`` names (``module`` or ``module=FOLDER``)."""
    entries = []
    for item in os.environ.get(ENVIRONMENT, "").split(","):
        if item:
            module, _, folder = item.partition("=")
            entries.append((module, folder or None))
    return entries


def load_from_environment() -> None:
    """Import the plugins ``ICMIX_PLUGINS`` names (in a worker of a command run with
    ``--plugin``), each from the folder it was found in."""
    for module, folder in _entries():
        if module not in sys.modules:
            load(module, folder)
