"""Publishing a data tensor from a node: verify it, add it to the store (hard links where possible), sign it (and
the allow-list of a private dataset), announce it. `node` is a running Node (node/daemon.py).
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

import trio

from kogitune.errors import NodeError
from kogitune.files import read_limited, write_atomic
from kogitune.layout import MANIFEST_FILE, SHARDS_DIR, write_allow_files, write_signature
from kogitune.protocol import wire
from kogitune.protocol.compression import sidecar_path
from kogitune.protocol.ids import is_peer_id
from kogitune.protocol.manifest import MAX_MANIFEST_BYTES, Manifest, parse_manifest
from kogitune.protocol.signing import sign_allow_list, sign_dataset


async def publish(node, tensor_path: str, allow: list[str] | None = None) -> str:
    """Verify a tensor, add it to the store (hard links where possible), sign and announce it. With `allow`,
    what is published is the private dataset of this tensor (published_manifest): a new ID, whose manifest names
    this node as its publisher, served only to the peers of `allow` (signed by this node)."""
    from kogitune.tensor import DataTensor

    bad = [peer for peer in allow or () if not is_peer_id(peer)]
    if bad:
        raise NodeError(f"--allow {bad[0]!r} is not a peer ID; `kogitune node status` prints a node's peer id")
    allow = sorted(set(allow or ()))
    if len(" ".join(allow)) > wire.MAX_ALLOW_CHARS:
        raise NodeError(
            f"--allow lists {len(allow)} peers, more than fit in a manifest response "
            f"({wire.MAX_ALLOW_CHARS} characters, about 1,200 peer IDs)"
        )
    tensor = await trio.to_thread.run_sync(DataTensor, tensor_path)
    manifest = published_manifest(tensor_path, tensor.manifest, node.peer_id, allow)
    dataset_id = manifest.dataset_id
    directory = node.store.make_dataset_dir(dataset_id, manifest.is_private)
    problems = await trio.to_thread.run_sync(_add_to_store, tensor, directory, manifest)
    if problems:
        raise NodeError(f"{tensor_path} is damaged ({problems[0]}); store it again before publishing")
    if allow:  # before the signature: a node serves a dataset once its manifest and signature are there
        write_allow_files(directory, allow, sign_allow_list(node.seed, dataset_id, allow))
    signature, public_key = sign_dataset(node.seed, dataset_id)
    write_signature(directory, public_key, signature)
    node.store.pin(dataset_id)
    await node.announce(dataset_id)
    return dataset_id


def published_manifest(tensor_path: str, manifest: Manifest, publisher: str, allow: list[str]) -> Manifest:
    """The manifest that `publisher` publishes for a tensor: the tensor's own (public) one without `allow`, with it
    the tensor's private dataset (Manifest.made_private: a different ID, naming `publisher`). Only a dataset's
    publisher may publish it again, to change its allow-list."""
    if manifest.access is None:
        return manifest.made_private(publisher) if allow else manifest
    if manifest.access.publisher != publisher:
        raise NodeError(
            f"{tensor_path} is a private dataset of {manifest.access.publisher}: only that node can "
            "publish it (publish the public tensor it was made from to publish your own copy)"
        )
    if not allow:
        raise NodeError(
            f"{tensor_path} is a private dataset: give --allow PEER_ID ... (its new allow-list), or "
            "publish the public tensor it was made from to publish it for everyone (another ID)"
        )
    return manifest


def _add_to_store(tensor, directory: Path, manifest: Manifest) -> list:
    """Put a tensor's files into its store directory and check them there (on a worker thread); returns the
    problems found. Tokens files (and compressed sidecars, if any) are hard links where the file system allows it (no second copy), the small files
    copies; nothing is a symbolic link. Each shard is hashed as it is in the store and marked verified
    (`check_and_mark`), so that the server can tell when a file changes later, e.g. by an edit through the user's
    hard link."""
    from kogitune.tensor import DataTensor

    if manifest is tensor.manifest:
        manifest_bytes = _read_published(tensor.path / MANIFEST_FILE, MAX_MANIFEST_BYTES)
        if parse_manifest(manifest_bytes).dataset_id != tensor.dataset_id:
            raise NodeError(f"{tensor.path / MANIFEST_FILE} changed while it was being published; publish it again")
    else:  # the tensor's private dataset: its own manifest (published_manifest)
        manifest_bytes = manifest.canonical_bytes()
    (directory / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    for shard in tensor.shards:
        _link_or_copy(tensor.path / shard.tokens_path, directory / shard.tokens_path)
        if (tensor.path / sidecar_path(shard)).is_file():  # `kogitune compress`; checked before it is served
            _link_or_copy(tensor.path / sidecar_path(shard), directory / sidecar_path(shard))
        for name, size in (
            (shard.pieces_path, tensor.manifest.pieces_in(shard) * 32),
            (shard.docs_path, shard.docs_size),
        ):
            write_atomic(directory / name, _read_published(tensor.path / name, size), durable=False)
    write_atomic(directory / MANIFEST_FILE, manifest_bytes)
    stored = DataTensor(directory)
    return [problem for shard in stored.shards for problem in stored.check_and_mark(shard)]


def _refuse_link(path: Path) -> NodeError:
    return NodeError(
        f"{path} is a symbolic link: a published tensor must hold its own files (a node would otherwise "
        "serve whatever the link points to later). Replace the link by a copy of its target "
        f'(cp --remove-destination "$(readlink -f {path})" {path}), then publish again'
    )


def _read_published(path: Path, limit: int) -> bytes:
    """A small file of a tensor being published (at most `limit` + 1 bytes: a longer one fails its check)."""
    try:
        return read_limited(path, limit, follow_links=False)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse_link(path) from None
        raise NodeError(f"cannot read {path}: {exc.strerror}") from None


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link to `source` (no second copy) where the file system allows it, else a copy; atomic either way.
    A symbolic link is refused, never linked or followed."""
    try:
        if os.path.samestat(os.lstat(source), os.lstat(target)):
            return
    except FileNotFoundError:
        pass
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp, follow_symlinks=False)
    except FileNotFoundError:
        raise NodeError(f"{source} is missing; store the tensor again") from None
    except OSError:
        _copy_no_links(source, tmp)
    if tmp.is_symlink():
        tmp.unlink()
        raise _refuse_link(source)
    os.replace(tmp, target)


def _copy_no_links(source: Path, target: Path) -> None:
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _refuse_link(source) from None
        raise
    with open(fd, "rb") as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
