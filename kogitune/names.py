"""Dataset names: `<publisher peer ID>/<name>` pointing to a dataset ID, moved by publishing a new version.

    kogitune publish ./gpt2-f04f/wiki --name wiki2023_tiny     # prints the ID; announces 12D3KooW.../wiki2023_tiny
    kogitune resolve 12D3KooW.../wiki2023_tiny                  # the ID it points to now (from the DHT)
    DatasetRecipe(["12D3KooW.../wiki2023_tiny"])                # resolved when opened; `kogitune lock` pins it

A node keeps the newest record of each name it publishes in `<home>/names.json` (its owner: this module) and puts
it on the DHT again with every announcement; the record format and its checks are kogitune.protocol.names
(docs/protocol.md#names). A bare name (no peer ID) means one of the node's own names.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from kogitune.protocol.names import NameRecord, is_dataset_name, is_short_name, parse_record

from .errors import KogituneError, RecipeError
from .files import read_limited, write_atomic
from .layout import NAMES_FILE

MAX_NAMES_FILE_BYTES = 16 << 20


def own_records(home: Path) -> dict[str, NameRecord]:
    """The records of the names published from `home`, by short name (each checked again: a damaged entry is an
    error, not a silent miss)."""
    try:
        data = read_limited(Path(home) / NAMES_FILE, MAX_NAMES_FILE_BYTES)
    except FileNotFoundError:
        return {}
    try:
        return {short: parse_record(text.encode()) for short, text in json.loads(data).items()}
    except (ValueError, AttributeError) as exc:
        raise KogituneError(f"{Path(home) / NAMES_FILE} is damaged ({exc}); publish the names again") from None


def next_sequence(previous: NameRecord | None) -> int:
    """A new version's sequence number: above the previous one, and at least the time in milliseconds, so a node
    that lost its names file still publishes versions newer than the ones it published before."""
    return max(previous.sequence + 1 if previous is not None else 0, int(time.time() * 1000))


def save_own_record(home: Path, short_name: str, record: NameRecord) -> None:
    records = own_records(home)
    records[short_name] = record
    text = {short: r.to_bytes().decode() for short, r in sorted(records.items())}
    write_atomic(Path(home) / NAMES_FILE, json.dumps(text, indent=1).encode() + b"\n")


def resolve_name(name: str, home: Path | None = None, timeout: float | None = None) -> str:
    """The dataset ID a name points to now: a bare name from the names published from `home`; `<peer ID>/<name>`
    from the newest valid record on the DHT, through the node daemon of `home` when one runs, else through a node
    started in this process (RecipeError when none is found)."""
    from .client import DEFAULT_FETCH_TIMEOUT, DaemonClient
    from .content_store import kogitune_home
    from .errors import NodeNotRunning

    home = Path(home) if home is not None else kogitune_home()
    timeout = timeout or DEFAULT_FETCH_TIMEOUT
    if is_short_name(name):
        record = own_records(home).get(name)
        if record is None:
            raise RecipeError(f"{name}: this node ({home}) publishes no such name; give <peer ID>/{name}")
        return record.dataset_id
    if not is_dataset_name(name):
        raise RecipeError(f"{name!r} is not a dataset name: <peer ID>/<name>, or a name this node publishes")
    try:
        reply = DaemonClient(home).call("resolve", timeout, name=name)
        data = reply["record"].encode()
    except NodeNotRunning:
        from kogitune.node.embedded import EmbeddedNode

        from .settings import settings

        data = EmbeddedNode(settings().read_timeout, home).resolve(name, timeout)
    return parse_record(data, name).dataset_id
