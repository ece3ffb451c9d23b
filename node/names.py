"""Names on the DHT: a node's own name records put as DHT values, and names resolved from them.

Every Kogitune node (server or client) checks name records with NameValidator, registered for the namespace
`kogitune-name` of py-libp2p's NamespacedValidator: a node stores, serves and accepts only records signed by the
peer the name belongs to, and of two records of a name keeps the newer (higher sequence number). Without it,
py-libp2p would accept any value under any key it has no validator for. `node` is a running Node (daemon.py).
"""

from __future__ import annotations

import logging

import trio

from kogitune.errors import NodeError
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
    """The newest valid record of `name`: this node's own if it is the publisher, else from the DHT (validated and
    selected by NameValidator); NodeError if none is found within RESOLVE_DEADLINE."""
    publisher, _, short_name = name.partition("/")
    if publisher == node.peer_id:
        own = own_records(node.config.home).get(short_name)
        if own is not None:
            return own
    with trio.move_on_after(RESOLVE_DEADLINE):
        value = await node.dht.get_value(record_key(name))
        if value is not None:
            return parse_record(value, name)
    raise NodeError(f"no record of the name {name} was found on the DHT")
