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


def filter(inputs, output, config, options=None, progress: bool = True, **settings):
    """Run the filter pipeline `config` over JSONL `inputs` (one file or several; plain, .gz or .zst) into one
    JSONL file `output` (.jsonl, .jsonl.gz or .jsonl.zst) and OUT.report.json beside it; return the FilterReport.
    As `kogitune filter` does (docs/filters.md).

        report = kogitune.filter("raw.jsonl", "clean.jsonl", {"filters": [{"name": "nfkc"}, {"name": "dedup"}]})

    `config`: a dict, a config file (JSON, or YAML with PyYAML) or a Pipeline. `settings` are FilterOptions fields
    (text_key, workers, skip_bad_lines, dry_run, examples, example_chars, max_document_bytes), applied over
    `options`; with dry_run=True, `output` may be None (only the summary, no files). Raises KogituneError
    subclasses (FilterError, BadInputError, DiskFullError, ...).
    """
    import dataclasses
    import os

    from .run import FilterOptions, filter_files

    options = dataclasses.replace(options or FilterOptions(), **settings)
    files = [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs
    return filter_files(files, output, config, options, progress)


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
