"""Commands that make data tensors: `store`, `filter`; and `store_cli`, `filter_cli`."""

from __future__ import annotations

import os

from .common import EXIT_OK, MAX_DOCUMENT_HELP, at_least, document_limit, mib


def add_commands(commands) -> None:
    """Add the tensor commands to the `commands` subparsers."""
    store = commands.add_parser(
        "store",
        help="tokenize JSONL files into a data tensor directory",
        description="Tokenize JSONL files (.jsonl, .jsonl.gz, .jsonl.zst) into a data tensor directory "
        "<tokenizer id>/<input name>. Documents are joined with EOS and packed into fixed-size blocks.",
    )
    store.add_argument("files", nargs="+", help="input JSONL files, one document per line")
    store.add_argument(
        "--tokenizer",
        default="gpt2",
        help="built-in 'gpt2' (offline), a tokenizer directory or tokenizer.json, or a hub name (default: gpt2)",
    )
    store.add_argument("--output", "-o", help="output directory (default: <tokenizer id>/<name of first input>)")
    store.add_argument("--text-key", default="text", help="JSON key holding the text (default: text)")
    store.add_argument("--block-size", type=int, default=2048, help="tokens per block (default: 2048)")
    store.add_argument("--shard-size", type=float, default=32, help="target shard size in MiB (default: 32)")
    store.add_argument(
        "--piece-size",
        type=int,
        default=1024,
        help="piece size in KiB, a power of two from 64 to 16384: the unit hashed, fetched and "
        "verified (default: 1024)",
    )
    store.add_argument(
        "--workers",
        type=int,
        default=0,
        help="0 (default): all cores, on the Rust tokenizer's threads in this process, or in one "
        "process per core with --filters (Python) or TOKENIZERS_PARALLELISM=false; 1: in this "
        "process, on the Rust tokenizer's threads; N: in N processes. The output does not "
        "depend on it",
    )
    store.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip and count malformed lines and empty files instead of stopping",
    )
    store.add_argument("--max-document-size", type=at_least(0, float), metavar="MIB", help=MAX_DOCUMENT_HELP)
    store.add_argument("--overwrite", action="store_true", help="store again even if the output exists")
    store.add_argument(
        "--perturb",
        metavar="SPEC",
        help="perturb token ids before writing, for privacy (docs/privacy.md): "
        "'krr=EPS' randomized response, 'mask=RATE,mask_id=ID', 'drop=RATE', 'seed=N'; "
        "recorded in the manifest",
    )
    store.add_argument(
        "--filters",
        metavar="CONFIG",
        help="run this filter pipeline (JSON or YAML, docs/filters.md) on each text before "
        "tokenizing; stateless filters only (run dedup with `kogitune filter` first); "
        "recorded in the manifest",
    )
    store.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    store.set_defaults(run=_store)

    filter_ = commands.add_parser(
        "filter",
        help="clean, filter and deduplicate JSONL files with a filter pipeline",
        description="Run a filter pipeline (--config and/or --filter; docs/filters.md) over JSONL files (.jsonl, "
        ".jsonl.gz, .jsonl.zst) into one JSONL file, keeping each document's other keys. A per-filter "
        "report (documents and bytes kept and dropped, score percentiles, dropped examples) is written "
        "to OUT.report.json.",
    )
    filter_.add_argument("files", nargs="+", help="input JSONL files, one document per line")
    filter_.add_argument("--output", "-o", help="output JSONL file (.jsonl, .jsonl.gz or .jsonl.zst)")
    filter_.add_argument("--config", "-c", help="filter pipeline config, .json or .yaml")
    filter_.add_argument(
        "--filter",
        "-f",
        action="append",
        default=[],
        metavar="NAME[:KEY=VALUE,...]",
        help="a filter to run after those of --config; repeat for more, e.g. -f nfkc "
        "-f length:min_chars=200 -f 'language:languages=[\"ja\"]' (values are JSON or text)",
    )
    filter_.add_argument("--text-key", default="text", help="JSON key holding the text (default: text)")
    filter_.add_argument(
        "--workers",
        type=int,
        default=0,
        help="processes for the filters before the first dedup filter (default: all cores)",
    )
    filter_.add_argument(
        "--skip-bad-lines",
        action="store_true",
        help="skip and count malformed lines and empty files instead of stopping",
    )
    filter_.add_argument("--max-document-size", type=at_least(0, float), metavar="MIB", help=MAX_DOCUMENT_HELP)
    filter_.add_argument(
        "--dry-run", action="store_true", help="write no output, only the report (beside -o if given) and the summary"
    )
    filter_.add_argument("--examples", type=int, default=3, help="dropped examples kept per reason (default: 3)")
    filter_.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    filter_.set_defaults(run=_filter)


def store_cli(
    files,
    tokenizer: str = "gpt2",
    output: str | None = None,
    *,
    text_key: str = "text",
    block_size: int = 2048,
    shard_size: int = 32 << 20,
    piece_size: int = 1 << 20,
    workers: int = 0,
    skip_bad_lines: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    perturb: str | None = None,
    filters: str | os.PathLike | dict | None = None,
    max_document_bytes: int | None = None,
):
    """`kogitune store` from Python, as the original Kogitune's users call it: `kogitune.store` with the command's
    defaults, which also prints the summary. `max_document_bytes` None means kogitune.write.MAX_DOCUMENT_BYTES."""
    from ..write import store

    report = store(
        files,
        tokenizer,
        output,
        progress=progress,
        block_size=block_size,
        text_key=text_key,
        shard_size=shard_size,
        piece_size=piece_size,
        workers=workers,
        skip_bad_lines=skip_bad_lines,
        overwrite=overwrite,
        perturb=perturb,
        filters=filters,
        **document_limit(max_document_bytes),
    )
    print(report.summary())
    return report


def _store(args) -> int:
    store_cli(
        args.files,
        args.tokenizer,
        args.output,
        text_key=args.text_key,
        block_size=args.block_size,
        shard_size=int(args.shard_size * (1 << 20)),
        piece_size=args.piece_size << 10,
        workers=args.workers,
        skip_bad_lines=args.skip_bad_lines,
        overwrite=args.overwrite,
        progress=not args.quiet,
        perturb=args.perturb,
        filters=args.filters,
        max_document_bytes=mib(args.max_document_size),
    )
    return EXIT_OK


def filter_cli(
    files,
    output: str | None,
    config,
    *,
    text_key: str = "text",
    workers: int = 0,
    skip_bad_lines: bool = False,
    dry_run: bool = False,
    examples: int = 3,
    progress: bool = True,
    max_document_bytes: int | None = None,
):
    """`kogitune filter` from Python: `kogitune.filter` with the command's defaults, which also prints the summary.
    `max_document_bytes` None means kogitune.write.MAX_DOCUMENT_BYTES."""
    from ..filters import filter

    report = filter(
        files,
        output,
        config,
        progress=progress,
        text_key=text_key,
        workers=workers,
        skip_bad_lines=skip_bad_lines,
        dry_run=dry_run,
        examples=examples,
        **document_limit(max_document_bytes),
    )
    print(report.summary())
    return report


def _filter(args) -> int:
    from ..filters import FilterError, Pipeline, parse_filter_spec

    if not args.config and not args.filter:
        raise FilterError(
            "no filters given; pass --config CONFIG (docs/filters.md) and/or --filter NAME[:KEY=VALUE,...]"
        )
    config = Pipeline.from_config(args.config).to_config() if args.config else {"filters": []}
    config["filters"] += [parse_filter_spec(spec) for spec in args.filter]
    filter_cli(
        args.files,
        args.output,
        config,
        text_key=args.text_key,
        workers=args.workers,
        skip_bad_lines=args.skip_bad_lines,
        dry_run=args.dry_run,
        examples=args.examples,
        progress=not args.quiet,
        max_document_bytes=mib(args.max_document_size),
    )
    return EXIT_OK
