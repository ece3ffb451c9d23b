"""Checkpoints of a store job: how far it got, recorded so that a store run again after an interruption goes on
from there and makes the same tensor, byte for byte, as an uninterrupted store would."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from kogitune.protocol.jsonlimits import loads
from kogitune.protocol.manifest import ShardInfo, dtype_for_vocab

from .. import __version__
from ..files import write_atomic
from ..layout import TOKENS, shard_file
from ..perturb import Perturber
from ..tokenizer import Tokenizer
from .inputs import InputReader, Span
from .shards import DTYPES_NP, TensorWriter

if TYPE_CHECKING:
    from .job import StoreOptions, StoreReport

log = logging.getLogger(__name__)
CHECKPOINT_FILE = "checkpoint.json"
CHECKPOINT_SECONDS = 30.0
"""How often a store records how far it got (an fsync of the shard being written and a small JSON file)."""
COUNTERS = ("bad_lines", "empty_documents", "filtered_documents", "text_bytes")
"""The StoreReport counters a checkpoint carries (the rest of the report is counted again at the end)."""


def job_description(spans: list[Span], tok: Tokenizer, options: StoreOptions, batch_bytes: int) -> dict:
    """What a checkpoint is valid for: going on from it must give the tensor that starting afresh would."""
    inputs = []
    for span in spans:
        st = span.path.stat()
        inputs.append([str(span.path.resolve()), st.st_size, st.st_mtime_ns, span.start, span.stop])
    return {
        "kogitune": __version__,
        "tokenizer": tok.fingerprint,
        "options": options.provenance(),
        "filters": options.filters,
        "perturb": repr(options.perturb),
        "batch_bytes": batch_bytes,
        "max_document_bytes": options.max_document_bytes,
        "keep_lists": _keep_lists_digest(options.keep_lists),
        "inputs": inputs,
    }


def _keep_lists_digest(directory: str | None) -> str | None:
    if directory is None:
        return None
    from ..filters.keep import KeepLists

    return KeepLists.open(directory).digest


def usable_checkpoint(
    partial: Path, spans: list[Span], tok: Tokenizer, options: StoreOptions, batch_bytes: int
) -> dict | None:
    """The checkpoint an interrupted store of the same job left in `partial`, if any."""
    try:
        checkpoint = loads((partial / CHECKPOINT_FILE).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(checkpoint, dict) or checkpoint.get("job") != json.loads(
        json.dumps(job_description(spans, tok, options, batch_bytes))
    ):
        log.info("%s: the inputs, tokenizer or options changed since the checkpoint; starting afresh", partial)
        return None
    if not _same_bytes_read(checkpoint.get("read")):
        log.info("%s: an input was rewritten since the checkpoint; starting afresh", partial)
        return None
    itemsize = DTYPES_NP[dtype_for_vocab(tok.vocab_size)].itemsize
    if not _checkpoint_fits(checkpoint, partial, itemsize):
        log.warning("%s: the checkpoint does not match the files beside it; starting afresh", partial)
        return None
    return checkpoint


def _same_bytes_read(read) -> bool:
    """Whether each input still holds the bytes the checkpoint read from it ([path, first byte, count, SHA-256])."""
    try:
        for path, start, count, digest in read:
            sha = hashlib.sha256()
            with open(path, "rb") as f:
                f.seek(start)
                left = count
                while left and (chunk := f.read(min(left, 1 << 20))):
                    sha.update(chunk)
                    left -= len(chunk)
            if left or sha.hexdigest() != digest:
                return False
        return True
    except (OSError, TypeError, ValueError):
        return False


def _checkpoint_fits(checkpoint: dict, partial: Path, itemsize: int) -> bool:
    """Whether the checkpoint is well formed and the shard files it counts on are there."""
    try:
        writer = checkpoint["writer"]
        shards = [ShardInfo(**shard) for shard in writer["shards"]]
        numbers = [
            checkpoint["batches"],
            writer["tokens"],
            writer["documents"],
            writer["in_shard"],
            *(checkpoint["report"][name] for name in COUNTERS),
        ]
        base64.b64decode(writer["doc_starts"], validate=True)
        if not all(type(n) is int and n >= 0 for n in numbers) or not isinstance(
            checkpoint["perturber"], (dict, type(None))
        ):
            return False
        files = [partial / name for shard in shards for name in (shard.tokens_path, shard.pieces_path, shard.docs_path)]
        current = shard_file(partial, f"{len(shards):05d}", TOKENS)
        return (
            all(f.is_file() for f in files)
            and all((partial / shard.tokens_path).stat().st_size == shard.size for shard in shards)
            and (not writer["in_shard"] or current.stat().st_size >= writer["in_shard"] * itemsize)
        )
    except (KeyError, TypeError, ValueError, OSError):
        return False


def save_checkpoint(
    directory: Path,
    job: dict,
    batches: int,
    writer: TensorWriter,
    perturber: Perturber | None,
    report: StoreReport,
    reader: InputReader,
) -> None:
    """Record that the first `batches` input batches are stored: the shard being written is synced first, so the
    checkpoint never claims bytes that a crash could lose. The SHA-256 of the input bytes read so far lets a
    resume notice an input rewritten in place with its size and mtime kept."""
    checkpoint = {
        "job": job,
        "batches": batches,
        "read": reader.read_so_far(),
        "writer": writer.state(),
        "report": {name: getattr(report, name) for name in COUNTERS},
        "perturber": perturber.state() if perturber else None,
    }
    write_atomic(directory / CHECKPOINT_FILE, json.dumps(checkpoint).encode())


def restore_checkpoint(checkpoint: dict, writer: TensorWriter, perturber: Perturber | None, report: StoreReport) -> int:
    """Put the writer, the perturber's generator and the report where the checkpoint says; the batches done."""
    writer.restore(checkpoint["writer"])
    if perturber:
        perturber.restore(checkpoint["perturber"])
    for name in COUNTERS:
        setattr(report, name, int(checkpoint["report"][name]))
    return int(checkpoint["batches"])
