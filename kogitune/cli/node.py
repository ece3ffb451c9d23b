"""The `kogitune node` command, which runs or asks a node, and the commands on a node's content store: `ls`, `rm`,
`cache`. `ls` and `cache` read the store of --home directly, so they work with no node running (`ls` asks a running
node which datasets it announces); `rm` goes through the running node when there is one, so that it stops serving
and announcing what is removed (kogitune/client.py's DaemonClient, the control socket).
"""

from __future__ import annotations

from ..errors import NodeNotRunning
from ..settings import DEFAULT_LISTEN, DEFAULTS
from .common import EXIT_OK, HOME_HELP, SETTINGS_HELP, at_least, home_of

STATUS_TIMEOUT = 30.0
"""Seconds `ls` and `node status`/`peers` wait for the running node's status."""


def add_commands(commands) -> None:
    """Add `ls`, `rm`, `cache` and `node` to the `commands` subparsers."""
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


def _ls(args) -> int:
    import json

    from ..catalog import catalog_listing, held_collections, held_datasets
    from ..client import DaemonClient
    from ..content_store import ContentStore

    home = home_of(args)
    datasets = held_datasets(ContentStore(home))
    collections = held_collections(ContentStore(home), datasets)
    try:
        announced: set[str] | None = set(DaemonClient(home).call("status", timeout=STATUS_TIMEOUT)["datasets"])
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
    status = client.call("status", timeout=STATUS_TIMEOUT)
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
