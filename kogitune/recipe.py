"""Dataset recipes: name data tensors, get a PyTorch dataset for training.

    from kogitune import DatasetRecipe
    recipe = DatasetRecipe([
        "./gpt2-f04f/wiki2023_tiny",                                  # a local tensor directory
        "https://mirror.example/gpt2-f04f/kjv?tokens=10M",            # a web mirror; 10M tokens per epoch
        ["https://a.example/x/cc", "https://b.example/x/cc"],         # one dataset, two mirrors
        {"sources": ["./gpt2-f04f/code"], "weight": 0.5},             # half of its data per epoch
        {"id": "kg1-...", "mirrors": ["https://cdn.example/x/cc"]},   # by ID: from peers and a web seed at once
        ["kg1-...", "https://a.example/x/cc"],                        # the same, as a list
    ])
    DatasetRecipe(["kgr1-..."])     # a published lock's recipe: its datasets, by ID, in its order (kogitune.lock)
    train_dataset = recipe.get_train_dataset(block_size=512)

Budget suffixes: `?tokens=N` (N with K, M, B or T: 1B = 10^9 tokens; more than the data repeats it, less cuts it)
and `?weight=W` (a multiple of the data's own size).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from kogitune.protocol.ids import is_dataset_id
from kogitune.protocol.lock import is_recipe_id
from kogitune.protocol.names import is_dataset_name

from .collection import DataCollection, open_local
from .errors import RecipeError, TokenizerError
from .tensor import DataTensor

_BUDGET_KEYS = {"tokens", "weight"}
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}


@dataclass(frozen=True)
class RecipeEntry:
    """One dataset of a recipe: where it can be had, and how much of it an epoch takes. `sources` holds at most one
    dataset ID (first) and web mirror URLs, or one local path."""

    sources: tuple[str, ...]
    tokens: int | None = None
    weight: float | None = None

    @property
    def name(self) -> str:
        return self.sources[0]

    @property
    def dataset_id(self) -> str | None:
        """The dataset ID the entry names (its mirrors then serve that dataset), or None."""
        first = self.sources[0]
        return first if is_dataset_id(first) and not Path(first).exists() else None

    @property
    def dataset_name(self) -> str | None:
        """The name (`<peer ID>/name`, kogitune.protocol.names) the entry names (resolved to an ID when opened), or
        None."""
        first = self.sources[0]
        return first if is_dataset_name(first) and not Path(first).exists() else None

    @property
    def mirrors(self) -> tuple[str, ...]:
        return tuple(s for s in self.sources if _is_url(s))


def _is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


def parse_token_count(text: str) -> int:
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMBGT]?)\s*", str(text).upper())
    if not match:
        raise RecipeError(f"tokens={text!r} is not a token count such as 500M or 1.5B")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def parse_entry(entry) -> RecipeEntry:
    """A recipe entry from a string (path, URL, dataset ID, with optional ?tokens=/?weight=), a list of sources of
    one dataset (mirror URLs, with at most one dataset ID among them), or a dict {"sources": [...]} or
    {"id": "kg1-...", "mirrors": [...]} with optional "tokens" and "weight"."""
    if isinstance(entry, dict):
        named = {"sources"} if "sources" in entry else {"id", "mirrors"}
        unknown = set(entry) - _BUDGET_KEYS - named
        if unknown or not named & set(entry) or ("mirrors" in entry and "id" not in entry):
            raise RecipeError(
                "a recipe dict needs 'sources', or 'id' (and optional 'mirrors'), and may have 'tokens' or 'weight'; "
                f"got {sorted(entry)}"
            )
        if "sources" in entry:
            sources = [entry["sources"]] if isinstance(entry["sources"], str) else list(entry["sources"])
        else:
            mirrors = entry.get("mirrors") or []
            sources = [entry["id"]] + ([mirrors] if isinstance(mirrors, str) else list(mirrors))
        options = {k: str(v) for k, v in entry.items() if k in _BUDGET_KEYS and v is not None}
    elif isinstance(entry, (list, tuple)):
        sources, options = list(entry), {}
    elif isinstance(entry, (str, Path)):
        sources, options = [str(entry)], {}
    else:
        raise RecipeError(f"a recipe entry is a path, URL, dataset ID, list or dict, not {type(entry).__name__}")
    cleaned = []
    for source in sources:
        source, found = _split_budget(str(source))
        for key, value in found:
            if key in options:
                raise RecipeError(f"{source}: {key} is given twice ({options[key]!r} and {value!r})")
            options[key] = value
        cleaned.append(source)
    if not cleaned:
        raise RecipeError("a recipe entry has no sources")
    cleaned = _dataset_id_first(cleaned)
    tokens = parse_token_count(options["tokens"]) if "tokens" in options else None
    if tokens == 0:
        raise RecipeError(f"{cleaned[0]}: tokens={options['tokens']} leaves nothing to train on; drop the entry")
    try:
        weight = float(options["weight"]) if "weight" in options else None
    except ValueError:
        raise RecipeError(f"weight={options['weight']!r} is not a number") from None
    if weight is not None and not 0 < weight < 1e9:
        raise RecipeError(
            f"{cleaned[0]}: weight={options['weight']} must be a positive number (1 is the data as it "
            "is, 0.5 half of it, 2 twice)"
        )
    if tokens is not None and weight is not None:
        raise RecipeError(f"{cleaned[0]}: give tokens or weight, not both")
    return RecipeEntry(tuple(cleaned), tokens, weight)


def _dataset_id_first(sources: list[str]) -> list[str]:
    """The sources of one entry with its dataset ID first; refused: two IDs, and an ID or URLs beside local paths."""
    ids = [s for s in sources if (is_dataset_id(s) or is_dataset_name(s)) and not Path(s).exists()]
    urls = [s for s in sources if _is_url(s)]
    if len(ids) > 1:
        raise RecipeError(
            f"{ids[0]}: one entry names two dataset IDs or names ({ids[1]}); list each dataset as its own entry"
        )
    if len(ids) + len(urls) not in (0, len(sources)):
        raise RecipeError(f"{sources[0]}: one entry mixes web mirrors or a dataset ID and local paths; list them apart")
    return ids + [s for s in sources if s not in ids]


def _split_budget(source: str) -> tuple[str, list[tuple[str, str]]]:
    """The source without its budget options, and those options as (key, value) pairs."""
    base, sep, query = source.partition("?")
    if not sep:
        return source, []
    pairs = parse_qsl(query, keep_blank_values=True)
    budget = [(k, v) for k, v in pairs if k in _BUDGET_KEYS]
    rest = [(k, v) for k, v in pairs if k not in _BUDGET_KEYS]
    return (f"{base}?{urlencode(rest)}" if rest else base), budget


class DatasetRecipe:
    """A list of datasets to train on: local tensor paths, web mirrors, with optional budgets."""

    def __init__(
        self,
        url_list,
        block_size: int | None = None,
        *,
        seed: int = 0,
        shuffle: bool = True,
        store=None,
        trusted_publishers=None,
    ) -> None:
        entries = [url_list] if isinstance(url_list, (str, Path)) else list(url_list)
        if not entries:
            raise RecipeError("a recipe needs at least one dataset (a path or URL)")
        self.store = store
        self.entries = [parse_entry(e) for e in self._without_recipe_ids(entries)]
        self.block_size = block_size
        self.seed = seed
        self.shuffle = shuffle
        self.trusted_publishers = trusted_publishers

    @classmethod
    def from_lock(cls, path, block_size: int | None = None, **options) -> DatasetRecipe:
        """The recipe a lock file pins (`kogitune lock`, kogitune.lock): the same datasets, by ID, so the same
        samples in the same order on any machine, wherever the data is found now (a local directory of the lock
        that still holds the ID, the local store, peers, the lock's mirrors). `options` as for the constructor."""
        from .lock import lock_entries, read_lock

        return cls(lock_entries(read_lock(path)), block_size, **options)

    def _without_recipe_ids(self, entries: list) -> list:
        """The entries, each recipe ID (`kgr1-...`, a published lock) replaced by the entries of its lock, fetched
        now from this node's own locks or the DHT and checked against the ID (kogitune.lock.fetch_lock)."""
        if not any(is_recipe_id(e) and not Path(e).exists() for e in entries):
            return entries
        from .lock import fetch_lock, lock_entries

        home = self.store.home if self.store is not None else None
        expanded: list = []
        for entry in entries:
            is_lock = is_recipe_id(entry) and not Path(entry).exists()
            expanded += lock_entries(fetch_lock(entry, home)) if is_lock else [entry]
        return expanded

    def tensors(self) -> list[DataTensor | DataCollection]:
        tensors = [self._open(entry) for entry in self.entries]
        first = tensors[0]
        for tensor in tensors[1:]:
            if tensor.manifest.tokenizer.fingerprint != first.manifest.tokenizer.fingerprint:
                raise TokenizerError(
                    f"{tensor.path} was tokenized with {tensor.manifest.tokenizer.id} but {first.path} with "
                    f"{first.manifest.tokenizer.id}: a recipe can only mix tensors of the same tokenizer; "
                    "store them again with one tokenizer"
                )
        return tensors

    def get_train_dataset(self, block_size: int | None = None, **options):
        """A map-style `torch.utils.data.Dataset` of `{"input_ids": LongTensor[block_size]}`, shard-aware
        shuffled (see kogitune.dataset); `options` go to TokenBlockDataset (shuffle, seed, window, lookahead,
        partitions, turn)."""
        from .dataset import TokenBlockDataset

        tensors = self.tensors()
        block_size = block_size or self.block_size or tensors[0].manifest.block_size
        budgets = [_budget(entry, tensor, block_size) for entry, tensor in zip(self.entries, tensors)]
        options = {"shuffle": self.shuffle, "seed": self.seed, **options}
        return TokenBlockDataset(tensors, block_size, budgets=budgets, names=[e.name for e in self.entries], **options)

    def _open(self, entry: RecipeEntry) -> DataTensor | DataCollection:
        dataset_id = entry.dataset_id
        if entry.dataset_name is not None:
            from .names import resolve_name

            dataset_id = resolve_name(entry.dataset_name, self.store.home if self.store is not None else None)
        if dataset_id is not None:
            from .client import open_dataset_id

            return open_dataset_id(dataset_id, self.trusted_publishers, mirrors=entry.mirrors, store=self.store)
        if entry.mirrors:
            from .client import open_mirrors

            return open_mirrors(list(entry.mirrors), self.store)
        if len(entry.sources) > 1:
            raise RecipeError(f"{entry.name}: several local paths in one entry; list each tensor as its own entry")
        return open_local(entry.sources[0])


def _budget(entry: RecipeEntry, tensor: DataTensor | DataCollection, block_size: int) -> int | None:
    if entry.tokens is not None:
        return max(1, -(-entry.tokens // block_size))
    if entry.weight is not None:
        natural = -(-tensor.manifest.tokens // block_size)
        return max(1, round(natural * entry.weight))
    return None
