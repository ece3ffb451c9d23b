"""The have answers of the first peers of an open by ID, asked beside its manifest.

An open by ID alone (node/swarm.py) asks the bootstrap peers it is connected to for the signed manifest
(node/manifest_race.py). At the same moment it asks each of them the wire's `have` request, which needs only the
dataset ID: the answer names the peer's data port and its have-map (peers.fetch_data_port). Once the manifest is
in, every peer that has answered joins the dataset's pool at once, its data port with it (peer_http.add_data_port),
and those that answer later join as they answer; so the first shard starts on every data port at once rather than
on libp2p streams, and asks no have-map again. A have answer is trusted no more than a provider record: a peer that
answers is one more source whose every piece is checked against the manifest, and one that lacks the dataset
(not_found) or does not answer joins nothing. Every request is bounded by the read timeout; the open waits for the
answers at most DATA_PORT_WAIT_SECONDS (swarm.py), which they have usually beaten: they were asked with the manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from kogitune.errors import SourceError

from .peers import fetch_data_port

log = logging.getLogger(__name__)


class HaveAnswers:
    """The have answers of one dataset's peers, each asked once in the background (`ask`) and handed to `join`
    from the moment it is attached (`attach`)."""

    def __init__(self, host, dataset_id: str, read_timeout: float, nursery: trio.Nursery) -> None:
        self.host = host
        self.dataset_id = dataset_id
        self.read_timeout = read_timeout
        self.nursery = nursery
        self._asked: dict[str, trio.Event] = {}
        self._answers: list[tuple] = []
        self._join: Callable[..., None] | None = None

    def ask(self, peer_id) -> None:
        """Ask `peer_id` for its have answer in the background, unless it was asked already."""
        if str(peer_id) not in self._asked:
            self._asked[str(peer_id)] = trio.Event()
            self.nursery.start_soon(self._ask, peer_id)

    async def _ask(self, peer_id) -> None:
        try:
            found, shards = await fetch_data_port(self.host, peer_id, self.dataset_id, self.read_timeout)
        except SourceError as exc:  # it lacks the dataset, or did not answer: it joins nothing
            log.debug("no have answer from %s: %s", peer_id, exc)
        else:
            self._answers.append((peer_id, found, shards))
            if self._join is not None:
                self._join(peer_id, found, shards)
        finally:
            self._asked[str(peer_id)].set()

    def attach(self, join: Callable[..., None]) -> None:
        """`join(peer_id, data port or None, have-map bytes)` for each answer: those in already now, the others as
        they arrive."""
        self._join = join
        for answer in self._answers:
            join(*answer)

    async def wait(self, seconds: float) -> None:
        """Until every peer asked has answered (or failed to), at most `seconds`."""
        with trio.move_on_after(seconds):
            for asked in list(self._asked.values()):
                await asked.wait()
