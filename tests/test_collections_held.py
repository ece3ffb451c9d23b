"""Collections in a content store: `kogitune ls` lists them (ID, parts, size, complete), and `rm` of a collection ID
removes its directory and the parts that no other collection or published recipe lock names (--all-parts: all)."""

import json
import os
import shutil

from kogitune.cli import main
from kogitune.content_store import ContentStore
from kogitune.layout import COLLECTION_FILE, part_path
from kogitune.lock import save_published_lock
from kogitune.protocol.collection import Collection, collection_file_bytes
from kogitune.protocol.lock import LockedEntry, RecipeLock


def held_collection(home, parts) -> str:
    """The collection of these part tensors, laid out in the content store of `home` as `get` leaves one."""
    store = ContentStore(home)
    for part in parts:
        if not store.dataset_dir(part.dataset_id).exists():
            shutil.copytree(part.path, store.dataset_dir(part.dataset_id))
    collection = Collection(tuple(part.dataset_id for part in parts))
    directory = store.dataset_dir(collection.dataset_id)
    for index, part in enumerate(parts):
        part_path(directory, index).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.join("..", "..", part.dataset_id), part_path(directory, index))
    (directory / COLLECTION_FILE).write_bytes(collection_file_bytes(collection))
    return collection.dataset_id


def test_ls_lists_collections_and_rm_removes_a_collection_with_its_unshared_parts(parts_collection, tmp_path, capsys):
    home, parts = tmp_path / "home", parts_collection.parts
    whole, first_two = held_collection(home, parts), held_collection(home, parts[:2])
    save_published_lock(home, RecipeLock((LockedEntry(parts[3].dataset_id),)))
    shutil.rmtree(ContentStore(home).dataset_dir(parts[2].dataset_id) / "shards")  # part 2 not complete here
    assert main(["ls", "--home", str(home)]) == 0
    listing = capsys.readouterr().out.split("\n\n")[1].splitlines()
    assert listing[0].split() == ["COLLECTION", "PARTS", "SIZE", "COMPLETE"]
    rows = {line.split()[0]: line.split() for line in listing[1:]}
    assert rows[whole][1] == "4" and rows[whole][-2:] == ["3/4", "parts"]
    assert rows[first_two][1] == "2" and rows[first_two][-1] == "yes"
    size = sum(shard.size for part in parts[:2] for shard in part.shards)
    assert rows[first_two][2:4] == [f"{size / 1e6:.1f}", "MB"]
    assert main(["ls", "--json", "--home", str(home)]) == 0
    listed = {entry["dataset_id"]: entry for entry in json.loads(capsys.readouterr().out)}
    assert listed[whole]["collection"] and listed[whole]["parts"] == [p.dataset_id for p in parts]

    assert main(["rm", whole, "--home", str(home)]) == 0  # parts 0, 1 (another collection) and 3 (a lock) stay
    assert "kept 3 of its parts" in capsys.readouterr().out
    held = {p.name for p in ContentStore(home).datasets.iterdir()}
    assert whole not in held and parts[2].dataset_id not in held
    assert {first_two, parts[0].dataset_id, parts[1].dataset_id, parts[3].dataset_id} <= held
    assert main(["rm", first_two, "--home", str(home)]) == 0  # its parts are no longer named elsewhere
    assert {p.name for p in ContentStore(home).datasets.iterdir()} == {parts[3].dataset_id}


def test_rm_all_parts_removes_parts_named_elsewhere_too(parts_collection, tmp_path, capsys):
    home, parts = tmp_path / "home", parts_collection.parts
    whole, first_two = held_collection(home, parts), held_collection(home, parts[:2])
    assert main(["rm", whole, "--all-parts", "--home", str(home)]) == 0
    assert {p.name for p in ContentStore(home).datasets.iterdir()} == {first_two}
