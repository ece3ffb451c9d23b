"""Commands that look at a data tensor, by its directory or by dataset ID: `verify`, `info`, `head`.

A dataset ID is read from the content store of --home when the store holds it. `info` of an ID it does not hold
asks the network for the signed manifest alone (kogitune.client.remote_manifest: no shard, nothing written);
`verify` and `head` read only what is on disk, and say to fetch what is not.
"""

from __future__ import annotations

import sys

from .common import EXIT_DAMAGED, EXIT_OK, HOME_HELP, at_least, home_of

TENSOR_HELP = (
    "a data tensor directory (the one with manifest.json), or a dataset ID (kg1-...) held in the content store of "
    "--home"
)


def add_commands(commands) -> None:
    """Add the commands that look at tensors to the `commands` subparsers."""
    verify = commands.add_parser(
        "verify",
        help="check every piece of a data tensor against its manifest",
        description="Hash every piece of every shard. Exit status 0: intact; 1: damaged "
        "(each bad shard and piece is named); 2: not a readable tensor.",
    )
    verify.add_argument("tensor", metavar="DIR|ID", help=TENSOR_HELP)
    verify.add_argument("--home", help=HOME_HELP)
    verify.set_defaults(run=_verify)

    info = commands.add_parser(
        "info",
        help="show a data tensor's manifest summary and dataset ID",
        description="A dataset ID that the content store does not hold is looked up on the network (through the "
        "running node of --home, else a node started in this process): its signed manifest alone is fetched, no "
        "shard, and nothing is written into the store.",
    )
    info.add_argument("tensor", metavar="DIR|ID", help=TENSOR_HELP)
    info.add_argument("--home", help=HOME_HELP)
    info.set_defaults(run=_info)

    head = commands.add_parser(
        "head",
        help="decode the first blocks of a data tensor",
        description="Reads only what is on disk: for a dataset ID, the shards the content store holds (fetch it "
        "first with `kogitune get ID`).",
    )
    head.add_argument("tensor", metavar="DIR|ID", help=TENSOR_HELP)
    head.add_argument("--home", help=HOME_HELP)
    head.add_argument("-n", type=at_least(1, int), default=3, help="number of blocks (default: 3)")
    head.add_argument(
        "--chars",
        type=at_least(0, int),
        default=600,
        help="cut each block's text after this many characters (0: no limit; default: 600)",
    )
    head.add_argument("--tokenizer", help="tokenizer to decode with (default: the one named in the manifest)")
    head.set_defaults(run=_head)


def _verify(args) -> int:
    tensor = _open(_held(args, "verify"))
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


def _open(directory):
    """The tensor or collection of a directory (the one place where these commands open one)."""
    from ..collection import open_local

    return open_local(directory)


def _local(args):
    """The directory that `args.tensor` names: itself when it exists, else the content store's copy of the dataset
    ID it is; None for an ID that the store does not hold."""
    from pathlib import Path

    from kogitune.protocol.ids import is_dataset_id

    from ..content_store import ContentStore
    from ..layout import COLLECTION_FILE, MANIFEST_FILE

    if Path(args.tensor).exists() or not is_dataset_id(args.tensor):
        return Path(args.tensor)
    directory = ContentStore(home_of(args)).dataset_dir(args.tensor)
    held = (directory / MANIFEST_FILE).is_file() or (directory / COLLECTION_FILE).is_file()
    return directory if held else None


def _held(args, command: str):
    """`_local`, or for an ID the store does not hold, TensorError saying what `command` would need."""
    from ..errors import TensorError

    directory = _local(args)
    if directory is None:
        raise TensorError(
            f"{args.tensor} is not in the content store {home_of(args)}, and `{command}` reads only what is there: "
            f"fetch it with `kogitune get {args.tensor}` (every piece is verified as it arrives); "
            f"`kogitune info {args.tensor}` shows it without fetching"
        )
    return directory


def _info(args) -> int:
    from kogitune.protocol.collection import Collection

    from ..client import remote_manifest
    from ..collection import DataCollection

    directory = _local(args)
    if directory is None:
        m, publisher = remote_manifest(args.tensor, home_of(args))
        where = f"not in the content store {home_of(args)} (manifest from its providers; no shard fetched)"
        dataset_id = args.tensor
        if isinstance(m, Collection):
            print(f"dataset id  {dataset_id}\npath        {where}\npublisher   {publisher}")
            print(f"parts       {len(m.parts)}: " + ", ".join(m.parts) + " (`kogitune info PART` for each)")
            return EXIT_OK
    else:
        tensor = _open(directory)
        m, where, dataset_id = tensor.manifest, str(tensor.path), tensor.dataset_id
        publisher = _publisher(args, dataset_id)
    print(f"dataset id  {dataset_id}")
    print(f"path        {where}")
    if publisher is not None:
        print(f"publisher   {publisher}")
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
    if directory is not None and isinstance(tensor, DataCollection):
        print(f"parts       {len(tensor.parts)}: " + ", ".join(part.dataset_id for part in tensor.parts))
    if m.access is not None:
        print(f"access      private, published by {m.access.publisher} (served only to the peers it allows)")
    return EXIT_OK


def _publisher(args, dataset_id: str) -> str | None:
    """The publisher whose signature of `dataset_id` verifies in the content store (None for a tensor directory, an
    unsigned copy, or an ID the store does not hold)."""
    from pathlib import Path

    from kogitune.node.copies import stored_collection, stored_copy  # files only: no trio or libp2p

    from ..content_store import ContentStore

    if Path(args.tensor).exists():
        return None
    store = ContentStore(home_of(args))
    copy = stored_copy(store, dataset_id) or stored_collection(store, dataset_id)
    return copy.publisher if copy is not None else None


def _head(args) -> int:
    from ..errors import TensorError, TokenizerError
    from ..tokenizer import load_tokenizer

    tensor = _open(_held(args, "head"))
    info = tensor.manifest.tokenizer
    count = min(args.n, tensor.manifest.blocks)
    needed = {int(tensor.shard_first_block.searchsorted(index, side="right")) - 1 for index in range(count)}
    missing = [tensor.shards[i].name for i in sorted(needed) if not tensor.shard_path(i).exists()]
    if missing:
        raise TensorError(
            f"{tensor.path} lacks shard {missing[0]}, which holds the first blocks, and `head` reads only what is "
            f"there: fetch it with `kogitune get {tensor.dataset_id}`"
        )
    tokenizer = load_tokenizer(args.tokenizer or info.name)
    if tokenizer.fingerprint != info.fingerprint:
        raise TokenizerError(
            f"tokenizer {tokenizer.name!r} ({tokenizer.short_id}) is not the one this tensor was "
            f"stored with ({info.id}); pass that one with --tokenizer"
        )
    for index in range(count):
        text = tokenizer.decode(tensor.block(index))
        if args.chars and len(text) > args.chars:
            text = text[: args.chars] + "…"
        print(f"--- block {index} ---\n{text}")
    return EXIT_OK
