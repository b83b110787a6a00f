"""Sphinx configuration for the xpnn documentation: ``sphinx-build -W -b html docs docs/_build/html``."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent / "_ext"))

import xpnn  # noqa: E402

project = "xpnn"
author = "xpnn developers"
copyright = "xpnn developers"
version = release = xpnn.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
    "myst_parser",
    "xpnn_cli",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "runs", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]

# MyST: ``{note}``-style fences, anchors for headings down to level 3 so that pages can link to sections.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": False}
autodoc_typehints = "none"  # numpydoc's Parameters sections already give the types
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
numpydoc_validation_checks: set[str] = set()

html_theme = "furo"
html_title = f"xpnn {release}"
html_static_path = ["_static"]
html_css_files = ["xpnn.css"]

suppress_warnings = ["myst.header"]
