"""Documents to packed token ids: parse JSONL lines, run stateless filters, tokenize, append EOS, pack as bytes.

Batches are tokenized in input order, either in this process (on the Rust tokenizer's threads) or in worker
processes, so that the output never depends on how it ran. The result of a batch is plain bytes, cheap to send
between processes; kogitune.write.shards cuts the packed tokens into blocks and shards.
"""

from __future__ import annotations

import os
import struct
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from kogitune.protocol.manifest import DTYPES

from ..parallel import in_order, ordered_map
from ..tokenizer import Tokenizer, tokenizer_from_json
from .inputs import Batch, document_of

if TYPE_CHECKING:
    from .job import StoreOptions

ENCODER_THREADS = 2
"""Threads that call the Rust encoder in the in-process pipeline; Rust shares all cores between their batches."""
IN_FLIGHT = 6
"""Batches in flight in the in-process pipeline: being encoded, or parsed and waiting for an encoder."""
_STRUCT_CODES = {2: "H", 4: "I"}


def stateless_pipeline(config: dict):
    """The filter pipeline of `config`, refused if it remembers documents (dedup), which store cannot run."""
    from ..filters import FilterError, Pipeline

    pipeline = Pipeline.from_config(config)
    stateful = [f.name for f in pipeline.filters if f.stateful]
    if stateful:
        raise FilterError(
            f"store --filters cannot run {', '.join(stateful)}: store filters independent batches in "
            f"parallel, and dedup compares each document with all earlier ones. Run `kogitune filter "
            f"IN... -o OUT.jsonl --config CONFIG` first and store its output"
        )
    return pipeline


def worker_processes(options: StoreOptions) -> int:
    """How many processes tokenize; 0 means this process, on the Rust tokenizer's own threads (all cores).

    The default (workers=0) uses all cores either way: in this process, unless filters run (Python, which holds the
    GIL for every text) or Rust parallelism is off (TOKENIZERS_PARALLELISM=false, which loading a transformers
    tokenizer sets); then in one process per core. With no filters, this process is the faster: no spawn, no
    per-worker imports, no pickled batches (on 2 cores, docs/benchmarks.md).
    """
    if options.workers == 0 and options.filters is None and _rust_parallelism():
        return 0
    workers = options.workers or os.cpu_count() or 1
    return 0 if workers == 1 else workers


def _rust_parallelism() -> bool:
    """Whether `tokenizers` encodes a batch on all cores: as it reads TOKENIZERS_PARALLELISM (utils/parallelism.rs)."""
    value = os.environ.get("TOKENIZERS_PARALLELISM")
    return value is None or value.lower() not in ("", "off", "false", "f", "no", "n", "0")


def tokenize_in_order(batches: Iterator[Batch], tok: Tokenizer, dtype: str, options: StoreOptions):
    """Yield (batch, result of `tokenize_lines`) in input order, with a bounded number of batches in flight."""
    processes = worker_processes(options)
    if not processes:
        pipeline = stateless_pipeline(options.filters) if options.filters is not None else None
        yield from _tokenize_here(batches, tok, dtype, options.text_key, pipeline)
        return
    jobs = ((batch, (batch.lines, batch.first_line, options.text_key, dtype)) for batch in batches)
    with tempfile.TemporaryDirectory(prefix="kogitune-store-") as scratch:
        tokenizer_file = Path(scratch) / "tokenizer.json"  # workers read it: initargs must stay small (parallel.py)
        tokenizer_file.write_text(tok.to_json(), encoding="utf-8")
        yield from ordered_map(
            _tokenize_in_worker,
            jobs,
            processes,
            _init_worker,
            (tok.name, str(tokenizer_file), tok.eos_id, options.filters),
        )


def _tokenize_here(batches: Iterator[Batch], tok: Tokenizer, dtype: str, text_key: str, pipeline):
    """`tokenize_lines` in this process, as a pipeline that keeps the Rust encoder busy: two threads only call the
    encoder, which shares all cores between their batches; this thread reads, parses JSON (and runs filters) ahead
    of them, turns the encodings into packed ids, and writes.

    Rust releases the GIL while it encodes; Python work on an encoder's thread leaves the cores idle. Before, two
    threads each parsed, encoded and packed a batch: their encoder calls shared the cores, ended together, and then
    both threads ran Python, one at a time. One encoder thread leaves a core idle at the end of each call, while the
    batch's last documents are encoded; a separate parsing thread only added GIL hand-offs (docs/benchmarks.md).
    """
    encoder = ThreadPoolExecutor(ENCODER_THREADS, thread_name_prefix="kogitune-encode")

    def parsed():
        for batch in batches:
            texts, *counts = parse_lines(batch.lines, batch.first_line, text_key, pipeline)
            yield batch, (texts, counts)

    def encode(texts: list[str], counts: list):
        return tok.encodings(texts), counts

    try:
        for batch, (encodings, counts) in in_order(encoder, encode, parsed(), IN_FLIGHT):
            yield batch, (*pack_documents(encodings, tok.eos_id, dtype), *counts)
    finally:
        encoder.shutdown(cancel_futures=True)


_worker_tokenizer: Tokenizer | None = None
_worker_pipeline = None


def _init_worker(name: str, tokenizer_file: str, eos_id: int, filters: dict | None) -> None:
    global _worker_tokenizer, _worker_pipeline
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    _worker_tokenizer = tokenizer_from_json(name, Path(tokenizer_file).read_text(encoding="utf-8"), eos_id)
    _worker_pipeline = stateless_pipeline(filters) if filters is not None else None


def _tokenize_in_worker(lines: list[bytes], first_line: int, text_key: str, dtype: str):
    assert _worker_tokenizer is not None, "the pool runs _init_worker first"
    return tokenize_lines(_worker_tokenizer, lines, first_line, text_key, dtype, _worker_pipeline)


def tokenize_lines(tok: Tokenizer, lines: list[bytes], first_line: int, text_key: str, dtype: str, pipeline=None):
    """Parse JSONL lines, run the filter `pipeline` (if any) and tokenize the kept texts, each followed by EOS.

    Returns (token bytes, document lengths as int64 bytes, [(line, reason) of bad lines], empty documents,
    UTF-8 bytes of text, documents dropped by filters); plain bytes, so that results cross process boundaries
    cheaply.
    """
    texts, *counts = parse_lines(lines, first_line, text_key, pipeline)
    return (*pack_documents(tok.encodings(texts), tok.eos_id, dtype), *counts)


def parse_lines(lines: list[bytes], first_line: int, text_key: str, pipeline=None):
    """(texts to tokenize, [(line, reason) of bad lines], empty documents, UTF-8 bytes of text, documents dropped
    by the filter `pipeline`) of JSONL lines."""
    texts, bad, empty, text_bytes, filtered = [], [], 0, 0, 0
    for number, line in enumerate(lines, first_line):
        if not line.strip():
            continue
        text, reason = _text_of(line, text_key)
        if reason:
            bad.append((number, reason))
        elif not text:
            empty += 1
        else:
            text_bytes += len(text.encode("utf-8"))
            if pipeline is not None:
                text = pipeline.apply(text).text
                if not text:
                    filtered += 1
                    continue
            texts.append(text)
    return texts, bad, empty, text_bytes, filtered


def pack_documents(encodings: list, eos_id: int, dtype: str) -> tuple[bytes, bytes]:
    """(the token ids of `encodings`, each followed by EOS, as `dtype` bytes; their lengths with EOS as int64 bytes).

    `struct` turns each document's ids (a Python list) straight into little-endian bytes: the fastest way tried,
    25% less CPU than filling a numpy array; and only one document's ids are Python ints at a time, whereas holding
    a whole batch's took fresh pages from the OS for every batch (docs/benchmarks.md).
    """
    code = _STRUCT_CODES[DTYPES[dtype]]
    lengths = [len(encoding) + 1 for encoding in encodings]
    tokens = b"".join([struct.pack(f"<{n}{code}", *encoding.ids, eos_id) for encoding, n in zip(encodings, lengths)])
    return tokens, np.array(lengths, np.int64).tobytes()


def _text_of(line: bytes, key: str) -> tuple[str, str]:
    _, text, reason = document_of(line, key)
    return text, reason
