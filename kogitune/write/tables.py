"""Reading a text column of tables: Parquet files and HF `datasets` saved to disk (Arrow IPC files), with pyarrow.

Each row's text becomes the JSON line `{"<text key>": text}`, so that the rest of the pipeline (parse, filters,
tokenize, bad-line rules) treats a row exactly as it treats the same text in a JSONL file: the same text stores the
same tokens. Memory stays bounded: a Parquet file is read ROWS_PER_READ rows of one row group at a time (pyarrow
holds at most the text column of one row group), an Arrow file one record batch at a time, memory-mapped (the
`datasets` library writes batches of 1,000 rows); a row is held at most once as text and once as its JSON line.

pyarrow is an optional dependency (`pip install kogitune[parquet]`), imported only when such an input is read.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import BadInputError

PARQUET_SUFFIXES = (".parquet",)
ARROW_SUFFIXES = (".arrow",)
ROWS_PER_READ = 256
"""Rows read from a Parquet row group at a time."""


def is_table(path: Path) -> bool:
    return path.name.endswith(PARQUET_SUFFIXES + ARROW_SUFFIXES)


def pyarrow_module():
    """pyarrow, or a BadInputError that says how to install it."""
    try:
        import pyarrow
        import pyarrow.ipc
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise BadInputError(
            "reading Parquet or Arrow (HF datasets) inputs needs pyarrow: pip install 'kogitune[parquet]'"
        ) from None
    return pyarrow


def parquet_row_groups(path: Path) -> list[int]:
    """The compressed size in bytes of each row group of a Parquet file (how parts split it)."""
    pa = pyarrow_module()
    try:
        meta = pa.parquet.ParquetFile(path).metadata
    except (OSError, pa.ArrowException) as exc:
        raise BadInputError(f"{path}: not a readable Parquet file ({exc})") from None
    return [
        sum(meta.row_group(g).column(c).total_compressed_size for c in range(meta.num_columns))
        for g in range(meta.num_row_groups)
    ]


def table_rows(path: Path, key: str, row_groups: range | None = None) -> Iterator[list[Any]]:
    """The values of column `key` of a Parquet or Arrow file, a bounded list of rows at a time (str or None);
    for Parquet, of `row_groups` only (default: all)."""
    pa = pyarrow_module()
    try:
        if path.name.endswith(PARQUET_SUFFIXES):
            parquet = pa.parquet.ParquetFile(path)
            _check_column(path, parquet.schema_arrow, key, pa)
            count = parquet.num_row_groups
            groups = range(count) if row_groups is None else range(row_groups.start, min(row_groups.stop, count))
            if len(groups):
                for batch in parquet.iter_batches(ROWS_PER_READ, row_groups=list(groups), columns=[key]):
                    yield batch.column(0).to_pylist()
            return
        with pa.memory_map(str(path)) as source:
            try:
                reader = pa.ipc.open_stream(source)
            except pa.ArrowInvalid:
                source.seek(0)
                reader = pa.ipc.open_file(source)
            _check_column(path, reader.schema, key, pa)
            batches = (
                reader
                if hasattr(reader, "__iter__")
                else (reader.get_batch(i) for i in range(reader.num_record_batches))
            )
            for batch in batches:
                yield batch.column(batch.schema.get_field_index(key)).to_pylist()
    except (OSError, pa.ArrowException) as exc:
        raise BadInputError(f"{path}: cannot be read as {'Parquet' if is_parquet(path) else 'Arrow'} ({exc})") from None


def is_parquet(path: Path) -> bool:
    return path.name.endswith(PARQUET_SUFFIXES)


def _check_column(path: Path, schema, key: str, pa) -> None:
    if key not in schema.names:
        names = ", ".join(schema.names[:8]) or "none"
        raise BadInputError(f"{path}: has no column {key!r} (columns: {names}); choose the column with --text-key")
    kind = schema.field(key).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or str(kind) == "string_view"):
        raise BadInputError(f"{path}: column {key!r} holds {kind}, not text; choose a text column with --text-key")


def rows_as_lines(rows: list[Any], key: str) -> list[bytes]:
    """Each row's text as the JSON line `{key: text}` (None stays null: a bad line, as in JSONL)."""
    return [json.dumps({key: text}, ensure_ascii=False).encode("utf-8") for text in rows]


def hf_dataset_files(directory: Path) -> list[Path] | None:
    """The Arrow files of a `datasets.Dataset.save_to_disk` directory, in order; None if it is not one."""
    state = directory / "state.json"
    if not state.is_file():
        if (directory / "dataset_dict.json").is_file():
            splits = ", ".join(sorted(p.name for p in directory.iterdir() if (p / "state.json").is_file()))
            raise BadInputError(f"{directory} holds several splits ({splits}); give one, e.g. {directory}/train")
        return None
    try:
        files = [directory / entry["filename"] for entry in json.loads(state.read_bytes())["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInputError(f"{state}: not a `datasets` state file ({exc})") from None
    if not files or any(Path(f.name) != Path(f.relative_to(directory)) or not f.is_file() for f in files):
        raise BadInputError(f"{state}: names no data files, or files that are missing")
    return files
