"""Commands that talk to a node or its content store: `ls`, `rm`, `cache`, `node`, `publish`, `get`, `status`."""

from __future__ import annotations

from ..errors import KogituneError, NodeNotRunning
from ..settings import DEFAULT_LISTEN, DEFAULTS
from .common import EXIT_OK, HOME_HELP, SETTINGS_HELP, at_least, home_of


def add_commands(commands) -> None:
    """Add the node and content-store commands to the `commands` subparsers."""
    ls = commands.add_parser(
        "ls",
        help="list the datasets of the node's store (tokenizer, documents, tokens, size, complete, access), then "
        "its collections (ID, parts, size, complete)",
        description="Read from the content store of --home, so it works with no node running; with one running, "
        "an ANNOUNCED column says which datasets it announces (signed ones it holds a shard of). Private datasets "
        "(publish --allow) are listed, marked private. A collection's parts are datasets too, listed as such.",
    )
    ls.add_argument("--home", help=HOME_HELP)
    ls.add_argument("--json", action="store_true", help="one JSON list of objects instead of columns")
    ls.set_defaults(run=_ls)

    rm = commands.add_parser(
        "rm",
        help="stop announcing a dataset or collection and remove it from the node's store",
        description="Through the running node of --home (which then stops serving and announcing it), else "
        "directly. Refused while a process of this machine reads or fetches the dataset, unless --force. "
        "A published tensor's own directory (the one given to `publish`) is not touched. A collection ID: "
        "removes the collection's directory and those of its parts that no other collection of the store and no "
        "recipe lock published from it names (--all-parts: every part held).",
    )
    rm.add_argument("dataset_id")
    rm.add_argument("--force", action="store_true", help="remove it even while a process reads or fetches it")
    rm.add_argument("--all-parts", action="store_true", help="with a collection ID: remove every part of it held")
    rm.add_argument("--home", help=HOME_HELP)
    rm.set_defaults(run=_rm)

    cache = commands.add_parser(
        "cache",
        help="list or trim the local store of fetched datasets",
        description="The local store ($KOGITUNE_HOME, default ~/.cache/kogitune) keeps fetched shards. "
        "`ls` lists its datasets; `gc` evicts unpinned shards and the partial files of unfinished "
        "fetches, least recently used first, until the store fits its limit (the setting cache_limit, in GB, "
        f"default {DEFAULTS.cache_limit:g} GB). It skips what a process is fetching or reading. {SETTINGS_HELP}",
    )
    cache.add_argument("action", choices=["ls", "gc"])
    cache.add_argument(
        "--limit", type=at_least(0, float), help="with gc: the size to trim to, in GB (default: the limit)"
    )
    cache.add_argument("--home", help=HOME_HELP)
    cache.set_defaults(run=_cache)

    node = commands.add_parser(
        "node",
        help="run or talk to a Kogitune node (libp2p host + DHT + data server)",
        description="`start` runs a node in the foreground (`--detach`: in the background): a libp2p host (TCP, "
        "Noise, Yamux) with a persistent identity, a Kademlia DHT in server mode, and the data server; "
        "it announces every complete dataset in its store. `stop`, `status`, `peers` ask a running node. "
        f"{SETTINGS_HELP}",
    )
    node.add_argument("action", choices=["start", "stop", "status", "peers"])
    node.add_argument("--home", help=HOME_HELP)
    node.add_argument(
        "--listen",
        action="append",
        metavar="MULTIADDR",
        help=f"address to listen on (default: {DEFAULT_LISTEN}); repeatable",
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
        type=at_least(1, float),
        metavar="SECONDS",
        help="announce the datasets again this often (default: the setting reprovide_interval, "
        f"{DEFAULTS.reprovide_interval:g}; DHT records expire after 48 h)",
    )
    node.add_argument(
        "--metrics",
        metavar="[HOST:]PORT",
        help="with start: serve Prometheus metrics at /metrics and a status page at / on this address (HOST "
        "defaults to 127.0.0.1; port 0: any free one, shown by `node status`); default: the setting metrics_port "
        "(0: off)",
    )
    node.add_argument(
        "--data-listen",
        metavar="[HOST:]PORT|off",
        help="with start: serve the public datasets over HTTP range requests (the web-mirror layout) on this "
        "address, announced to peers; default: the host of the first --listen address and the setting data_port "
        "(0: any free port); off: no data port (also the setting data_port_on 0)",
    )
    node.add_argument("--detach", action="store_true", help="with start: run in the background, print its address")
    node.add_argument(
        "--until-unused",
        action="store_true",
        help="with start: stop once no process holds a lock on <home>/node.users (how training processes start "
        "the node of their host, kogitune.hostnode)",
    )
    node.set_defaults(run=_node)

    publish = commands.add_parser(
        "publish",
        help="verify a data tensor, add it to the node's store, sign and announce it; print its ID",
        description="Needs a running node (`kogitune node start`). Files are hard-linked into the store where the "
        "file system allows (no second copy). --allow publishes the tensor's private dataset instead: "
        "another ID (printed), whose manifest names this node as its publisher, served only to the "
        "listed peers; their nodes keep the list and serve their copies to the same peers only.",
    )
    publish.add_argument(
        "directory",
        help="a data tensor directory (the one with manifest.json), a collection directory (collection.json; "
        "each part is published too), or a lock file (`kogitune lock`): its recipe ID is printed and "
        'DatasetRecipe(["kgr1-..."]) then opens it on any machine',
    )
    publish.add_argument("--allow", action="append", metavar="PEER_ID", help="serve only to this peer; repeatable")
    publish.add_argument(
        "--name",
        metavar="NAME",
        help="also point the name <this node's peer ID>/NAME to the dataset: a signed record with a new version "
        "number, announced on the DHT (the newest valid one wins); `kogitune resolve` reads it",
    )
    publish.add_argument("--home", help=HOME_HELP)
    publish.set_defaults(run=_publish)

    get = commands.add_parser(
        "get",
        help="fetch a dataset or collection by ID into the node's store; the node then provides it",
        description="Fetches every shard from the peers that provide the ID and from the web mirrors named with "
        "--mirror, all at once; every piece is checked against the ID. The node provides the dataset once it holds "
        "it, if the copy carries its publisher's signature (a mirror of a published directory serves one). A "
        "collection ID: its signed collection manifest, then each part by its own ID, then the node provides the "
        "collection too.",
    )
    get.add_argument("dataset_id")
    get.add_argument(
        "--mirror",
        action="append",
        metavar="URL",
        help="a web mirror of the dataset (http(s) URL of a data tensor directory, or of a collection directory: "
        "its parts are then fetched from under it too), used beside the peers; repeatable",
    )
    get.add_argument("--home", help=HOME_HELP)
    get.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    get.set_defaults(run=_get)

    status = commands.add_parser(
        "status", help="providers of a dataset ID and how many shards each holds (of a collection: of each part)"
    )
    status.add_argument("dataset_id")
    status.add_argument("--home", help=HOME_HELP)
    status.set_defaults(run=_status)


def _ls(args) -> int:
    import json

    from ..catalog import catalog_listing, held_collections, held_datasets
    from ..client import DaemonClient
    from ..content_store import ContentStore

    home = home_of(args)
    datasets = held_datasets(ContentStore(home))
    collections = held_collections(ContentStore(home), datasets)
    try:
        announced: set[str] | None = set(DaemonClient(home).call("status", timeout=30)["datasets"])
    except NodeNotRunning:
        announced = None
    if args.json:
        is_announced = (lambda d: d.dataset_id in announced) if announced is not None else (lambda d: None)
        listed = [d.to_json(is_announced(d)) for d in datasets] + [c.to_json(is_announced(c)) for c in collections]
        print(json.dumps(listed, indent=1))
        return EXIT_OK
    if not datasets and not collections:
        print(f"no datasets in {home}")
        return EXIT_OK
    print(catalog_listing(datasets, collections, announced))
    return EXIT_OK


def _rm(args) -> int:
    from ..catalog import collection_removal
    from ..client import DaemonClient
    from ..content_store import ContentStore

    home = home_of(args)
    doomed, kept = collection_removal(ContentStore(home), args.dataset_id, args.all_parts)
    for dataset_id in doomed:
        try:
            DaemonClient(home).call("remove", timeout=60, id=dataset_id, force=args.force)
            print(f"removed {dataset_id} from {home}; the node no longer serves or announces it")
        except NodeNotRunning:
            ContentStore(home).remove(dataset_id, args.force)
            print(f"removed {dataset_id} from {home}")
    if kept:
        print(f"kept {len(kept)} of its parts, which another collection or a published recipe lock names")
    return EXIT_OK


def _cache(args) -> int:
    from ..content_store import ContentStore, age, cache_limit_bytes

    content = ContentStore(home_of(args))
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


def _node(args) -> int:
    from ..client import DaemonClient
    from ..settings import configure, settings

    home = home_of(args)
    if args.action == "start":
        configure(home, {"reprovide_interval": args.reprovide_interval})  # before the node's modules read them
        from kogitune.node.service import check_start, run_node, start_detached

        if args.detach:
            check_start(home, args.listen or [], args.bootstrap or [], args.metrics, args.data_listen)
            argv = ["node", "start", "--home", str(home), "--reprovide-interval", str(settings().reprovide_interval)]
            argv += [x for a in args.listen or [] for x in ("--listen", a)]
            argv += [x for b in args.bootstrap or [] for x in ("--bootstrap", b)]
            argv += ["--metrics", args.metrics] if args.metrics is not None else []
            argv += ["--data-listen", args.data_listen] if args.data_listen is not None else []
            argv += ["--until-unused"] if args.until_unused else []
            print(start_detached(home, argv))
            return EXIT_OK
        run_node(
            home,
            args.listen or [],
            args.bootstrap or [],
            settings().reprovide_interval,
            args.metrics,
            args.data_listen,
            args.until_unused,
        )
        return EXIT_OK
    client = DaemonClient(home)
    if args.action == "stop":
        client.stop()
        print(f"stopped the node of {home}")
        return EXIT_OK
    status = client.call("status", timeout=30)
    if args.action == "peers":
        peers = status["connected_peers"]
        print(f"{len(peers)} peer{'' if len(peers) == 1 else 's'}")
        for peer in peers:
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
    if status.get("data_port"):
        print(f"data port   {status['data_port']} (public datasets over HTTP: http://<this host>:<port>/<ID>/)")
    if status.get("metrics"):
        print(f"metrics     {status['metrics']}metrics (Prometheus); status page {status['metrics']}")
    return EXIT_OK


def _publish(args) -> int:
    from pathlib import Path

    from ..client import DaemonClient
    from .names import lock_file, publish_lock

    path = str(Path(args.directory).resolve())
    lock = lock_file(path)
    if lock is not None:
        return publish_lock(args, lock)
    reply = DaemonClient(home_of(args)).call("publish", path=path, allow=args.allow, name=args.name)
    print(reply["id"])
    if args.name is not None:
        print(f"name {reply['name']} (version {reply['seq']})")
    return EXIT_OK


def _get(args) -> int:
    """`open` first (lookup and signed manifest), then `get` on a thread with no time limit (a whole dataset can
    take hours; the node gives up on a shard that makes no progress for its stall timeout) while a bar follows the
    verified bytes (control op `progress`, piece by piece) and the complete shard files. A collection: each part
    so, with its mirrors under the collection's (layout.part_url), then the collection (its manifest is then in the
    store, and the node provides it if it is signed)."""
    from pathlib import Path

    from ..client import DaemonClient
    from ..layout import part_url

    client = DaemonClient(home_of(args))
    mirrors = args.mirror or []
    opened = client.call("open", id=args.dataset_id, mirrors=mirrors)
    if opened.get("parts") is not None:  # a collection: each part as a dataset, then the collection itself
        for index, part_id in enumerate(opened["parts"]):
            print(f"part {index:05d} of {len(opened['parts'])}:")
            part_mirrors = [part_url(url, index) for url in opened.get("mirrors", [])]
            part = client.call("open", id=part_id, mirrors=part_mirrors)
            _get_one(args, client, part_id, Path(part["directory"]), part_mirrors)
        reply = client.call("get", timeout=None, id=args.dataset_id, mirrors=mirrors)
        print(f"{args.dataset_id} -> {reply['directory']} (a collection of {len(opened['parts'])} parts)")
        return EXIT_OK
    return _get_one(args, client, args.dataset_id, Path(opened["directory"]), mirrors)


def _get_one(args, client, dataset_id: str, directory, mirrors: list[str]) -> int:
    """Fetch one dataset whose manifest the node opened into `directory`, with a progress bar."""
    import threading

    from tqdm import tqdm

    from ..tensor import DataTensor

    shards = DataTensor(directory).shards
    outcome: dict = {}

    def get() -> None:
        try:
            outcome["reply"] = client.call("get", timeout=None, id=dataset_id, mirrors=mirrors)
        except KogituneError as exc:
            outcome["error"] = exc

    def present() -> int:
        return sum(s.size for s in shards if (directory / s.tokens_path).exists())

    def verified() -> int:
        try:
            return client.call("progress", timeout=5, id=dataset_id)["bytes_verified"]
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
        desc=dataset_id[:12],
    ) as bar:
        while worker.is_alive():
            worker.join(0.5)
            done = max(present(), held_before + verified() - verified_before)
            bar.update(min(done, bar.total) - bar.n)
    if "error" in outcome:
        raise outcome["error"]
    if held_before == bar.total:
        print(f"{dataset_id} -> {outcome['reply']['directory']} (already complete here; nothing fetched)")
    else:
        print(f"{dataset_id} -> {outcome['reply']['directory']}\n  sources: {outcome['reply']['sources']}")
    return EXIT_OK


def _status(args) -> int:
    from ..client import DaemonClient

    reply = DaemonClient(home_of(args)).call("providers", id=args.dataset_id)
    providers = reply["providers"]
    whole = [entry for entry in providers if entry.get("collection")]
    if whole or any("part" in entry for entry in providers):
        print(f"{args.dataset_id}: a collection; {len(whole)} provider(s) of all its parts")
        for entry in whole:
            print(f"  {entry['peer']}{'  (this node)' if entry.get('this_node') else ''}")
        providers = [entry for entry in providers if not entry.get("collection")]
    else:
        print(f"{args.dataset_id}: {len(providers)} provider(s)")
    for entry in providers:
        held = f"{entry['shards']}/{entry['of']} shards" if "shards" in entry else f"error: {entry['error']}"
        part = f"part {entry['part']:05d} {entry['part_id']}  " if "part" in entry else ""
        print(f"  {part}{entry['peer']}  {held}{'  (this node)' if entry.get('this_node') else ''}")
    return EXIT_OK
