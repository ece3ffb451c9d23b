"""Commands that make data tensors: `store`, `filter`; and `store_cli`, `filter_cli`."""

from __future__ import annotations

import os

from ..errors import KogituneError
from . import stages
from .common import (
    EXIT_OK,
    INPUTS_HELP,
    MAX_DOCUMENT_HELP,
    TEXT_KEY_HELP,
    at_least,
    document_limit,
    mib,
    task_of,
)


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
    store.add_argument(
        "--keep-lists",
        metavar="DIR",
        help="store only the documents that the staged filter run in DIR kept (`kogitune filter ... --parts N "
        "--keep-lists -o DIR`), their texts as its filters left them: the inputs are not written again as filtered "
        "JSONL. Store the inputs it read, whole or as the same N parts",
    )
    split = store.add_mutually_exclusive_group()
    split.add_argument(
        "--task",
        type=task_of,
        metavar="I/N",
        help="store part I of N (I from 0) of the inputs into -o: a deterministic split (whole files, line-aligned "
        "ranges of JSONL files, row groups of Parquet files), so N tasks anywhere make the N parts; then `kogitune "
        "merge` them",
    )
    split.add_argument(
        "--parts",
        type=at_least(1, int),
        metavar="N",
        help="store the inputs as N parts (in -o/parts/) and merge them into a collection -o, with --executor",
    )
    store.add_argument(
        "--executor",
        default="local",
        help="with --parts: 'local' processes (default), or 'ray', one Ray task per part (pip install 'kogitune[ray]')",
    )
    store.add_argument("--address", help="with --executor ray: the Ray cluster's address (default: a local Ray)")
    store.add_argument(
        "--slurm-array",
        metavar="SCRIPT",
        help="with --parts: write an sbatch job-array script (one task per part, then the merge) instead of running",
    )
    store.add_argument(
        "--status", action="store_true", help="with --parts: say which parts of -o are stored, and whether merged"
    )
    store.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    store.set_defaults(run=_store)

    merge = commands.add_parser(
        "merge",
        help="make one collection of data tensors (the parts of `store --task`), copying no bytes",
        description="Write a collection (collection.json: its parts' dataset IDs, in order; and parts/, links to "
        "them) into -o. Parts of one `store --task I/N` split are ordered by I and must all be there; other tensors "
        "keep the order given. The collection has a dataset ID of its own and opens as one dataset.",
    )
    merge.add_argument("parts", nargs="+", help="data tensor directories")
    merge.add_argument("--output", "-o", required=True, help="the collection directory to write")
    merge.set_defaults(run=_merge)

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
    stages.add_arguments(filter_)
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
    keep_lists: str | None = None,
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
        keep_lists=keep_lists,
        **document_limit(max_document_bytes),
    )
    print(report.summary())
    return report


def _store(args) -> int:
    if args.task is not None or args.parts is not None:
        return _store_parts(args)
    if args.slurm_array or args.executor != "local" or args.address or args.status:
        raise KogituneError("--executor, --address, --slurm-array and --status go with --parts N")
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
        keep_lists=args.keep_lists,
    )
    return EXIT_OK


def _store_parts(args) -> int:
    from ..write import StoreOptions
    from ..write.job import options_with

    if args.output is None:
        raise KogituneError("--task and --parts need the output directory: -o DIR")
    settings = {
        "text_key": args.text_key,
        "block_size": args.block_size,
        "shard_size": int(args.shard_size * (1 << 20)),
        "piece_size": args.piece_size << 10,
        "workers": args.workers,
        "skip_bad_lines": args.skip_bad_lines,
        "overwrite": args.overwrite,
        "perturb": args.perturb,
        "filters": args.filters,
        "keep_lists": args.keep_lists,
        **document_limit(mib(args.max_document_size)),
    }
    options = options_with(StoreOptions(), settings)
    if args.status:
        from ..write.parts import parts_status

        if args.parts is None:
            raise KogituneError("--status goes with --parts N")
        print("\n".join(parts_status(args.output, args.parts)))
        return EXIT_OK
    if args.task is not None:
        from ..write.parts import store_part

        print(store_part(args.files, args.task, args.output, args.tokenizer, options, not args.quiet).summary())
        return EXIT_OK
    if args.slurm_array:
        from pathlib import Path

        from ..write.executors import slurm_array_script

        script = Path(args.slurm_array)
        script.write_text(slurm_array_script(args.files, args.parts, args.output, _store_flags(args), script))
        script.chmod(0o755)
        print(f"wrote {script}: {args.parts} array tasks, then the merge into {args.output}; submit with bash {script}")
        return EXIT_OK
    from ..write.executors import run_parts

    reports, merged = run_parts(
        args.files, args.parts, args.output, args.tokenizer, options, args.executor, args.address
    )
    done = sum(report.already_stored for report in reports)
    print(f"{len(reports) - done} parts stored, {done} already stored\n{merged.summary()}")
    return EXIT_OK


def _store_flags(args) -> list[str]:
    """The store options of `args` as command-line flags, for the tasks of a job array."""
    flags = ["--tokenizer", args.tokenizer, "--text-key", args.text_key, "--block-size", str(args.block_size)]
    flags += [
        "--shard-size",
        str(args.shard_size),
        "--piece-size",
        str(args.piece_size),
        "--workers",
        str(args.workers),
    ]
    flags += ["--skip-bad-lines"] if args.skip_bad_lines else []
    flags += ["--overwrite"] if args.overwrite else []
    flags += ["--max-document-size", str(args.max_document_size)] if args.max_document_size is not None else []
    flags += ["--perturb", args.perturb] if args.perturb else []
    flags += ["--filters", args.filters] if args.filters else []
    flags += ["--keep-lists", args.keep_lists] if args.keep_lists else []
    return flags


def _merge(args) -> int:
    from ..write.parts import merge

    print(merge(args.parts, args.output).summary())
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
    if args.parts is not None:
        return stages.filter_in_parts(args, config)
    if args.slurm_array or args.executor != "local" or args.address or args.stage or args.task or args.buckets:
        raise KogituneError("--buckets, --executor, --address, --slurm-array, --stage and --task go with --parts N")
    if args.keep_lists or args.status or args.decision_tasks:
        raise KogituneError("--keep-lists, --status and --decision-tasks go with --parts N (the filter in stages)")
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
