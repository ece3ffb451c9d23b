"""The `kogitune` command line, and `store_cli` for the same from Python."""

from __future__ import annotations

import argparse
import os
import sys
import traceback

from .errors import KogituneError

EXIT_OK, EXIT_DAMAGED, EXIT_ERROR, EXIT_BUG = 0, 1, 2, 3


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
    """Python form of `kogitune store`: tokenize JSONL files into a data tensor, print a summary, return the report.
    `max_document_bytes` None means kogitune.store.MAX_DOCUMENT_BYTES."""
    from .perturb import PerturbSpec
    from .store import StoreOptions, store

    if isinstance(files, (str, os.PathLike)):
        files = [files]
    options = StoreOptions(
        block_size=block_size,
        text_key=text_key,
        shard_size=shard_size,
        piece_size=piece_size,
        workers=workers,
        skip_bad_lines=skip_bad_lines,
        overwrite=overwrite,
        perturb=PerturbSpec.parse(perturb) if perturb else None,
        filters=_filter_config(filters) if filters is not None else None,
        **_document_limit(max_document_bytes),
    )
    report = store(files, tokenizer, output, options, progress=progress)
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
        max_document_bytes=_mib(args.max_document_size),
    )
    return EXIT_OK


def _mib(size: float | None) -> int | None:
    return None if size is None else int(size * (1 << 20))


def _document_limit(max_document_bytes: int | None) -> dict:
    """The max_document_bytes option, when one is given (else the options' default holds)."""
    return {} if max_document_bytes is None else {"max_document_bytes": max_document_bytes}


def _filter_config(config: str | os.PathLike | dict) -> dict:
    """A filter config file (JSON, or YAML with PyYAML) or dict, checked by building its pipeline."""
    from .filters import Pipeline

    return Pipeline.from_config(config).to_config()


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
    """Python form of `kogitune filter`: filter JSONL files into OUT.jsonl and OUT.report.json, print a summary.
    `max_document_bytes` None means kogitune.store.MAX_DOCUMENT_BYTES."""
    from .filters.run import FilterOptions, filter_files

    if isinstance(files, (str, os.PathLike)):
        files = [files]
    options = FilterOptions(
        text_key=text_key,
        workers=workers,
        skip_bad_lines=skip_bad_lines,
        dry_run=dry_run,
        examples=examples,
        **_document_limit(max_document_bytes),
    )
    report = filter_files(files, output, config, options, progress=progress)
    print(report.summary())
    return report


def _filter(args) -> int:
    from .filters import FilterError, Pipeline, parse_filter_spec

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
        max_document_bytes=_mib(args.max_document_size),
    )
    return EXIT_OK


def _verify(args) -> int:
    from .tensor import DataTensor

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
    from .tensor import DataTensor

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
    from .errors import TokenizerError
    from .tensor import DataTensor
    from .tokenizer import load_tokenizer

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


def _cache(args) -> int:
    from .cache import ContentStore, age, cache_limit_bytes

    content = ContentStore(_home(args))
    if args.action == "gc":
        limit = int(args.limit * 1e9) if args.limit is not None else cache_limit_bytes()
        evicted = content.gc(limit)
        partials = sum(s.partial for s in evicted)
        print(
            f"evicted {len(evicted) - partials} shard(s) and {partials} partial file(s), "
            f"{sum(s.size for s in evicted) / 1e6:.1f} MB; the store now holds "
            f"{sum(s.size for s in content.shards(partial=True)) / 1e6:.1f} MB (limit {limit / 1e9:.1f} GB)"
        )
        return EXIT_OK
    shards = content.shards(partial=True)
    by_dataset: dict[str, list] = {}
    for shard in shards:
        by_dataset.setdefault(shard.dataset_id, []).append(shard)
    print(
        f"{content.home}: {len(by_dataset)} dataset(s), {sum(s.size for s in shards) / 1e6:.1f} MB "
        f"(limit {cache_limit_bytes() / 1e9:.1f} GB)"
    )
    for dataset_id, held in by_dataset.items():
        pinned = ", pinned" if held[0].pinned else ""
        complete = [s for s in held if not s.partial]
        partial = [s for s in held if s.partial]
        unfinished = (
            f"  {len(partial)} partial file(s) {sum(s.size for s in partial) / 1e6:.1f} MB (unfinished fetches)"
            if partial
            else ""
        )
        print(
            f"{dataset_id}  {len(complete)} shard(s)  {sum(s.size for s in complete) / 1e6:.1f} MB{unfinished}  "
            f"used {age(max(s.last_used for s in held))}{pinned}"
        )
    return EXIT_OK


def _at_least(low, kind):
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


def _home(args):
    from pathlib import Path

    from .cache import kogitune_home

    return Path(args.home).expanduser() if getattr(args, "home", None) else kogitune_home()


def _node(args) -> int:
    from .client import DaemonClient
    from .settings import configure, settings

    home = _home(args)
    if args.action == "start":
        configure(home, {"reprovide_interval": args.reprovide_interval})  # before the node's modules read them
        from kogitune.node.service import check_start, run_node, start_detached

        if args.detach:
            check_start(home, args.listen or [], args.bootstrap or [])
            argv = ["node", "start", "--home", str(home), "--reprovide-interval", str(settings().reprovide_interval)]
            argv += [x for a in args.listen or [] for x in ("--listen", a)]
            argv += [x for b in args.bootstrap or [] for x in ("--bootstrap", b)]
            print(start_detached(home, argv))
            return EXIT_OK
        run_node(home, args.listen or [], args.bootstrap or [], settings().reprovide_interval)
        return EXIT_OK
    client = DaemonClient(home)
    if args.action == "stop":
        client.call("stop", timeout=30)
        print(f"stopping the node of {home}")
        return EXIT_OK
    status = client.call("status", timeout=30)
    if args.action == "peers":
        for peer in status["connected_peers"]:
            print(peer)
        return EXIT_OK
    print(f"peer id     {status['peer_id']}")
    for address in status["addresses"]:
        print(f"listening   {address}")
    print(f"peers       {len(status['connected_peers'])} connected")
    print(f"dht         {len(status['dht_peers'])} peers in the routing table")
    print(f"datasets    {len(status['datasets'])}")
    for dataset_id in status["datasets"]:
        print(f"            {dataset_id}")
    damaged = status.get("damaged", [])
    if damaged:
        print(f"damaged     {len(damaged)} withheld from peers")
    for entry in damaged:
        what = entry["shard"] if entry["shard"].endswith(".json") else f"shard {entry['shard']} ({entry['file']})"
        print(f"            {entry['dataset']} {what}: {entry['problem']}")
    changed = status.get("changed", [])
    if changed:
        print(
            f"changed     {len(changed)} shards changed since verified, not checked again yet (withheld until a "
            "peer's request has them re-checked; not known to be damaged)"
        )
    for entry in changed:
        print(f"            {entry['dataset']} shard {entry['shard']}")
    print(f"served      {status['bytes_served'] / 1e6:.1f} MB; fetched {status['bytes_fetched'] / 1e6:.1f} MB")
    return EXIT_OK


def _publish(args) -> int:
    from pathlib import Path

    from .client import DaemonClient

    reply = DaemonClient(_home(args)).call("publish", path=str(Path(args.directory).resolve()), allow=args.allow)
    print(reply["id"])
    return EXIT_OK


def _get(args) -> int:
    """`open` first (lookup and signed manifest), then `get` on a thread with no time limit (a whole dataset can
    take hours; the node gives up on a shard that makes no progress for its stall timeout) while a bar follows the
    verified bytes (control op `progress`, piece by piece) and the complete shard files."""
    import threading
    from pathlib import Path

    from tqdm import tqdm

    from .client import DaemonClient
    from .tensor import DataTensor

    client = DaemonClient(_home(args))
    directory = Path(client.call("open", id=args.dataset_id)["directory"])
    shards = DataTensor(directory).shards
    outcome: dict = {}

    def get() -> None:
        try:
            outcome["reply"] = client.call("get", timeout=None, id=args.dataset_id)
        except KogituneError as exc:
            outcome["error"] = exc

    def present() -> int:
        return sum(s.size for s in shards if (directory / s.tokens_path).exists())

    def verified() -> int:
        try:
            return client.call("progress", timeout=5, id=args.dataset_id)["bytes_verified"]
        except KogituneError:
            return 0

    held_before = present()
    verified_before = verified()
    worker = threading.Thread(target=get, daemon=True)
    worker.start()
    with tqdm(
        total=sum(s.size for s in shards),
        initial=held_before,
        unit="B",
        unit_scale=True,
        disable=args.quiet,
        desc=args.dataset_id[:12],
    ) as bar:
        while worker.is_alive():
            worker.join(0.5)
            done = max(present(), held_before + verified() - verified_before)
            bar.update(min(done, bar.total) - bar.n)
    if "error" in outcome:
        raise outcome["error"]
    if held_before == bar.total:
        print(f"{args.dataset_id} -> {outcome['reply']['directory']} (already complete here; nothing fetched)")
    else:
        print(f"{args.dataset_id} -> {outcome['reply']['directory']}\n  sources: {outcome['reply']['sources']}")
    return EXIT_OK


def _status(args) -> int:
    from .client import DaemonClient

    reply = DaemonClient(_home(args)).call("providers", id=args.dataset_id)
    providers = reply["providers"]
    print(f"{args.dataset_id}: {len(providers)} provider(s)")
    for entry in providers:
        held = f"{entry['shards']}/{entry['of']} shards" if "shards" in entry else f"error: {entry['error']}"
        print(f"  {entry['peer']}  {held}{'  (this node)' if entry.get('this_node') else ''}")
    return EXIT_OK


MAX_DOCUMENT_HELP = (
    "a longer input line (one JSON document) is a bad line, in MiB (default: 16, "
    "kogitune.store.MAX_DOCUMENT_BYTES); no more than this of a line is held in memory"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kogitune", description="Tokenize text once into content-addressed data tensors; share and train on them."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
    store.add_argument("--max-document-size", type=_at_least(0, float), metavar="MIB", help=MAX_DOCUMENT_HELP)
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
    filter_.add_argument("--max-document-size", type=_at_least(0, float), metavar="MIB", help=MAX_DOCUMENT_HELP)
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
    head.add_argument("-n", type=_at_least(1, int), default=3, help="number of blocks (default: 3)")
    head.add_argument(
        "--chars",
        type=_at_least(0, int),
        default=600,
        help="cut each block's text after this many characters (0: no limit; default: 600)",
    )
    head.add_argument("--tokenizer", help="tokenizer to decode with (default: the one named in the manifest)")
    head.set_defaults(run=_head)

    cache = commands.add_parser(
        "cache",
        help="list or trim the local store of fetched datasets",
        description="The local store ($KOGITUNE_HOME, default ~/.cache/kogitune) keeps fetched shards. "
        "`ls` lists its datasets; `gc` evicts unpinned shards and the partial files of unfinished "
        "fetches, least recently used first, until the store fits its limit ($KOGITUNE_CACHE_LIMIT in "
        "GB, default 50 GB). It skips what a process is fetching or reading.",
    )
    cache.add_argument("action", choices=["ls", "gc"])
    home_help = (
        "node home: identity, store, control socket, log (default: $KOGITUNE_HOME, else "
        "$XDG_CACHE_HOME/kogitune, else ~/.cache/kogitune)"
    )
    cache.add_argument(
        "--limit", type=_at_least(0, float), help="with gc: the size to trim to, in GB (default: the limit)"
    )
    cache.add_argument("--home", help=home_help)
    cache.set_defaults(run=_cache)

    node = commands.add_parser(
        "node",
        help="run or talk to a Kogitune node (libp2p host + DHT + data server)",
        description="`start` runs a node in the foreground (`--detach`: in the background): a libp2p host (TCP, "
        "Noise, Yamux) with a persistent identity, a Kademlia DHT in server mode, and the data server; "
        "it announces every complete dataset in its store. `stop`, `status`, `peers` ask a running node.",
    )
    node.add_argument("action", choices=["start", "stop", "status", "peers"])
    node.add_argument("--home", help=home_help)
    node.add_argument(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help="address to listen on (default: /ip4/0.0.0.0/tcp/4011); repeatable",
    )
    node.add_argument(
        "--bootstrap",
        action="append",
        metavar="MULTIADDR",
        help="peer to join through, /ip4/.../tcp/.../p2p/<id>; repeatable; also from "
        "<home>/config.json and $KOGITUNE_BOOTSTRAP",
    )
    node.add_argument(
        "--reprovide-interval",
        type=_at_least(1, float),
        metavar="SECONDS",
        help="announce the datasets again this often (default: the setting reprovide_interval, 21600; DHT records "
        "expire after 48 h)",
    )
    node.add_argument("--detach", action="store_true", help="with start: run in the background, print its address")
    node.set_defaults(run=_node)

    publish = commands.add_parser(
        "publish",
        help="verify a data tensor, add it to the node's store, sign and announce it; print its ID",
        description="Needs a running node (`kogitune node start`). Files are hard-linked into the store where the "
        "file system allows (no second copy). --allow publishes the tensor's private dataset instead: "
        "another ID (printed), whose manifest names this node as its publisher, served only to the "
        "listed peers; their nodes keep the list and serve their copies to the same peers only.",
    )
    publish.add_argument("directory", help="a data tensor directory (the one with manifest.json)")
    publish.add_argument("--allow", action="append", metavar="PEER_ID", help="serve only to this peer; repeatable")
    publish.add_argument("--home", help=home_help)
    publish.set_defaults(run=_publish)

    get = commands.add_parser("get", help="fetch a dataset by ID into the node's store; the node then provides it")
    get.add_argument("dataset_id")
    get.add_argument("--home", help=home_help)
    get.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    get.set_defaults(run=_get)

    status = commands.add_parser("status", help="providers of a dataset ID and how many shards each holds")
    status.add_argument("dataset_id")
    status.add_argument("--home", help=home_help)
    status.set_defaults(run=_status)
    return parser


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


if __name__ == "__main__":
    sys.exit(main())
