"""Sphinx configuration of the InterScale documentation site.

This file is staged by ``python -m reproduce.docs`` next to the README and the executed
notebooks; it is not meant to be pointed at ``reproduce/docs/`` directly.
"""

from __future__ import annotations

import re
from importlib.metadata import version as _dist_version

project = "InterScale"
author = "InterScale developers"
copyright = "InterScale developers"
# The installed distribution's version: no import of interscale (and torch) unless autodoc needs it.
release = _dist_version("interscale")
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# The notebooks are the executed output of `python -m reproduce`; the site shows them as they
# are, so a docs build never trains a model and never depends on the kernel.
nb_execution_mode = "off"
nb_merge_streams = True
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "_readme.md", "**.ipynb_checkpoints"]
templates_path = ["_templates"]

autosummary_generate = True
autosummary_ignore_module_all = False
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"show-inheritance": True}
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False

html_theme = "furo"
html_title = f"InterScale {release}"
html_static_path = ["_static"]
# Marks <body> with how many images loaded; the headless-browser check reads it.
html_js_files = ["images-loaded.js"]
html_show_sourcelink = False
# Attributes sections become fields, so a NamedTuple's fields are not described twice.
napoleon_use_ivar = True

# Docstrings write absolute values as |x|, which reST reads as a substitution reference.
_ABS_VALUE = re.compile(r"(?<![\w`\\|])\|(\w+)\|(?![\w`|])")


def _escape_abs_values(app, what, name, obj, options, lines):
    lines[:] = [_ABS_VALUE.sub(r"\\|\1\\|", line) for line in lines]


def setup(app):
    """Register the docstring hook."""
    app.connect("autodoc-process-docstring", _escape_abs_values)
