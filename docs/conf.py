"""Sphinx configuration of fusedopt's documentation site.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (after
installing the package, whose docstrings the API reference, api.md, reads).

Some pages and modules arrive from other branches (docs/optim.md,
fusedopt/torch.py, ...). The site builds with or without them: the index's toctree
lines naming a missing topic page are dropped, and pages no toctree names are
listed under "More topics"; text that links a topic page sits in an ``{only}``
block that is dropped when the page is missing.
"""
from __future__ import annotations

import inspect
import re
from pathlib import Path

import fusedopt

DOCS = Path(__file__).resolve().parent
PACKAGE = DOCS.parent / "python" / "fusedopt"

project = "fusedopt"
author = "fusedopt contributors"
copyright = "fusedopt contributors"
release = fusedopt.__version__
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "README.md"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
html_theme = "furo"
html_title = f"fusedopt {release}"
html_static_path = ["_static"]
html_css_files = ["fusedopt.css"]

# The optional modules import torch or mpi4py; the API reference must build
# without either installed.
autodoc_mock_imports = ["torch", "mpi4py"]
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = True
# "Attributes:" sections as :ivar: fields: annotated class attributes are documented by autodoc already.
napoleon_use_ivar = True

# Topic pages written on other branches; a tag per page that exists, for
# ``{only} have_<name>`` blocks that link it.
TOPIC_PAGES = {
    "optim": "optim",
    "distributed": "distributed",
    "torch": "torch",
    "convergence": "semantics-convergence",
    "rates": "semantics-rates",
}
MISSING_PAGES = {page for page in TOPIC_PAGES.values() if not (DOCS / f"{page}.md").exists()}
for _tag, _page in TOPIC_PAGES.items():
    if _page not in MISSING_PAGES:
        tags.add(f"have_{_tag}")  # noqa: F821 (Sphinx provides `tags` to conf.py)

# Sphinx resolves links and toctree entries even inside an excluded ``{only}``
# block, so the text about a missing page is removed before parsing: every
# ``:::{only} have_<tag>`` block of a missing page, and the index's toctree
# line naming it.
_ONLY_BLOCK = re.compile(r"^:::\{only\} have_(?P<tag>\w+)\n.*?^:::\n", re.S | re.M)


def unlisted_pages(index_text: str) -> list[str]:
    """Pages of docs/ that no toctree line of the index names (a topic page added
    on another branch under a name not known here): listed under "More topics"."""
    named = {line.strip() for line in index_text.split("\n")}
    return sorted(p.stem for p in DOCS.glob("*.md") if p.stem not in named and p.stem not in ("index", "README"))


def drop_missing(app, docname, source):
    text = source[0]
    text = _ONLY_BLOCK.sub(lambda m: "" if TOPIC_PAGES.get(m["tag"]) in MISSING_PAGES else m[0], text)
    if docname == "index":
        text = "\n".join(line for line in text.split("\n") if line.strip() not in MISSING_PAGES)
        extra = unlisted_pages(text)
        if extra:
            text += "\n```{toctree}\n:caption: More topics\n:maxdepth: 1\n:hidden:\n\n" + "\n".join(extra) + "\n```\n"
    source[0] = text


# autodoc reads a signature from a docstring's first line when it looks like
# one (pybind11 writes native functions' signatures so). A class docstring that
# opens with the name it mirrors ("torch.optim.SGD (momentum, ...) on fusedopt's
# kernels") would be taken for the class's signature and lose that line: classes
# get their signature from the class itself, and their first line back.
def class_signature(app, what, name, obj, options, signature, return_annotation):
    if what != "class":
        return None
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    plain = [q.replace(annotation=inspect.Parameter.empty) for q in sig.parameters.values()]
    return str(sig.replace(parameters=plain, return_annotation=inspect.Signature.empty)), ""


def class_docstring(app, what, name, obj, options, lines):
    first = (inspect.getdoc(obj) or "").split("\n", 1)[0] if what == "class" else ""
    if first and (not lines or lines[0] != first):
        lines[:0] = [first]


def setup(app):
    app.connect("source-read", drop_missing)
    app.connect("autodoc-process-signature", class_signature)
    app.connect("autodoc-process-docstring", class_docstring)
