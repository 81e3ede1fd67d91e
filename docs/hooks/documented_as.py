"""Griffe extensions for the API pages.

DocumentedAs: a model method decorated ``@_documented_as(function)`` (``minicnn/models.py``)
gets its docstring at import time, from the loop function it calls. Griffe reads the source
without running it, so it would show no docstring; this gives the page the text
``help(model.fit)`` shows."""
from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

import griffe


class DocumentedAs(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name != "minicnn":
            return
        models = pkg["models"]
        runtime = importlib.import_module("minicnn.models")
        for cls in models.classes.values():
            for function in cls.functions.values():
                if any(str(d.value).startswith("_documented_as(") for d in function.decorators):
                    doc = inspect.getdoc(getattr(getattr(runtime, cls.name), function.name))
                    function.docstring = griffe.Docstring(doc or "", parent=function)


class MarkdownLiteralBlocks(griffe.Extension):
    """reST's ``text::`` before an indented block is Markdown's ``text:`` and an indented code
    block; without this the pages show the double colon."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and "::\n" in obj.docstring.value:
            obj.docstring.value = re.sub(r"(\S)::\n(\s*\n)", r"\1:\n\2", obj.docstring.value)
