"""Published recipe locks on the DHT: a node's own locks put as DHT values, and locks fetched by recipe ID.

Every Kogitune node checks lock values with the validator of lock_validator, registered for the namespace
`kogitune-lock` of py-libp2p's NamespacedValidator: a value is accepted, stored and served only if it is a lock of
at most MAX_PUBLISHED_LOCK_BYTES whose SHA-256 is the recipe ID of its key (kogitune.protocol.lock). Content-
addressed, a key has one valid value, so any node may store it and none can change it. `node` is a running Node.
"""

from __future__ import annotations

import logging

import trio

from kogitune.errors import IntegrityError, ManifestError, NodeError
from kogitune.lock import published_locks, save_published_lock
from kogitune.protocol.lock import LOCK_NAMESPACE, lock_key, parse_lock, parse_published_lock

from .names import RESOLVE_DEADLINE

log = logging.getLogger(__name__)
_KEY_PREFIX = f"/{LOCK_NAMESPACE}/"


def lock_validator():
    """A py-libp2p Validator of published locks (built on first use: libp2p is imported only by the node)."""
    from libp2p.records.validator import Validator

    class LockValidator(Validator):
        def validate(self, key: str, value: bytes) -> None:
            parse_published_lock(value, key[len(_KEY_PREFIX) :])  # ManifestError, IntegrityError: refused

        def select(self, key: str, values: list[bytes]) -> int:
            return 0  # every valid value of a key is the same bytes

    return LockValidator()


def install(dht) -> None:
    dht.validator.add_validator(LOCK_NAMESPACE, lock_validator())


async def publish_lock(node, data: bytes) -> str:
    """Keep the lock of these published bytes in this node's home and put it on the DHT; its recipe ID."""
    lock = parse_lock(data)
    saved = await trio.to_thread.run_sync(save_published_lock, node.config.home, lock)
    await announce_lock(node, lock.recipe_id, saved)
    return lock.recipe_id


async def announce_lock(node, recipe_id: str, data: bytes) -> None:
    from kogitune.node.providers import CONNECT_TIMEOUT

    try:
        with trio.fail_after(CONNECT_TIMEOUT * 3):
            await node.dht.put_value(lock_key(recipe_id), data)
    except Exception as exc:
        log.warning("announcing the lock %s failed: %s", recipe_id, exc)


async def announce_locks(node) -> None:
    for recipe_id, data in (await trio.to_thread.run_sync(published_locks, node.config.home)).items():
        await announce_lock(node, recipe_id, data)


async def fetch_lock(node, recipe_id: str) -> bytes:
    """The published bytes of the lock `recipe_id`: this node's own, else the first value on the DHT that hashes to
    it; NodeError if none is found within RESOLVE_DEADLINE."""
    own = (await trio.to_thread.run_sync(published_locks, node.config.home)).get(recipe_id)
    if own is not None:
        return own
    value = None
    with trio.move_on_after(RESOLVE_DEADLINE):
        value = await node.dht.get_value(lock_key(recipe_id))
    if value is not None:
        try:
            parse_published_lock(value, recipe_id)
            return value
        except (ManifestError, IntegrityError):
            pass
    raise NodeError(f"no published lock {recipe_id} was found on the DHT")
