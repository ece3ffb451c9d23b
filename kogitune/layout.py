"""Every path inside a data tensor (dataset) directory and inside a node home, and nothing else.

A data tensor directory (`kogitune store` writes one; a node keeps one per dataset under `<home>/datasets/<id>/`):

    manifest.json              MANIFEST_FILE: what the dataset ID hashes (kogitune.protocol.manifest)
    shards/                    SHARDS_DIR (named by the protocol: ShardInfo.tokens_path is `shards/<name>.tokens`)
      <name>.tokens            the flat tokens; present only once complete and verified
      <name>.pieces            the SHA-256 of each piece of the tokens file
      <name>.docs              where each document starts
      <name>.tokens.partial    the verified pieces of an unfinished fetch (partial_path of the tokens file)
      <name>.lock              held by the process fetching the shard or replacing a damaged copy (shard_lock_path)
      <name>.used              held shared by readers until they map the shard; its mtime is the last use
    .kogitune-verified         MARKS_FILE: which shards passed a full check, as their files were then
    .kogitune-verified.lock    MARKS_LOCK_FILE: taken while the marks file is rewritten
    signature                  SIGNATURE_FILE: the publisher's public key and signature of the ID (a node's copy)
    allow, allow.signature     ALLOW_FILE, ALLOW_SIGNATURE_FILE: a private dataset's allow-list, as its publisher
                               signed it (a node's copy)
    pinned                     PINNED_FILE: keeps the dataset from eviction (a node's copy)

Beside a tensor that `kogitune store` writes to `<out>`: `<out>.partial/` (partial_path: the unfinished tensor, with
its checkpoint) and `.<out>.lock` (store_lock_path: one store into `<out>` at a time).

A node home (`$KOGITUNE_HOME`, see kogitune.content_store.kogitune_home):

    datasets/<id>/             DATASETS_DIR: the content store, one data tensor directory per dataset ID
    datasets/.removing-<id>.*  REMOVING_PREFIX: a dataset directory renamed away by `kogitune rm`, being deleted
    identity.key               IDENTITY_FILE: the node's Ed25519 seed (owner-only); its peer ID
    config.json                CONFIG_FILE: the user's settings (kogitune.settings) and bootstrap peers
    control.sock               CONTROL_SOCKET_FILE: the running node's control socket (owner-only)
    node.lock                  NODE_LOCK_FILE: held while a node runs on this home
    node.log                   LOG_FILE: the node's log
    host-node.lock             HOST_NODE_LOCK_FILE: held by the training process that starts the host's node
    node.users                 NODE_USERS_FILE: shared locks of the processes using a node started for the host
    names.json                 NAMES_FILE: the names this node publishes
    locks/<recipe ID>          LOCKS_DIR: the recipe locks this node publishes

The names are relative; the functions join them to a directory. Nothing here touches the disk except the functions
that write and read the signature file and the allow files, whose formats are owned here: `signature` is 32 bytes of
public key, then 64 of signature; `allow` is one peer ID a line, `allow.signature` the publisher's signature of it.
"""

from __future__ import annotations

from pathlib import Path

from kogitune.protocol.ids import ED25519_KEY_BYTES
from kogitune.protocol.manifest import SHARDS_DIR

from .files import write_atomic

MANIFEST_FILE = "manifest.json"
MARKS_FILE = ".kogitune-verified"
MARKS_LOCK_FILE = MARKS_FILE + ".lock"
SIGNATURE_FILE = "signature"
ALLOW_FILE = "allow"
ALLOW_SIGNATURE_FILE = "allow.signature"
PINNED_FILE = "pinned"
COLLECTION_FILE = "collection.json"
"""A collection's manifest (kogitune.protocol.collection), in a collection directory instead of manifest.json."""
PARTS_DIR = "parts"
"""Where a collection directory holds its parts: `parts/<index, 5 digits>`, a tensor directory or a symbolic link
to one."""

TOKENS, PIECES, DOCS = "tokens", "pieces", "docs"
"""The suffixes of a shard's three files (`shards/<name>.<suffix>`)."""
LOCK, USED = "lock", "used"
"""The suffixes of a shard's two lock files, which are never removed (a process holding a removed one would lock
nothing)."""
PARTIAL = "partial"
"""Appended to a file or folder being written (`<path>.partial`) until it is complete and renamed into place."""

DATASETS_DIR = "datasets"
REMOVING_PREFIX = ".removing-"
IDENTITY_FILE = "identity.key"
CONFIG_FILE = "config.json"
CONTROL_SOCKET_FILE = "control.sock"
NODE_LOCK_FILE = "node.lock"
LOG_FILE = "node.log"
HOST_NODE_LOCK_FILE = "host-node.lock"
"""Held by the training process that starts the node of its host (kogitune.hostnode), so exactly one does."""
NODE_USERS_FILE = "node.users"
"""Each process using a node started for its host holds a shared lock on it; the node (--until-unused) stops once
nobody does (kogitune.hostnode)."""
NAMES_FILE = "names.json"
"""The names this node publishes: {short name: its newest record, as text} (kogitune.names)."""
LOCKS_DIR = "locks"
"""The recipe locks this node publishes: `locks/<recipe ID>`, each its published bytes (kogitune.lock)."""


def shard_file(directory: Path, shard_name: str, suffix: str) -> Path:
    """`<directory>/shards/<shard_name>.<suffix>` (for a ShardInfo, `directory / shard.tokens_path` is the same)."""
    return Path(directory) / SHARDS_DIR / f"{shard_name}.{suffix}"


def shard_lock_path(directory: Path, shard_name: str) -> Path:
    """The lock held by the one process that fetches a shard (or replaces a damaged copy of it)."""
    return shard_file(directory, shard_name, LOCK)


def shard_used_path(directory: Path, shard_name: str) -> Path:
    """The lock that readers hold shared until they have mapped a shard; its mtime says when it was last used."""
    return shard_file(directory, shard_name, USED)


def part_path(collection: Path, index: int) -> Path:
    """`<collection>/parts/<index:05d>`: part `index` of a collection directory."""
    return Path(collection) / PARTS_DIR / f"{index:05d}"


def part_url(collection_url: str, index: int) -> str:
    """`<collection_url>/parts/<index:05d>`: the web mirror of part `index` inside a collection's web mirror (a
    collection directory on a static web server: docs/format.md#collections)."""
    return f"{collection_url.rstrip('/')}/{PARTS_DIR}/{index:05d}"


def partial_path(path: Path) -> Path:
    """`<path>.partial`: where `path` is written until it is complete (a shard's tokens file being fetched, a data
    tensor being stored)."""
    path = Path(path)
    return path.with_name(f"{path.name}.{PARTIAL}")


def store_lock_path(out: Path) -> Path:
    """`.<out>.lock` beside `out`: held by the one `kogitune store` writing into `out`."""
    out = Path(out)
    return out.parent / f".{out.name}.{LOCK}"


def dataset_dir(home: Path, dataset_id: str) -> Path:
    """`<home>/datasets/<dataset_id>`: a node home's copy of one dataset (the ID is not checked here)."""
    return Path(home) / DATASETS_DIR / dataset_id


def write_signature(directory: Path, public_key: bytes, signature: bytes) -> None:
    """Store the publisher's public key and its signature of the dataset ID in a dataset directory (atomically)."""
    write_atomic(Path(directory) / SIGNATURE_FILE, public_key + signature)


def read_signature(directory: Path) -> tuple[bytes, bytes]:
    """The (public key, signature) stored by `write_signature`; raises OSError if there is none."""
    return split_signature((Path(directory) / SIGNATURE_FILE).read_bytes())


def split_signature(data: bytes) -> tuple[bytes, bytes]:
    """The (public key, signature) in the bytes of a signature file (read from disk, or from a web mirror). The
    lengths are not checked here: kogitune.protocol.signing checks them with the signature."""
    return data[:ED25519_KEY_BYTES], data[ED25519_KEY_BYTES:]


def write_allow_files(directory: Path, allow, signature: bytes) -> None:
    """Store an allow-list (one peer ID a line) and the publisher's signature of it in a dataset directory."""
    write_atomic(Path(directory) / ALLOW_FILE, "".join(f"{peer}\n" for peer in allow).encode())
    write_atomic(Path(directory) / ALLOW_SIGNATURE_FILE, signature)


def read_allow_files(directory: Path) -> tuple[tuple[str, ...], bytes]:
    """The allow-list and its signature as `write_allow_files` stored them; empty if there are none."""
    try:
        lines = (Path(directory) / ALLOW_FILE).read_text(encoding="ascii", errors="replace").splitlines()
        signature = (Path(directory) / ALLOW_SIGNATURE_FILE).read_bytes()
    except FileNotFoundError:
        return (), b""
    return tuple(line.strip() for line in lines if line.strip()), signature
