"""What the command modules share: exit statuses, argparse types, the node home, the document-size option."""

from __future__ import annotations

import argparse

EXIT_OK, EXIT_DAMAGED, EXIT_ERROR, EXIT_BUG = 0, 1, 2, 3
HOME_HELP = (
    "node home: identity, store, control socket, log (default: $KOGITUNE_HOME, else "
    "$XDG_CACHE_HOME/kogitune, else ~/.cache/kogitune)"
)
SETTINGS_HELP = (
    "Timeouts, sizes and limits are settings; each is taken from the first of: its flag, $KOGITUNE_<NAME>, "
    "<home>/config.json, its built-in default (docs/user-guide.md#settings)."
)
MAX_DOCUMENT_HELP = (
    "a longer input line (one JSON document) is a bad line, in MiB (default: 16, "
    "kogitune.write.MAX_DOCUMENT_BYTES); no more than this of a line is held in memory"
)

INPUTS_HELP = (
    "input files: JSONL (one document per line; .jsonl, .jsonl.gz, .jsonl.zst), Parquet (.parquet), HF datasets "
    "saved to disk (their directory), directories of such files, glob patterns"
)
TEXT_KEY_HELP = "JSON key, or Parquet / datasets column, holding the text (default: text)"


def mib(size: float | None) -> int | None:
    return None if size is None else int(size * (1 << 20))


def document_limit(max_document_bytes: int | None) -> dict:
    """The max_document_bytes option, when one is given (else the options' default holds)."""
    return {} if max_document_bytes is None else {"max_document_bytes": max_document_bytes}


def at_least(low, kind):
    """An argparse type: a number of `kind` no smaller than `low`."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value >= low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {text}")
        return value

    return parse


def task_of(text: str) -> tuple[int, int]:
    """An argparse type: "I/N", part I (from 0) of N."""
    index, slash, count = text.partition("/")
    if not (slash and index.isdigit() and count.isdigit() and 0 <= int(index) < int(count)):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N (part I of N, from 0), got {text!r}")
    return int(index), int(count)


def home_of(args):
    from pathlib import Path

    from ..content_store import kogitune_home

    return Path(args.home).expanduser() if getattr(args, "home", None) else kogitune_home()
