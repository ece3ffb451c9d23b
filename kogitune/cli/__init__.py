"""The `kogitune` command line: argparse and handlers, one module per command group.

- tensors.py: `store`, `filter`, and `store_cli` / `filter_cli`, their Python forms that print a summary (kept for
  the original Kogitune's users; the Python API is `kogitune.store` and `kogitune.filter`);
- look.py: `verify`, `info`, `head`, by a tensor's directory or a dataset ID;
- node.py: `node` (run or ask a node) and `ls`, `rm`, `cache` (its content store);
- network.py: `publish`, `get`, `status` (datasets to and from the network, through the running node);
- names.py: `lock`, `resolve`;
- compress.py: `compress` (the compressed sidecars of a tensor);
- common.py: exit statuses and argparse helpers.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from ..errors import KogituneError
from . import compress, look, names, network, node, tensors
from .common import EXIT_BUG, EXIT_DAMAGED, EXIT_ERROR, EXIT_OK, MAX_DOCUMENT_HELP, SETTINGS_HELP
from .tensors import filter_cli, store_cli

__all__ = [
    "EXIT_BUG",
    "EXIT_DAMAGED",
    "EXIT_ERROR",
    "EXIT_OK",
    "MAX_DOCUMENT_HELP",
    "build_parser",
    "filter_cli",
    "main",
    "store_cli",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kogitune",
        description="Tokenize text once into content-addressed data tensors; share and train on them.",
        epilog=SETTINGS_HELP,
    )
    parser.add_argument("--version", action="version", version=f"kogitune {installed_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    tensors.add_commands(commands)
    look.add_commands(commands)
    node.add_commands(commands)
    network.add_commands(commands)
    names.add_commands(commands)
    compress.add_commands(commands)
    return parser


def installed_version() -> str:
    """The version of the installed kogitune distribution (pyproject.toml's, as pip installed it)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("kogitune")
    except PackageNotFoundError:
        return "(not installed: run from a source tree without `pip install`)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (KogituneError, OSError) as exc:
        print(f"kogitune {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"kogitune {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception:
        traceback.print_exc()
        print(
            f"kogitune {args.command}: internal error (a bug in kogitune); please report the traceback above",
            file=sys.stderr,
        )
        return EXIT_BUG
