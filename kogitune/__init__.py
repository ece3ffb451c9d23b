"""Kogitune: tokenize text once into content-addressed data tensors, share them, train from a recipe.

    from kogitune import DatasetRecipe, filter, store, verify

    filter("raw.jsonl", "clean.jsonl", "clean.yaml")             # clean and deduplicate text (docs/filters.md)
    report = store("clean.jsonl", "gpt2", "gpt2-f04f/clean")     # tokenize into a data tensor; report.dataset_id
    assert not verify(report.path)                               # every piece hashed: [] when intact
    dataset = DatasetRecipe([str(report.path), "kg1-..."]).get_train_dataset(block_size=512)

The public names are listed in `__all__`; the errors are in kogitune.errors (all derive from KogituneError).
Importing this package is cheap: each public name is imported when first used (PEP 562), and torch, transformers,
trio and libp2p only where they are needed (a torch Dataset, a network fetch).
"""

from __future__ import annotations

from importlib import import_module

from .errors import KogituneError

__version__ = "0.1.0"

_PUBLIC = {
    "DatasetRecipe": "recipe",
    "DataTensor": "tensor",
    "Problem": "tensor",
    "verify": "tensor",
    "DataCollection": "collection",
    "store": "write.job",
    "store_part": "write.parts",
    "merge": "write.parts",
    "run_parts": "write.executors",
    "StoreOptions": "write.job",
    "StoreReport": "write.job",
    "filter": "filters",
    "FilterOptions": "filters.run",
    "FilterReport": "filters.report",
    "Pipeline": "filters",
    "load_tokenizer": "tokenizer",
}
"""Public name -> the module (under kogitune) that defines it."""

__all__ = ["KogituneError", "__version__", *_PUBLIC]


def __getattr__(name: str):
    """Import a public name from its module on first use (and keep it here, so this runs once per name)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'kogitune' has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
