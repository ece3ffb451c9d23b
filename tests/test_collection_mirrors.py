"""Collections on web mirrors: a `kogitune merge` directory on a static web server (real server processes, no node)
is opened by the collection's ID, or by its URL alone, and trains the samples of the local collection; a mirror
that serves another collection, or a wrong part, is dropped and the data stays right."""

import os
import pickle

os.environ.setdefault("KOGITUNE_READ_TIMEOUT", "2")

import numpy as np
import pytest
from conftest import copy_tensor
from kjv_collection import kjv_collection
from mirrors import mirrors

from kogitune.client import embedded_node
from kogitune.collection import DataCollection
from kogitune.content_store import ContentStore
from kogitune.errors import FetchError
from kogitune.layout import COLLECTION_FILE, part_path, part_url, write_signature
from kogitune.protocol.collection import Collection, collection_file_bytes
from kogitune.protocol.signing import peer_id_from_public_key, sign_dataset
from kogitune.recipe import DatasetRecipe

BLOCK = 64
PARTS = 3


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> DataCollection:
    """A collection of 3 parts of a KJV corpus (`merge` output: parts/<index> link to the part directories)."""
    return kjv_collection(tmp_path_factory.mktemp("collection"), 60, PARTS, BLOCK)


def liar(collection: DataCollection, directory, parts: list[int], collection_parts: list[int]):
    """A collection directory whose `parts/<i>` is the collection's part `parts[i]` and whose collection.json names
    the collection's parts `collection_parts` (the true collection when that is 0, 1, 2)."""
    for index, part in enumerate(parts):
        place = part_path(directory, index)
        place.parent.mkdir(parents=True, exist_ok=True)
        place.symlink_to(collection.parts[part].path.resolve(), target_is_directory=True)
    named = Collection(tuple(collection.collection.parts[i] for i in collection_parts))
    (directory / COLLECTION_FILE).write_bytes(collection_file_bytes(named))
    return directory


def samples(recipe: DatasetRecipe) -> np.ndarray:
    dataset = pickle.loads(pickle.dumps(recipe.get_train_dataset(BLOCK)))  # as a DataLoader worker gets it
    return np.stack([dataset[i]["input_ids"].numpy() for i in range(len(dataset))])


def local_samples(collection: DataCollection) -> np.ndarray:
    return samples(DatasetRecipe([str(collection.path)], shuffle=False))


def opened_collection(store: ContentStore, collection_id: str):
    """The OpenCollection the embedded node keeps for this ID, opened for `store`."""
    return embedded_node()._swarms[store.home].collections[collection_id]


def test_a_collection_by_id_and_mirror_trains_the_local_samples_with_no_node(collection, tmp_path):
    """{"id": collection ID, "mirrors": [URL]}: collection.json from the mirror (it hashes to the ID), then each
    part by its ID from `URL/parts/<index>`; the same samples as the local collection, with no node anywhere. The
    list form and the URL alone give the same."""
    expected = local_samples(collection)
    collection_id = collection.dataset_id
    with mirrors(collection.path, "ok") as urls:
        by_dict = DatasetRecipe(
            [{"id": collection_id, "mirrors": urls}], shuffle=False, store=ContentStore(tmp_path / "a")
        )
        assert isinstance(by_dict.tensors()[0], DataCollection)
        np.testing.assert_array_equal(samples(by_dict), expected)
        by_list = DatasetRecipe([[collection_id, urls[0]]], shuffle=False, store=ContentStore(tmp_path / "b"))
        np.testing.assert_array_equal(samples(by_list), expected)
        by_url = DatasetRecipe(urls, shuffle=False, store=ContentStore(tmp_path / "c"))
        assert by_url.tensors()[0].dataset_id == collection_id
        np.testing.assert_array_equal(samples(by_url), expected)
        for index, part_id in enumerate(collection.collection.parts):
            assert f"{part_url(urls[0], index)}: ok" in embedded_node().report(part_id)
    assert DataCollection(ContentStore(tmp_path / "a").dataset_dir(collection_id)).verify() == []


def test_a_mirror_serving_another_collection_is_dropped_for_the_collection_and_its_parts(collection, tmp_path):
    """A mirror whose collection.json is another collection's (the parts in another order), asked first, beside an
    honest one: the samples are right, the liar is dropped with the reason, and no part is asked of it."""
    lying = liar(collection, tmp_path / "liar", [2, 1, 0], [2, 1, 0])
    with mirrors(lying, "ok") as bad, mirrors(collection.path, "ok") as good:
        store = ContentStore(tmp_path / "s")
        recipe = DatasetRecipe([{"id": collection.dataset_id, "mirrors": bad + good}], shuffle=False, store=store)
        np.testing.assert_array_equal(samples(recipe), local_samples(collection))
        opened = opened_collection(store, collection.dataset_id)
        assert opened.mirrors == good and "collection.json is the collection kg1-" in opened.dropped[bad[0]]
        for part_id in collection.collection.parts:
            assert bad[0] not in embedded_node().report(part_id)
    with mirrors(lying, "ok") as bad:  # the liar alone: a clear error naming it
        with pytest.raises(FetchError, match="no source gave a valid manifest"):
            DatasetRecipe([[collection.dataset_id, bad[0]]], store=ContentStore(tmp_path / "t")).tensors()


def test_a_mirror_serving_a_wrong_part_is_dropped_for_that_part(collection, tmp_path):
    """A mirror with the right collection.json whose parts/00000 is part 1: part 0's manifest from it hashes to
    another ID, so it is dropped for part 0, and every sample is still right."""
    lying = liar(collection, tmp_path / "liar", [1, 1, 2], [0, 1, 2])
    with mirrors(lying, "ok") as bad, mirrors(collection.path, "ok") as good:
        recipe = DatasetRecipe(
            [[collection.dataset_id, *bad, *good]], shuffle=False, store=ContentStore(tmp_path / "s")
        )
        np.testing.assert_array_equal(samples(recipe), local_samples(collection))
        report = embedded_node().report(collection.collection.parts[0])
    assert f"{part_url(bad[0], 0)}: dropped, manifest.json is the manifest of" in report


def test_get_with_a_collection_mirror(collection, nodes):
    """`kogitune get <collection ID> --mirror URL` on a daemon that knows no peer: the collection manifest and
    every part from under the mirror, each part verified; the copy (unsigned: a merge directory has no signature)
    is kept, not announced."""
    d = nodes("d")
    with mirrors(collection.path, "ok") as urls:
        got = d.cli("get", collection.dataset_id, "--mirror", urls[0], "--quiet").stdout
    assert f"(a collection of {PARTS} parts)" in got, got
    for index in range(PARTS):
        assert f"{part_url(urls[0], index)}: ok" in got
    fetched = DataCollection(d.home / "datasets" / collection.dataset_id)
    assert fetched.verify() == [] and np.array_equal(fetched.tokens(), collection.tokens())


def published_copy(collection: DataCollection, directory, seed: bytes):
    """The collection as a publishing node's store lays it out: collection.json, parts/<index> holding the parts
    (copied), and a `signature` of the collection and of each part by the key `seed`."""
    for index, part in enumerate(collection.parts):
        place = copy_tensor(part, part_path(directory, index))
        write_signature(place, *reversed(sign_dataset(seed, part.dataset_id)))
    (directory / COLLECTION_FILE).write_bytes(collection_file_bytes(collection.collection))
    write_signature(directory, *reversed(sign_dataset(seed, collection.dataset_id)))
    return directory


def test_trusted_publishers_need_the_collections_signature_from_its_mirror(collection, tmp_path):
    """A mirror of a published collection serves its `signature` (checked with check_signed, as the collection's):
    trusted_publishers naming its publisher opens it and every part from the mirror alone; naming another refuses
    it, and so does an unsigned mirror (a merge directory)."""
    seed = bytes(range(32))
    publisher = peer_id_from_public_key(sign_dataset(seed, collection.dataset_id)[1])
    stranger = peer_id_from_public_key(sign_dataset(bytes(32), collection.dataset_id)[1])
    signed = published_copy(collection, tmp_path / "published", seed)
    with mirrors(signed, "ok") as urls:
        entry = [[collection.dataset_id, urls[0]]]
        store = ContentStore(tmp_path / "a")
        recipe = DatasetRecipe(entry, shuffle=False, store=store, trusted_publishers=[publisher])
        np.testing.assert_array_equal(samples(recipe), local_samples(collection))
        with pytest.raises(FetchError, match="trusted_publishers does not name it"):
            DatasetRecipe(entry, store=ContentStore(tmp_path / "b"), trusted_publishers=[stranger]).tensors()
    with mirrors(collection.path, "ok") as urls:
        with pytest.raises(FetchError, match="with no valid signature file"):
            DatasetRecipe(
                [[collection.dataset_id, urls[0]]], store=ContentStore(tmp_path / "c"), trusted_publishers=[publisher]
            ).tensors()
