"""Lazy re-exports for a package's ``__init__``: a name is imported from its submodule on first use, so
``from imanim_core.data import render_clip`` loads only what it needs."""
from __future__ import annotations

import importlib
import sys


def lazy_exports(package: str, exports: dict) -> tuple:
    """``exports`` = {submodule: (name, ...)} -> (``__getattr__``, ``__dir__``, ``__all__``) for ``package``::

        __getattr__, __dir__, __all__ = lazy_exports(__name__, {"heatmaps": ("render_heatmaps",)})
    """
    where = {name: mod for mod, names in exports.items() for name in names}

    def __getattr__(name: str):
        mod = where.get(name)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{mod}"), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__():
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__, sorted(where)


__all__ = ["lazy_exports"]
