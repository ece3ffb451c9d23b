"""Commands that move datasets between the network and the running node of --home: `publish`, `get`, `status`.
Each asks the node over its control socket (kogitune/client.py's DaemonClient); the node does the work.
"""

from __future__ import annotations

from ..errors import KogituneError
from .common import EXIT_OK, HOME_HELP, home_of


def add_commands(commands) -> None:
    """Add `publish`, `get` and `status` to the `commands` subparsers."""
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
