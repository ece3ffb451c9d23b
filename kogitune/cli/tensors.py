"""Commands on data tensors: `store`, `filter`, `verify`, `info`, `head`; and `store_cli`, `filter_cli`."""

from __future__ import annotations

import os
import sys

from .common import EXIT_DAMAGED, EXIT_OK, INPUTS_HELP, MAX_DOCUMENT_HELP, TEXT_KEY_HELP, at_least, document_limit, mib


def add_commands(commands) -> None:
    """Add the tensor commands to the `commands` subparsers."""
    store = commands.add_parser(
        "store",
        help="tokenize JSONL or Parquet files into a data tensor directory",
        description="Tokenize JSONL files (.jsonl, .jsonl.gz, .jsonl.zst), Parquet files and HF datasets saved "
        "to disk into a data tensor directory <tokenizer id>/<input name>. Documents are joined with EOS and packed "
        "into fixed-size blocks.",
    )
    store.add_argument("files", nargs="+", help=INPUTS_HELP)
    store.add_argument(
        "--tokenizer",
        default="gpt2",
        help="built-in 'gpt2' (offline), a tokenizer directory or tokenizer.json, or a hub name (default: gpt2)",
    )
    store.add_argument("--output", "-o", help="output directory (default: <tokenizer id>/<name of first input>)")
    store.add_argument("--text-key", default="text", help=TEXT_KEY_HELP)
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
    filter_.add_argument("files", nargs="+", help=INPUTS_HELP)
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
    filter_.add_argument("--text-key", default="text", help=TEXT_KEY_HELP)
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

    verify = commands.add_parser(
        "verify",
        help="check every piece of a data tensor against its manifest",
        description="Hash every piece of every shard. Exit status 0: intact; 1: damaged "
        "(each bad shard and piece is named); 2: not a readable tensor.",
    )
    verify.add_argument("directory", help="a data tensor directory (the one with manifest.json)")
    verify.set_defaults(run=_verify)

    info = commands.add_parser("info", help="show a data tensor's manifest summary and dataset ID")
    info.add_argument("directory", help="a data tensor directory (the one with manifest.json)")
    info.set_defaults(run=_info)

    head = commands.add_parser("head", help="decode the first blocks of a data tensor")
    head.add_argument("directory", help="a data tensor directory (the one with manifest.json)")
    head.add_argument("-n", type=at_least(1, int), default=3, help="number of blocks (default: 3)")
    head.add_argument(
        "--chars",
        type=at_least(0, int),
        default=600,
        help="cut each block's text after this many characters (0: no limit; default: 600)",
    )
    head.add_argument("--tokenizer", help="tokenizer to decode with (default: the one named in the manifest)")
    head.set_defaults(run=_head)


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


def _verify(args) -> int:
    from ..tensor import DataTensor

    tensor = DataTensor(args.directory)
    problems = tensor.verify()
    for problem in problems:
        print(f"BAD  {problem}")
    if problems:
        print(f"{tensor.path}: {len(problems)} problem(s); store or fetch the tensor again", file=sys.stderr)
        return EXIT_DAMAGED
    print(
        f"OK   {tensor.path}: {len(tensor.shards)} shards, {tensor.manifest.tokens:,} tokens verified "
        f"({tensor.dataset_id})"
    )
    return EXIT_OK


def _info(args) -> int:
    from ..tensor import DataTensor

    tensor = DataTensor(args.directory)
    m = tensor.manifest
    print(f"dataset id  {tensor.dataset_id}")
    print(f"path        {tensor.path}")
    print(
        f"tokenizer   {m.tokenizer.name} ({m.tokenizer.id}, vocab {m.tokenizer.vocab_size:,}, eos {m.tokenizer.eos_id})"
    )
    print(f"tokens      {m.tokens:,} in {m.blocks:,} blocks of {m.block_size} ({m.dtype})")
    print(f"documents   {m.documents:,}")
    print(
        f"shards      {len(m.shards)} ({sum(s.size for s in m.shards) / 1e6:.1f} MB, pieces of {m.piece_size >> 10} KiB)"
    )
    inputs = ", ".join(f"{i['name']} ({i['size']:,} B)" for i in m.provenance.get("inputs", []))
    print(f"inputs      {inputs or '-'}")
    if m.access is not None:
        print(f"access      private, published by {m.access.publisher} (served only to the peers it allows)")
    return EXIT_OK


def _head(args) -> int:
    from ..errors import TokenizerError
    from ..tensor import DataTensor
    from ..tokenizer import load_tokenizer

    tensor = DataTensor(args.directory)
    info = tensor.manifest.tokenizer
    tokenizer = load_tokenizer(args.tokenizer or info.name)
    if tokenizer.fingerprint != info.fingerprint:
        raise TokenizerError(
            f"tokenizer {tokenizer.name!r} ({tokenizer.short_id}) is not the one this tensor was "
            f"stored with ({info.id}); pass that one with --tokenizer"
        )
    count = min(args.n, tensor.manifest.blocks)
    for index in range(count):
        text = tokenizer.decode(tensor.block(index))
        if args.chars and len(text) > args.chars:
            text = text[: args.chars] + "…"
        print(f"--- block {index} ---\n{text}")
    return EXIT_OK
