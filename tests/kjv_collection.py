"""A collection of KJV parts for the collection tests (`store --task` parts, then `merge`), made in this process."""

from __future__ import annotations

from pathlib import Path

from kogitune.collection import DataCollection
from kogitune.corpora import write_kjv_chapters
from kogitune.write import StoreOptions
from kogitune.write.parts import merge, store_part


def kjv_collection(root: Path, chapters: int, parts: int, block: int) -> DataCollection:
    """`parts` parts of the first `chapters` KJV chapters in 64 KiB shards of 64 KiB pieces, merged into
    root/coll (its parts/<index> link to root/part<index>)."""
    corpus = write_kjv_chapters(root / "kjv.jsonl", limit=chapters)
    options = StoreOptions(block_size=block, piece_size=64 << 10, shard_size=64 << 10, workers=1)
    for index in range(parts):
        store_part([corpus], (index, parts), root / f"part{index}", "gpt2", options, progress=False)
    merge([root / f"part{index}" for index in range(parts)], root / "coll")
    return DataCollection(root / "coll")
