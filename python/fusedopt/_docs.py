"""Docstrings of the optimizer classes of every family: each class shows how it is used,
and its constructor points to the class documentation (help() would otherwise show
object's "Initialize self. See help(type(self))")."""
from __future__ import annotations

import textwrap


def complete(cls: type, usage: str) -> None:
    """Adds `usage` (``{name}`` replaced by the class's name) to the docstring of `cls`
    unless it has a usage section, and a docstring to its own ``__init__`` if it has none."""
    name = cls.__name__
    if usage and cls.__doc__ and "Usage" not in cls.__doc__:
        example = textwrap.indent(usage.format(name=name).strip("\n"), "    ")
        cls.__doc__ = cls.__doc__.rstrip() + "\n\n" + example + "\n"
    init = cls.__dict__.get("__init__")
    if init is not None and not init.__doc__:
        init.__doc__ = f"The arguments are explained in the class documentation, help({name})."
