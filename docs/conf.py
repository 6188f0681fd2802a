"""Sphinx configuration of icmix's documentation site (``make docs``; CI builds it with warnings as errors).

Sphinx, the furo theme and MyST-NB: the generator numpy, SciPy and JAX document themselves with,
maintained and released through 2025-26 (mkdocs, the alternative, has had no release since 2024).
Pages are MyST Markdown; tutorials are jupytext percent-format ``.py`` files that MyST-NB executes
at every build, so a tutorial that stops working fails the build.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

project = "icmix"
author = "the icmix developers"
copyright = "2026, the icmix developers"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.mathjax",
    "sphinx.ext.napoleon",  # the docstrings' Args: / Returns: / Raises: sections
    "sphinx.ext.viewcode",
    "sphinxarg.ext",
    "configschema",
]

# MyST: $…$ and $$…$$ maths, ::: fences, heading anchors for links within the site.
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# Tutorials: jupytext percent scripts, executed at build time, each in its own temporary folder.
nb_custom_formats = {".py": ["jupytext.reads", {"fmt": "py:percent"}]}
nb_execution_mode = "force"
nb_execution_timeout = 900
nb_execution_raise_on_error = True
nb_execution_in_temp = True
nb_merge_streams = True

source_suffix = {".md": "myst-nb", ".py": "myst-nb"}
exclude_patterns = ["_build", "_ext", "Thumbs.db", ".DS_Store", "**/.ipynb_checkpoints", "conf.py"]

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_inherit_docstrings = True
autodoc_mock_imports = ["wandb", "submitit", "nnsight", "transformer_lens"]
autosummary_generate = False

html_theme = "furo"
html_title = "icmix"
html_static_path = ["_static"]
html_theme_options = {"navigation_with_keys": True}

napoleon_google_docstring = True
napoleon_numpy_docstring = False
