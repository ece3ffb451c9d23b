"""Text filters: clean, measure and drop documents before they are tokenized (docs/filters.md).

Importing this package registers every built-in filter, so that configs can name them. The modules are plain
Python (re, unicodedata, zlib): importing them is cheap.
"""

from importlib import import_module
from importlib.util import find_spec

from .base import REGISTRY, Filter, FilterError, FilterResult, Pipeline, build_filter, parse_filter_spec, register

BUILTIN_MODULES = ("normalize", "length", "charclass", "repetition", "quality", "language", "pii", "wikipedia", "dedup")


def _import_builtin_modules() -> None:
    """Import each built-in filter module that exists, so that its filters register themselves."""
    for module in BUILTIN_MODULES:
        if find_spec(f"{__name__}.{module}") is not None:
            import_module(f"{__name__}.{module}")


_import_builtin_modules()

__all__ = [
    "BUILTIN_MODULES",
    "REGISTRY",
    "Filter",
    "FilterError",
    "FilterResult",
    "Pipeline",
    "build_filter",
    "parse_filter_spec",
    "register",
]
