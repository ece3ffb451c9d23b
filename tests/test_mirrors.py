"""Training from web mirrors: real HTTP server processes, some of them hostile, and the local content store."""

import gc
import json
import os
import re
import subprocess

os.environ.setdefault("KOGITUNE_READ_TIMEOUT", "2")

import numpy as np
import pytest
import torch
from conftest import copy_tensor
from mirrors import mirrors, stdlib_http_server

from kogitune.client import embedded_node, open_mirrors
from kogitune.content_store import ContentStore
from kogitune.corpora import write_kjv_chapters
from kogitune.errors import FetchError
from kogitune.layout import MARKS_FILE
from kogitune.recipe import DatasetRecipe
from kogitune.tensor import DataTensor
from kogitune.write import StoreOptions, store

BLOCK = 64


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A tensor of 5 shards of 4 pieces (64 KiB) each, to be served by mirrors."""
    root = tmp_path_factory.mktemp("served")
    corpus = write_kjv_chapters(root / "kjv.jsonl", limit=300)
    tensor = root / "tensor"
    store(
        [corpus],
        "gpt2",
        tensor,
        StoreOptions(block_size=BLOCK, piece_size=64 << 10, shard_size=256 << 10, workers=1),
        progress=False,
    )
    local = DataTensor(tensor)
    assert len(local.shards) >= 3 and local.manifest.pieces_in(local.shards[0]) == 4
    return local


def all_samples(dataset) -> np.ndarray:
    return np.stack([dataset[i]["input_ids"].numpy() for i in range(len(dataset))])


def expected_samples(local: DataTensor) -> np.ndarray:
    return all_samples(DatasetRecipe([str(local.path)], shuffle=False).get_train_dataset(BLOCK))


def test_one_mirror_gives_the_local_samples(served, tmp_path):
    """A recipe naming a mirror URL yields exactly the samples of the local tensor, in the same order."""
    with mirrors(served.path, "ok") as urls:
        recipe = DatasetRecipe(urls, shuffle=False, store=ContentStore(tmp_path))
        remote = all_samples(recipe.get_train_dataset(BLOCK))
    np.testing.assert_array_equal(remote, expected_samples(served))


@pytest.mark.parametrize("check_threads", ["0", "2"])
def test_hostile_mirrors_cannot_spoil_the_data(served, tmp_path, monkeypatch, check_threads):
    """Corrupting, dying, hanging and 404 mirrors beside one good one: the data is complete and byte-identical,
    whichever of them happened to deliver (the corrupting one flips only the first byte of each response, so its
    other pieces are fine; test_no_good_mirror_is_a_clear_error shows a lying mirror is dropped). Pieces are
    checked on check threads (the default), and between receives."""
    monkeypatch.setenv("KOGITUNE_CHECK_THREADS", check_threads)
    with mirrors(served.path, "corrupt", "die", "hang", "not-found", "ok") as urls:
        tensor = open_mirrors(urls, ContentStore(tmp_path))
        for index in range(len(tensor.shards)):
            tensor.shard_tokens(index)
    assert tensor.verify() == []
    for shard in served.shards:
        assert (tensor.path / shard.tokens_path).read_bytes() == (served.path / shard.tokens_path).read_bytes()


def test_stdlib_http_server_without_range_support(served, tmp_path):
    """`python -m http.server` ignores Range; shards still arrive whole and verified."""
    with stdlib_http_server(served.path) as url:
        tensor = open_mirrors([url], ContentStore(tmp_path))
        for index in reversed(range(len(tensor.shards))):
            tensor.shard_tokens(index)
    assert tensor.verify() == []


def test_no_good_mirror_is_a_clear_error(served, tmp_path):
    """When every mirror fails, reading a sample raises FetchError naming the shard and each source's fault."""
    with mirrors(served.path, "ok") as good:
        tensor = open_mirrors(good, ContentStore(tmp_path))
    with mirrors(served.path, "corrupt", "not-found") as bad:
        tensor = open_mirrors(bad, ContentStore(tmp_path))
        with pytest.raises(FetchError) as caught:
            tensor.shard_tokens(1)
    message = str(caught.value)
    assert "shard 00001" in message and "wrong hash" in message and "HTTP 404" in message


def test_a_mirror_with_a_broken_manifest_is_named_with_the_reason(served, tmp_path):
    """The schema error a mirror's manifest has is in the error, beside the mirror's URL (before: only "sent a
    manifest.json that does not match the manifest")."""
    broken = copy_tensor(served, tmp_path / "broken")
    manifest = json.loads((broken / "manifest.json").read_bytes())
    manifest["format"] = "kogitune-tensor/9"
    (broken / "manifest.json").write_text(json.dumps(manifest))
    with mirrors(broken, "ok") as urls:
        with pytest.raises(FetchError) as caught:
            open_mirrors(urls, ContentStore(tmp_path / "store"))
    assert f"{urls[0]}: dropped, manifest.json is not a valid manifest: manifest format is 'kogitune-tensor/9'" in str(
        caught.value
    )


@pytest.mark.parametrize("kind", ["pieces", "docs"])
def test_a_mirror_with_a_wrong_pieces_or_docs_file_is_named_with_the_file(served, tmp_path, kind):
    broken = copy_tensor(served, tmp_path / "broken")
    shard = served.shards[0]
    path = broken / getattr(shard, f"{kind}_path")
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(data)
    with mirrors(broken, "ok") as urls:
        tensor = open_mirrors(urls, ContentStore(tmp_path / "store"))
        with pytest.raises(FetchError) as caught:
            tensor.shard_tokens(0)
    wanted = {"pieces": "does not match the root in the manifest", "docs": "does not match docs_sha256"}[kind]
    assert f"{urls[0]}: dropped, shard {shard.name}: shards/{shard.name}.{kind} {wanted}" in str(caught.value)


def test_partial_shard_resumes(served, tmp_path):
    """Verified pieces of an interrupted download are kept; only the missing ones are fetched."""
    content = ContentStore(tmp_path)
    with mirrors(served.path, "ok") as urls:
        tensor = open_mirrors(urls, content)
        shard = tensor.shards[0]
        original = (served.path / shard.tokens_path).read_bytes()
        piece = tensor.manifest.piece_size
        partial = tensor.path / (shard.tokens_path + ".partial")
        partial.write_bytes(original[: piece * 3] + b"\0" * (len(original) - piece * 3))
        tensor.shard_tokens(0)
        fetched = embedded_node().source_bytes(urls)[urls[0]]
    assert (tensor.path / shard.tokens_path).read_bytes() == original
    assert fetched == len(original) - piece * 3
    assert not partial.exists()


def test_resuming_hashes_the_partial_file_a_piece_at_a_time(served, tmp_path):
    """Resuming keeps exactly the pieces that match and holds one piece in memory, whatever the shard's size (it
    read the whole .partial file at once before: MemoryError for an 8 GiB shard). Here a shard of 64 pieces."""
    import dataclasses
    import hashlib
    import tracemalloc

    from kogitune.node.fetch import ShardFetch
    from kogitune.node.pool import SourcePool
    from kogitune.node.sources import HttpSource

    piece = served.manifest.piece_size
    shard = dataclasses.replace(served.shards[0], size=64 * piece)
    original = os.urandom(shard.size)
    damaged = bytearray(original)
    for index in (1, 63):
        damaged[index * piece + 5] ^= 1
    (tmp_path / "shards").mkdir()
    partial = tmp_path / (shard.tokens_path + ".partial")
    partial.write_bytes(damaged)
    fetch = ShardFetch(tmp_path, served.manifest, shard, SourcePool([HttpSource("http://127.0.0.1:9")]))
    fetch.expected = b"".join(hashlib.sha256(original[i : i + piece]).digest() for i in range(0, shard.size, piece))
    fetch._fd = os.open(partial, os.O_RDWR)
    tracemalloc.start()  # traces every thread: earlier tests' background tasks add a little
    try:
        fetch._resume()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        os.close(fetch._fd)
    assert [i for i, done in enumerate(fetch.board.done) if not done] == [1, 63]
    assert peak < 8 * piece  # the whole file is 64 pieces


@pytest.fixture
def small_disk(tmp_path):
    """A real tmpfs of 400 KiB: room for the manifest and one shard of `served` (256 KiB), not for two."""
    disk = tmp_path / "disk"
    disk.mkdir()
    try:
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(disk)], check=True, capture_output=True, timeout=30
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root and mount): {exc}")
    try:
        yield disk
    finally:
        # lazily: this process may still map a shard from it (the mount goes once nothing uses it)
        subprocess.run(["umount", "--lazy", str(disk)], check=True, timeout=30)


@pytest.mark.parametrize("check_threads", ["0", "2"])
def test_a_full_disk_names_the_file_and_keeps_the_verified_pieces(served, small_disk, monkeypatch, check_threads):
    """Disk full while a shard arrives: one FetchError naming the file, the cause and the verified pieces kept
    (before: "Exceptions from Trio nursery (2 sub-exceptions)"); with room again, the fetch resumes from them.
    Written on check threads or between receives, the same."""
    monkeypatch.setenv("KOGITUNE_CHECK_THREADS", check_threads)
    shard = served.shards[1]
    piece = served.manifest.piece_size
    with mirrors(served.path, "ok") as urls:
        tensor = open_mirrors(urls, ContentStore(small_disk))
        tensor.shard_tokens(0)
        with pytest.raises(FetchError) as caught:
            tensor.shard_tokens(1)
        partial = tensor.path / (shard.tokens_path + ".partial")
        message = str(caught.value)
        assert f"shard {shard.name}: cannot write {partial}: No space left on device; " in message
        kept = int(re.search(r"; (\d+) of 4 verified pieces are kept in it, and fetching again", message)[1])
        subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True, timeout=30)
        before = embedded_node().source_bytes(urls)[urls[0]]
        tokens = bytes(tensor.shard_tokens(1))
        fetched = embedded_node().source_bytes(urls)[urls[0]] - before
    del tensor  # its open shards, on the disk that goes next (the fd count of a later test must not change)
    gc.collect()
    assert tokens == (served.path / shard.tokens_path).read_bytes()
    assert fetched == shard.size - kept * piece


def test_a_cached_shard_damaged_before_it_was_synced_is_fetched_again(served, tmp_path):
    """As after a crash between the fetcher's rename and its fsync: the shard's files are in place, the tokens
    zeroed, with no verification record. Opening it finds that and fetches it again, instead of failing or using it."""
    content = ContentStore(tmp_path)
    shard = served.shards[1]
    original = (served.path / shard.tokens_path).read_bytes()
    with mirrors(served.path, "ok") as urls:
        tensor = open_mirrors(urls, content)
        (tensor.path / "shards").mkdir(exist_ok=True)
        for name in (shard.pieces_path, shard.docs_path):
            (tensor.path / name).write_bytes((served.path / name).read_bytes())
        (tensor.path / shard.tokens_path).write_bytes(b"\0" * len(original))
        tokens = tensor.shard_tokens(1)
        fetched = embedded_node().source_bytes(urls)[urls[0]]
    assert bytes(tokens) == original
    assert (tensor.path / shard.tokens_path).read_bytes() == original
    assert fetched == len(original)


def test_a_fetched_shard_is_recorded_as_verified_once_synced(served, tmp_path):
    """When a fetch task ends, its fsync done, the marks file vouches for the shard (so another process opens it
    without hashing), and the fetch left no file open and no partial file behind."""
    import trio

    from kogitune.node.fetch import ShardFetch
    from kogitune.node.pool import SourcePool
    from kogitune.node.sources import HttpSource

    def open_files() -> tuple[list[str], int]:
        """What this process has open under tmp_path, and how many sockets (other tests' objects may close theirs
        meanwhile: a count of all descriptors is not this fetch's)."""
        targets = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                targets.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:  # closed since the listing (listdir's own descriptor)
                pass
        return [t for t in targets if t.startswith(str(tmp_path))], sum(t.startswith("socket:") for t in targets)

    shard = served.shards[1]
    (tmp_path / "shards").mkdir()
    with mirrors(served.path, "ok") as urls:
        files_before, sockets_before = open_files()

        async def main():
            fetch = ShardFetch(tmp_path, served.manifest, shard, SourcePool([HttpSource(urls[0])]))
            async with trio.open_nursery() as nursery:
                await nursery.start(fetch.run)
                assert (tmp_path / shard.tokens_path).read_bytes() == (served.path / shard.tokens_path).read_bytes()

        trio.run(main)
        files_after, sockets_after = open_files()
        assert files_after == files_before == [] and sockets_after <= sockets_before
    marks = json.loads((tmp_path / MARKS_FILE).read_bytes())
    assert marks["dataset_id"] == served.dataset_id and list(marks["shards"]) == [shard.name]
    assert not list(tmp_path.glob("shards/*.partial"))


def test_several_good_mirrors_share_a_shard_without_sending_a_piece_twice(served, tmp_path, monkeypatch):
    """Each worker claims its start piece before its request, so two never start at the same piece (the endgame,
    which may duplicate a piece claimed long ago, is pushed out of reach here)."""
    import trio

    from kogitune.node import fetch as fetch_module
    from kogitune.node.fetch import ShardFetch
    from kogitune.node.pool import SourcePool
    from kogitune.node.sources import HttpSource

    monkeypatch.setattr(fetch_module, "STALE_CLAIM_SECONDS", 3600.0)
    (tmp_path / "shards").mkdir()
    (tmp_path / "manifest.json").write_bytes((served.path / "manifest.json").read_bytes())
    with mirrors(served.path, "ok", "ok", "ok") as urls:
        for shard in served.shards:
            fetch = ShardFetch(tmp_path, served.manifest, shard, SourcePool([HttpSource(url) for url in urls]))

            async def main(fetch: ShardFetch = fetch) -> None:
                async with trio.open_nursery() as nursery:
                    await nursery.start(fetch.run)

            trio.run(main)
            assert fetch.bytes_received == shard.size
    assert DataTensor(tmp_path).verify() == []


def test_one_mirror_streams_a_lone_shard_over_two_connections_each_asking_for_its_run_only(
    served, tmp_path, monkeypatch
):
    """A shard fetched alone gets a second connection to an HTTP source (Source.connections); the two streams share
    the shard's pieces, each asking for its own run only (bytes=A-B, reserved for it: node/piece_board.py), so the
    server sends every byte once: nothing in flight is thrown away (bytes_discarded)."""
    import trio

    from kogitune.node import fetch as fetch_module
    from kogitune.node.fetch import ShardFetch
    from kogitune.node.pool import SourcePool
    from kogitune.node.sources import HttpSource

    asked = []

    class Recording(HttpSource):
        def stream(self, path, start, end=None):
            if path.endswith(".tokens"):
                asked.append((start, end))
            return super().stream(path, start, end)

    monkeypatch.setattr(fetch_module, "STALE_CLAIM_SECONDS", 3600.0)
    (tmp_path / "shards").mkdir()
    shard, piece = served.shards[0], served.manifest.piece_size
    with mirrors(served.path, "ok") as urls:
        pool = SourcePool([Recording(urls[0])])
        fetch = ShardFetch(tmp_path, served.manifest, shard, pool)

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                await nursery.start(fetch.run)

        trio.run(main)
    assert sorted(asked) == [(0, 2 * piece), (2 * piece, shard.size)], asked
    assert fetch.bytes_received == shard.size and pool.health[0].streams == 0
    assert pool.health[0].bytes_discarded == 0
    assert (tmp_path / shard.tokens_path).read_bytes() == (served.path / shard.tokens_path).read_bytes()


def test_a_mirror_that_cannot_seek_keeps_one_connection(served, tmp_path):
    """A second stream from a server without Range support would only receive the same bytes again."""
    import trio

    from kogitune.node.fetch import ShardFetch
    from kogitune.node.pool import SourcePool
    from kogitune.node.sources import HttpSource

    (tmp_path / "shards").mkdir()
    with stdlib_http_server(served.path) as url:
        source = HttpSource(url)
        assert source.connections == 2
        for shard in served.shards[:2]:
            fetch = ShardFetch(tmp_path, served.manifest, shard, SourcePool([source]))

            async def main(fetch: ShardFetch = fetch) -> None:
                async with trio.open_nursery() as nursery:
                    await nursery.start(fetch.run)

            trio.run(main)
    assert source.connections == 1
    assert fetch.bytes_received == shard.size, "the second shard streamed over one connection"


def test_cache_evicts_least_recently_used_unpinned_shards(served, tmp_path):
    """gc keeps the store under its limit, oldest-used shards first, never a pinned dataset's nor a shard that a
    process maps; an evicted shard is fetched again when needed."""
    content = ContentStore(tmp_path)
    with mirrors(served.path, "ok") as urls:
        tensor = open_mirrors(urls, content)
        for index in range(len(tensor.shards)):
            tensor.shard_tokens(index)
            for suffix in ("used", "tokens"):  # last used: the later of the last open and the fetch
                os.utime(tensor.path / "shards" / f"{tensor.shards[index].name}.{suffix}", (1000 + index,) * 2)
        shard_size = content.shards()[0].size
        assert content.gc(limit_bytes=0) == []
        tensor = open_mirrors(urls, content)  # the first tensor and its maps are gone
        evicted = content.gc(limit_bytes=shard_size * 2)
        assert [s.name for s in evicted] == [s.name for s in tensor.shards[: len(tensor.shards) - 2]]
        assert {s.name for s in content.shards()} == {s.name for s in tensor.shards[-2:]}
        content.pin(tensor.dataset_id)
        assert content.gc(limit_bytes=0) == []
        again = open_mirrors(urls, content)
        assert again.shard_tokens(0).tobytes() == (served.path / tensor.shards[0].tokens_path).read_bytes()


def test_dataloader_workers_over_a_mirror_see_every_sample_once(served, tmp_path):
    """Two DataLoader worker processes, each with its own embedded node, share the store and the epoch."""
    with mirrors(served.path, "ok") as urls:
        dataset = DatasetRecipe(urls, store=ContentStore(tmp_path)).get_train_dataset(BLOCK)
        loader = torch.utils.data.DataLoader(dataset, batch_size=16, num_workers=2)
        seen = torch.cat([batch["input_ids"] for batch in loader]).numpy()
    expected = expected_samples(served)
    assert len(seen) == len(expected)

    def as_rows(a):
        return sorted(map(bytes, a.astype(np.int64)))

    assert as_rows(seen) == as_rows(expected)
