"""`kogitune store`: tokenize JSONL text into a data tensor (docs/format.md).

Input is streamed in batches of lines, parsed and tokenized in this process (on the Rust tokenizer's threads) or
in worker processes, and written in input order, so the output (and its dataset ID) does not depend on how it ran.
Everything is written into `<output>.partial` and renamed to `<output>` only once complete: an interrupted store
leaves no tensor that looks complete. Every CHECKPOINT_SECONDS it records in `<output>.partial/checkpoint.json`
how far it got; run again after an interruption (Ctrl-C, kill, crash), it goes on from there when the inputs
(path, size, mtime), the tokenizer, the options and the Kogitune version are unchanged, and the result is the same
tensor, byte for byte, as an uninterrupted store would make.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kogitune.protocol.jsonlimits import loads
from kogitune.protocol.manifest import (
    MAX_BLOCK_SIZE,
    MAX_PIECE_SIZE,
    MAX_SHARD_TOKENS,
    MIN_PIECE_SIZE,
    Manifest,
    TokenizerInfo,
    dtype_for_vocab,
)

from .. import __version__
from ..errors import DiskFullError, KogituneError, TensorError
from ..files import DISK_FULL, exclusive_lock, write_atomic
from ..layout import MANIFEST_FILE, partial_path, store_lock_path
from ..marks import record_verified
from ..perturb import Perturber, PerturbSpec
from ..tensor import DataTensor
from ..tokenizer import DEFAULT_TOKENIZER, Tokenizer, load_tokenizer
from .checkpoint import (
    CHECKPOINT_FILE,
    CHECKPOINT_SECONDS,
    job_description,
    restore_checkpoint,
    save_checkpoint,
    usable_checkpoint,
)
from .inputs import (
    BATCH_BYTES,
    INPUT_SUFFIXES,
    MAX_DOCUMENT_BYTES,
    InputReader,
    Span,
    check_max_document_bytes,
    expand_inputs,
)
from .pack import stateless_pipeline, tokenize_in_order
from .shards import TensorWriter


@dataclass(frozen=True)
class StoreOptions:
    block_size: int = 2048
    text_key: str = "text"
    shard_size: int = 32 << 20
    piece_size: int = 1 << 20
    workers: int = 0
    """0: all cores (see `worker_processes`); 1: this process, on the Rust tokenizer's threads; N: N processes."""
    skip_bad_lines: bool = False
    overwrite: bool = False
    perturb: PerturbSpec | None = None
    filters: dict | None = None
    """A stateless filter pipeline config (kogitune/filters) run on each text before it is tokenized."""
    max_document_bytes: int = MAX_DOCUMENT_BYTES
    """A longer input line is a bad line (an error, or skipped and counted with skip_bad_lines)."""
    keep_lists: str | None = None
    """The directory of a staged filter's keep lists (`kogitune filter --parts N --keep-lists -o DIR`): only the
    lines they keep are stored, their texts as that filter left them (kogitune.filters.keep)."""

    def __post_init__(self) -> None:
        """Refuse options that would make a tensor its readers refuse (limits of protocol/manifest.py)."""
        if not 1 <= self.block_size <= MAX_BLOCK_SIZE:
            raise KogituneError(f"block size must be 1 to {MAX_BLOCK_SIZE} tokens, got {self.block_size}")
        if not MIN_PIECE_SIZE <= self.piece_size <= MAX_PIECE_SIZE or self.piece_size & (self.piece_size - 1):
            raise KogituneError(
                f"piece size must be a power of two from {MIN_PIECE_SIZE >> 10} to "
                f"{MAX_PIECE_SIZE >> 10} KiB, got {self.piece_size / 1024:g} KiB"
            )
        if not 0 < self.shard_size <= MAX_SHARD_TOKENS:
            raise KogituneError(
                f"shard size must be positive and at most {MAX_SHARD_TOKENS} bytes "
                f"(document offsets are 32-bit), got {self.shard_size}"
            )
        if self.workers < 0:
            raise KogituneError(f"workers must be 0 (all cores) or more, got {self.workers}")
        check_max_document_bytes(self.max_document_bytes)

    def provenance(self) -> dict:
        return {
            "block_size": self.block_size,
            "text_key": self.text_key,
            "shard_size": self.shard_size,
            "piece_size": self.piece_size,
            "skip_bad_lines": self.skip_bad_lines,
        }


@dataclass
class StoreReport:
    path: Path
    dataset_id: str
    documents: int = 0
    tokens: int = 0
    blocks: int = 0
    shards: int = 0
    padding: int = 0
    bad_lines: int = 0
    empty_documents: int = 0
    filtered_documents: int = 0
    empty_files: int = 0
    text_bytes: int = 0
    seconds: float = 0.0
    already_stored: bool = False

    def summary(self) -> str:
        if self.already_stored:
            return f"already stored: {self.path} ({self.dataset_id}); pass --overwrite to store again"
        rate = self.text_bytes / 1e6 / max(self.seconds, 1e-9)
        skipped = f", skipped {self.bad_lines} bad lines" if self.bad_lines else ""
        empty = f", {self.empty_documents} empty documents" if self.empty_documents else ""
        empty += f", {self.filtered_documents:,} dropped by filters" if self.filtered_documents else ""
        return (
            f"stored {self.path}\n  {self.documents:,} documents, {self.tokens:,} tokens, {self.blocks:,} blocks "
            f"in {self.shards} shards ({self.padding:,} padding tokens in the last block){skipped}{empty}\n"
            f"  {self.text_bytes / 1e6:.1f} MB of text in {self.seconds:.1f} s ({rate:.1f} MB/s, "
            f"{self.tokens / max(self.seconds, 1e-9) / 1e6:.2f} M tokens/s)\n  dataset id {self.dataset_id}"
        )


def default_output(tokenizer: Tokenizer, first_input: Path) -> Path:
    name = first_input.name
    while name.endswith(INPUT_SUFFIXES):
        name = name[: name.rfind(".")]
    return Path(tokenizer.short_id) / (name or "data")


def store(
    inputs: str | os.PathLike | Iterable[str | os.PathLike],
    tokenizer: str | Tokenizer = DEFAULT_TOKENIZER,
    output: str | os.PathLike | None = None,
    options: StoreOptions | None = None,
    progress: bool = True,
    **settings,
) -> StoreReport:
    """Tokenize `inputs` into a data tensor directory: JSONL files (plain, .gz or .zst), Parquet files, HF
    `datasets` saved to disk, directories of such files and glob patterns (`kogitune.write.expand_inputs`); return a
    StoreReport (its `path` and `dataset_id`, and what was stored and skipped). As `kogitune store` does.

        report = kogitune.store("corpus.jsonl", "gpt2", "gpt2-f04f/corpus", block_size=1024)

    `tokenizer`: "gpt2" (built in, offline), a tokenizer directory or tokenizer.json, a hub name, or a Tokenizer.
    `output`: by default <tokenizer short id>/<name of the first input>; an existing tensor there is kept (the
    report says `already_stored`) unless `overwrite=True`.
    `settings` are StoreOptions fields (block_size, text_key, shard_size, piece_size, workers, skip_bad_lines,
    overwrite, perturb, filters, max_document_bytes, keep_lists), applied over `options`; as keywords, `filters` may also be a
    config file (JSON or YAML) and `perturb` a spec string ("krr=3.0"), as on the command line.
    Raises KogituneError subclasses (BadInputError, TokenizerError, DiskFullError, ...). With worker processes
    (the default with filters), call it under `if __name__ == "__main__":` in a script.
    """
    options = options_with(options or StoreOptions(), settings)
    paths = expand_inputs([inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs))
    if options.filters is not None:
        stateless_pipeline(options.filters)
    tok = load_tokenizer(tokenizer)
    out = Path(output) if output is not None else default_output(tok, paths[0])
    options, kept = with_keep_lists(options, paths)
    return store_spans([Span(path) for path in paths], tok, out, options, progress, kept=kept)


def with_keep_lists(options: StoreOptions, paths: list[Path], part: tuple[int, int] | None = None):
    """(the options with the keep lists' own filters, the KeptLines that walks the inputs' lines) for a store of
    `paths` (whole, or part (I, N)) with `options.keep_lists`; (options, None) without."""
    if options.keep_lists is None:
        return options, None
    from ..filters.keep import KeepLists
    from .parts import split_digest, split_inputs

    if options.filters is not None:
        raise KogituneError("--keep-lists runs the filters of the run that made them; drop --filters")
    lists = KeepLists.open(options.keep_lists)
    split = split_digest(split_inputs(paths, part[1] if part else len(lists.parts)))
    kept = lists.lines(split, options.text_key, part)
    return dataclasses.replace(options, filters=lists.stateless_filters()), kept


def store_spans(
    spans: list[Span],
    tok: Tokenizer,
    out: Path,
    options: StoreOptions,
    progress: bool = True,
    provenance: dict | None = None,
    kept=None,
) -> StoreReport:
    """`store` of these spans of input files (kogitune.write.parts stores a part of its inputs so), with the
    `provenance` entries given added to the manifest's; only the lines that `kept` (KeptLines) keeps, if given."""
    with exclusive_lock(store_lock_path(out), f"storing into {out}"):
        _settle_replace(out)
        if (out / MANIFEST_FILE).exists() and not options.overwrite:
            return StoreReport(out, DataTensor(out).dataset_id, already_stored=True)
        if out.exists() and not (out / MANIFEST_FILE).exists() and (not out.is_dir() or any(out.iterdir())):
            raise TensorError(
                f"{out} exists and is not a data tensor (it has no {MANIFEST_FILE}); choose another output or remove it"
            )
        partial = partial_path(out)
        checkpoint = usable_checkpoint(partial, spans, tok, options, BATCH_BYTES)
        if checkpoint is None:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        else:
            for leftover in [*partial.glob(".*.tmp"), *partial.glob("shards/.*.tmp")]:
                leftover.unlink()  # an atomic write the interruption cut short
        try:
            report = _write_tensor(spans, tok, partial, options, progress, checkpoint, provenance or {}, kept)
            _replace_dir(partial, out)
        except KogituneError:
            shutil.rmtree(partial, ignore_errors=True)  # bad input: only other inputs can go on from here
            raise
        except OSError as exc:
            if exc.errno not in DISK_FULL:
                raise
            raise _disk_full(exc, partial) from None
    report.path = out
    return report


def options_with(options: StoreOptions, settings: dict) -> StoreOptions:
    """`options` with the fields in `settings` replaced; a filter config file or a perturbation spec string is
    read as the command line reads it."""
    if isinstance(settings.get("filters"), (str, os.PathLike, dict)):
        from ..filters import Pipeline

        settings["filters"] = Pipeline.from_config(settings["filters"]).to_config()
    if isinstance(settings.get("perturb"), str):
        settings["perturb"] = PerturbSpec.parse(settings["perturb"]) if settings["perturb"] else None
    return dataclasses.replace(options, **settings) if settings else options


def _disk_full(exc: OSError, partial: Path) -> DiskFullError:
    """The error for a store that ran out of space: what was kept and what to do. A partial directory with a
    checkpoint is kept, since the same command goes on from it; one without is removed, to give the space back."""
    where = exc.filename or partial
    try:
        writer = loads((partial / CHECKPOINT_FILE).read_bytes())["writer"]
        shards, tokens = len(writer["shards"]), int(writer["tokens"])
    except (OSError, ValueError, KeyError, TypeError):
        shutil.rmtree(partial, ignore_errors=True)
        return DiskFullError(
            f"{where}: {exc.strerror}. Nothing was kept: the store "
            f"had not written its first checkpoint (every {CHECKPOINT_SECONDS:g} s), so {partial} "
            "is removed. Free space there (or choose another --output) and run the same command "
            "again"
        )
    held = sum(f.stat().st_size for f in partial.rglob("*") if f.is_file())
    return DiskFullError(
        f"{where}: {exc.strerror}. Kept {partial} ({held / 1e6:,.1f} MB: "
        f"{shards} finished shards and a checkpoint at {tokens:,} tokens). Free space "
        "there and run the same command again: it goes on from the checkpoint"
    )


def _replace_dir(new: Path, target: Path) -> None:
    if not target.exists():
        os.rename(new, target)
        return
    old = _old_dir(target)
    shutil.rmtree(old, ignore_errors=True)
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _old_dir(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


def _settle_replace(target: Path) -> None:
    """After an interruption inside `_replace_dir`: the old tensor goes back in place if the new one never got
    there, and is removed if it did."""
    old = _old_dir(target)
    if old.exists():
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(old, target)


def _write_tensor(
    spans: list[Span],
    tok: Tokenizer,
    directory: Path,
    options: StoreOptions,
    progress: bool,
    checkpoint: dict | None,
    extra_provenance: dict,
    kept=None,
) -> StoreReport:
    from tqdm import tqdm

    started = time.perf_counter()
    dtype = dtype_for_vocab(tok.vocab_size)
    writer = TensorWriter(directory, dtype, options.block_size, options.shard_size, options.piece_size, tok.eos_id)
    reader = InputReader(spans, options.skip_bad_lines, BATCH_BYTES, options.max_document_bytes, options.text_key)
    perturber = Perturber(options.perturb, tok.vocab_size) if options.perturb else None
    report = StoreReport(directory, "")
    done = 0
    if checkpoint is not None:
        done = restore_checkpoint(checkpoint, writer, perturber, report)
        if progress:
            print(
                f"store: going on from the checkpoint in {directory} ({done} batches, {len(writer.shards)} "
                "shards already stored)",
                file=sys.stderr,
            )
    next_checkpoint, job = time.monotonic() + CHECKPOINT_SECONDS, None
    batches = itertools.islice(kept.apply(reader.batches()) if kept else reader.batches(), done, None)
    with (
        tqdm(
            total=sum(span.bytes() for span in spans),
            unit="B",
            unit_scale=True,
            desc="store",
            disable=None if progress else True,
        ) as bar,
        ThreadPoolExecutor(1) as aside,
        writer.closed_on_error(),
    ):
        for number, (batch, result) in enumerate(tokenize_in_order(batches, tok, dtype, options), done):
            if number == done:  # the manifest's fingerprint, hashed while Rust encodes rather than after the last batch
                aside.submit(getattr, tok, "fingerprint")
            tokens, lengths, bad, empty, text_bytes, filtered = result
            bad = batch.bad_lines(bad, options.skip_bad_lines)
            report.bad_lines += len(bad)
            report.empty_documents += empty
            report.filtered_documents += filtered + batch.dropped
            report.text_bytes += text_bytes
            tokens, lengths = np.frombuffer(tokens, dtype=dtype), np.frombuffer(lengths, dtype=np.int64)
            if perturber:
                tokens, lengths = perturber.apply(tokens, lengths)
            writer.add(tokens, lengths)
            bar.update(reader.bytes_read - bar.n)
            if time.monotonic() >= next_checkpoint:
                job = job or job_description(
                    spans, tok, options, BATCH_BYTES
                )  # not before: it needs the fingerprint, hashed meanwhile
                save_checkpoint(directory, job, number + 1, writer, perturber, report, reader)
                next_checkpoint = time.monotonic() + CHECKPOINT_SECONDS
    shards = writer.finish()
    provenance: dict[str, Any] = {
        "inputs": reader.inputs,
        "options": options.provenance(),
        **extra_provenance,
        "kogitune": __version__,
        "skipped": {
            "bad_lines": report.bad_lines,
            "empty_documents": report.empty_documents,
            "empty_files": reader.empty_files,
        },
    }
    if perturber:
        provenance["perturb"] = perturber.provenance()
    if options.filters is not None:
        provenance["filters"] = stateless_pipeline(options.filters).to_provenance()
    if kept is not None:
        provenance["keep_lists"] = kept.lists.provenance()
    if options.filters is not None or kept is not None:
        provenance["skipped"]["filtered_documents"] = report.filtered_documents
    manifest = Manifest(
        tokenizer=TokenizerInfo(tok.name, tok.short_id, tok.fingerprint, tok.vocab_size, tok.eos_id),
        dtype=dtype,
        block_size=options.block_size,
        piece_size=options.piece_size,
        documents=writer.documents,
        tokens=writer.tokens,
        blocks=sum(s.blocks for s in shards),
        shards=shards,
        provenance=provenance,
    )
    manifest_bytes = json.dumps(manifest.to_dict(), indent=1, sort_keys=True, ensure_ascii=False).encode()
    write_atomic(directory / MANIFEST_FILE, manifest_bytes + b"\n")
    record_verified(directory, manifest, shards)
    (directory / CHECKPOINT_FILE).unlink(missing_ok=True)
    report.dataset_id = manifest.dataset_id
    report.documents, report.tokens, report.blocks = manifest.documents, manifest.tokens, manifest.blocks
    report.shards, report.padding = len(shards), manifest.blocks * manifest.block_size - manifest.tokens
    report.empty_files = reader.empty_files
    report.seconds = time.perf_counter() - started
    return report
