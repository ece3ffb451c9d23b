"""Names on the DHT: a node's own name records put as DHT values, and names resolved from them.

Every Kogitune node (server or client) checks name records with NameValidator, registered for the namespace
`kogitune-name` of py-libp2p's NamespacedValidator: a node stores, serves and accepts only records signed by the
peer the name belongs to, and of two records of a name keeps the newer (higher sequence number). Without it,
py-libp2p would accept any value under any key it has no validator for. `node` is a running Node (daemon.py).
"""

from __future__ import annotations

import logging

import trio

from kogitune.errors import IntegrityError, ManifestError, NodeError
from kogitune.names import next_sequence, own_records, save_own_record
from kogitune.protocol.names import (
    NAME_NAMESPACE,
    NameRecord,
    full_name,
    parse_record,
    record_key,
    select_record,
    sign_name,
)

log = logging.getLogger(__name__)
RESOLVE_DEADLINE = 10.0
"""Seconds a DHT lookup of a name may take before `resolve` says no record was found."""
PEER_ANSWER_SECONDS = 3.0
_KEY_PREFIX = f"/{NAME_NAMESPACE}/"


def name_validator():
    """A py-libp2p Validator of name records (built on first use: libp2p is imported only by the node)."""
    from libp2p.records.validator import Validator

    class NameValidator(Validator):
        def validate(self, key: str, value: bytes) -> None:
            parse_record(value, key[len(_KEY_PREFIX) :])  # ManifestError, IntegrityError: refused

        def select(self, key: str, values: list[bytes]) -> int:
            records = []
            for value in values:
                try:
                    records.append(parse_record(value, key[len(_KEY_PREFIX) :]))
                except Exception:
                    records.append(NameRecord("", -1, "", b""))  # an invalid record never wins
            return select_record(records)

    return NameValidator()


def install(dht) -> None:
    dht.validator.add_validator(NAME_NAMESPACE, name_validator())


async def publish_name(node, short_name: str, dataset_id: str) -> NameRecord:
    """Sign a new version of `<this node's peer ID>/<short_name>` pointing to `dataset_id`, keep it in the names
    file, and put it on the DHT."""
    name = full_name(node.peer_id, short_name)
    previous = own_records(node.config.home).get(short_name)
    record = sign_name(node.seed, name, next_sequence(previous), dataset_id)
    await trio.to_thread.run_sync(save_own_record, node.config.home, short_name, record)
    await announce_name(node, record)
    return record


async def announce_name(node, record: NameRecord) -> None:
    from kogitune.node.providers import CONNECT_TIMEOUT

    try:
        with trio.fail_after(CONNECT_TIMEOUT * 3):
            await node.dht.put_value(record_key(record.name), record.to_bytes())
    except Exception as exc:
        log.warning("announcing the name %s failed: %s", record.name, exc)


async def announce_names(node) -> None:
    for record in (await trio.to_thread.run_sync(own_records, node.config.home)).values():
        await announce_name(node, record)


async def resolve(node, name: str) -> NameRecord:
    """The newest valid record of `name`: this node's own if it is the publisher, else the winner of the records on
    the DHT (validated and selected by NameValidator); NodeError if none is found within RESOLVE_DEADLINE.

    py-libp2p's get_value answers from the node's own value store alone when that holds a record, which may be an
    older version that reached this node before; so the closest peers are asked as well, and the newest wins."""
    publisher, _, short_name = name.partition("/")
    if publisher == node.peer_id:
        own = own_records(node.config.home).get(short_name)
        if own is not None:
            return own
    key = record_key(name)
    values: list[bytes] = []
    with trio.move_on_after(RESOLVE_DEADLINE):
        value = await node.dht.get_value(key)
        if value is not None:
            values.append(value)
            values += await _ask_closest_peers(node, key)
    records = []
    for value in values:
        try:
            records.append(parse_record(value, name))
        except (ManifestError, IntegrityError):
            continue
    if not records:
        raise NodeError(f"no record of the name {name} was found on the DHT")
    return records[select_record(records)]


async def _ask_closest_peers(node, key: str) -> list[bytes]:
    """The values the peers closest to `key` hold for it (each asked within PEER_ANSWER_SECONDS; failures skipped)."""
    from libp2p.kad_dht.pb.kademlia_pb2 import Record

    key_bytes = key.encode()
    found: list[bytes] = []
    peers = await node.dht.peer_routing.find_closest_peers_network(key_bytes)

    async def ask(peer) -> None:
        with trio.move_on_after(PEER_ANSWER_SECONDS):
            try:
                record = await node.dht.value_store._get_from_peer(peer, key_bytes, return_record=True)
            except Exception:
                return
            if isinstance(record, Record) and record.value:
                found.append(record.value)

    async with trio.open_nursery() as nursery:
        for peer in peers:
            if str(peer) != node.peer_id:
                nursery.start_soon(ask, peer)
    return found
