"""What a running node has done, read from the counters its parts keep anyway, and exposed in the Prometheus text
format (`kogitune node start --metrics`; served with the status page by node/status_page.py).

Nothing here counts on its own: the data server keeps bytes served per dataset, requests and refusals
(server.ServerStats) and its slots (DataServer.streams_in_use); each dataset's source pool keeps what every source
delivered, the pieces it verified and rejected, and whether it is banned (pool.SourceHealth); the host's inbound gate
holds its connections (host.InboundGate); the node times its DHT lookups and the fetch service its shard fetches in
`Timings` (the one kind of fact that must be recorded as it happens). `read_node` takes all of it at once into a
`Reading`, on the event loop (a few dictionary walks), and `exposition` turns a Reading into the text a Prometheus
server scrapes, through a prometheus_client collector on a registry of its own (no process-wide global state).

Counters of a dataset's fetch live in its pool, which lives while the dataset is open in this node: `kogitune rm`
ends it, and its fetched-bytes counters restart from 0 if it is fetched again (Prometheus' rate() handles resets).
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field

import trio

from kogitune.catalog import HeldDataset, held_datasets

LOOKUP_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds, in seconds, of the DHT lookup histogram: a lookup answered by a neighbour takes milliseconds, one
that finds nobody runs to the lookup deadline (30 s)."""
SHARD_FETCH_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
"""Upper bounds, in seconds, of the shard fetch histogram (a shard is tens to hundreds of MiB)."""
RATE_WINDOW_SECONDS = 10.0
"""The window over which the fetch and serve rates are measured (sampled every RATE_SAMPLE_SECONDS)."""
RATE_SAMPLE_SECONDS = 1.0
STORE_SCAN_SECONDS = 2.0
"""A reading reuses the scan of the store (every manifest parsed, every shard stat'ed, on a worker thread) if it is
younger than this, so that scrapes in a loop cost one scan per this many seconds."""


class Timings:
    """Durations of one kind of event, by outcome, in fixed buckets: what a Prometheus histogram holds, kept as
    plain numbers so that a node needs prometheus_client only when it serves metrics."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts: dict[str, list[int]] = {}
        """outcome -> observations at or below each bucket's bound (not cumulative), and above the last one."""
        self.sums: dict[str, float] = {}

    def observe(self, outcome: str, seconds: float) -> None:
        counts = self.counts.setdefault(outcome, [0] * (len(self.buckets) + 1))
        counts[next((i for i, bound in enumerate(self.buckets) if seconds <= bound), len(self.buckets))] += 1
        self.sums[outcome] = self.sums.get(outcome, 0.0) + seconds

    def cumulative(self, outcome: str) -> list[tuple[str, int]]:
        """(bound, count at or below it) for each bucket and +Inf, as a Prometheus histogram exposes them."""
        bounds = [*(repr(float(b)) for b in self.buckets), "+Inf"]
        running, result = 0, []
        for bound, count in zip(bounds, self.counts[outcome]):
            running += count
            result.append((bound, running))
        return result


@dataclass
class Rates:
    """Bytes per second fetched (verified) and served over the last RATE_WINDOW_SECONDS, from totals sampled every
    RATE_SAMPLE_SECONDS by `sample_rates`."""

    samples: deque = field(default_factory=lambda: deque(maxlen=int(RATE_WINDOW_SECONDS / RATE_SAMPLE_SECONDS) + 1))

    def add(self, now: float, fetched: int, served: int) -> None:
        self.samples.append((now, fetched, served))

    def per_second(self) -> tuple[float, float]:
        """(fetched, served) bytes per second; 0 before two samples. A total that fell (a dataset removed, its
        pool's counters gone) counts as no progress."""
        if len(self.samples) < 2:
            return 0.0, 0.0
        (t0, f0, s0), (t1, f1, s1) = self.samples[0], self.samples[-1]
        return max(f1 - f0, 0) / (t1 - t0), max(s1 - s0, 0) / (t1 - t0)


@dataclass
class Reading:
    """The node's counters at one moment."""

    peer_id: str
    addresses: list[str]
    connected_peers: list[str]
    dht_peers: int
    served: dict[tuple[str, str], int]
    """(dataset ID, transport: libp2p or http, the data port) -> bytes of its files sent to peers (verified tokens
    ranges, .pieces and .docs; and manifests and signatures over http)."""
    requests: dict[str, int]
    refused: dict[str, int]
    """Streams the data server refused or cut, by reason (busy, evicted, aborted, not_found, bad_request...)."""
    fetched: dict[tuple[str, str], int]
    """(dataset ID, source name) -> verified bytes fetched from that source."""
    discarded: dict[tuple[str, str], int]
    """(dataset ID, source name) -> bytes received from that source and thrown away (over-fetch)."""
    pieces_verified: dict[str, int]
    pieces_rejected: dict[str, int]
    banned_sources: dict[str, int]
    streams_in_use: int
    streams_limit: int
    inbound_connections: int
    inbound_handshakes: int
    fetch_rate: float
    serve_rate: float
    lookups: Timings
    shard_fetches: Timings
    held: list[HeldDataset]

    @property
    def fetched_total(self) -> int:
        return sum(self.fetched.values())

    def served_of(self, dataset_id: str) -> int:
        """Bytes of `dataset_id` served over every transport."""
        return sum(size for (dataset, _), size in self.served.items() if dataset == dataset_id)


def served_now(node) -> int:
    """Bytes the node has served, over libp2p and its data port."""
    return node.server.stats.bytes_served + node.dataport.stats.bytes_served


def _fetched_now(node) -> int:
    """Verified bytes fetched by the node's open datasets, from every source (what the fetch rate follows)."""
    return sum(h.bytes_verified for opened in node.swarm.opened.values() for h in opened.pool.health)


async def sample_rates(node, rates: Rates) -> None:
    """Sample the fetched and served totals every RATE_SAMPLE_SECONDS, for as long as the metrics are served."""
    while True:
        rates.add(trio.current_time(), _fetched_now(node), served_now(node))
        await trio.sleep(RATE_SAMPLE_SECONDS)


class StoreScan:
    """The datasets of the node's store (catalog.held_datasets), scanned on a worker thread at most every
    STORE_SCAN_SECONDS, one scan at a time whoever asks."""

    def __init__(self, store) -> None:
        self.store = store
        self._lock = trio.Lock()
        self._scanned: tuple[float, list[HeldDataset]] = (-math.inf, [])

    async def held(self) -> list[HeldDataset]:
        async with self._lock:
            when, held = self._scanned
            if trio.current_time() - when > STORE_SCAN_SECONDS:
                held = await trio.to_thread.run_sync(held_datasets, self.store)
                self._scanned = (trio.current_time(), held)
            return held


async def read_node(node, rates: Rates, scan: StoreScan) -> Reading:
    """The node's counters now (the store as of its last scan, at most STORE_SCAN_SECONDS old)."""
    held = await scan.held()
    fetched: Counter = Counter()
    discarded: Counter = Counter()
    verified: Counter = Counter()
    rejected: Counter = Counter()
    banned: Counter = Counter()
    for dataset_id, opened in node.swarm.opened.items():
        for health in opened.pool.health:
            fetched[dataset_id, health.source.name] += health.bytes_verified
            discarded[dataset_id, health.source.name] += health.bytes_discarded
            verified[dataset_id] += health.pieces_verified
            rejected[dataset_id] += health.pieces_rejected
            banned[dataset_id] += bool(health.banned)
    gate = getattr(node.host.get_network(), "kogitune_inbound_gate", None)  # made at the first incoming connection
    fetch_rate, serve_rate = rates.per_second()
    stats = node.server.stats
    return Reading(
        peer_id=node.peer_id,
        addresses=node.addresses(),
        connected_peers=sorted(str(p) for p in node.host.get_connected_peers()),
        dht_peers=len(node.dht.routing_table.get_peer_ids()),
        served={
            **{(dataset, "libp2p"): size for dataset, size in stats.served.items()},
            **{(dataset, "http"): size for dataset, size in node.dataport.stats.served.items()},
        },
        requests=dict(stats.requests),
        refused=dict(stats.refused),
        fetched=dict(fetched),
        discarded=dict(discarded),
        pieces_verified=dict(verified),
        pieces_rejected=dict(rejected),
        banned_sources=dict(banned),
        streams_in_use=node.server.streams_in_use,
        streams_limit=node.server.limits.streams_total,
        inbound_connections=len(gate.connections) if gate else 0,
        inbound_handshakes=len(gate.handshakes) if gate else 0,
        fetch_rate=fetch_rate,
        serve_rate=serve_rate,
        lookups=node.lookup_timings,
        shard_fetches=node.swarm.shard_timings,
        held=held,
    )


def exposition(reading: Reading) -> bytes:
    """The reading in the Prometheus text format (version 0.0.4, prometheus_client.CONTENT_TYPE_LATEST)."""
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(reading))
    return generate_latest(registry)


class _Collector:
    """A prometheus_client collector of one Reading: every metric the node exposes is named here."""

    def __init__(self, reading: Reading) -> None:
        self.reading = reading

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        r = self.reading

        def counter(name: str, doc: str, labels: list[str], values: dict) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            for key, value in sorted(values.items()):
                family.add_metric(list(key) if isinstance(key, tuple) else [key], value)
            return family

        def gauge(name: str, doc: str, value: float, labels: list[str] | None = None, values: dict | None = None):
            family = GaugeMetricFamily(name, doc, value=None if labels else value, labels=labels)
            for key, labelled in sorted((values or {}).items()):
                family.add_metric([key], labelled)
            return family

        def histogram(name: str, doc: str, timings: Timings) -> HistogramMetricFamily:
            family = HistogramMetricFamily(name, doc, labels=["outcome"])
            for outcome in sorted(timings.counts):
                family.add_metric([outcome], timings.cumulative(outcome), timings.sums[outcome])
            return family

        yield counter(
            "kogitune_served_bytes",
            "Bytes of verified dataset files sent to peers, by dataset and transport (libp2p, or http: the data port).",
            ["dataset", "transport"],
            r.served,
        )
        yield counter(
            "kogitune_fetched_bytes",
            "Verified bytes fetched, by dataset and source (a peer ID or a mirror URL), while the dataset is open.",
            ["dataset", "source"],
            r.fetched,
        )
        yield counter(
            "kogitune_discarded_bytes",
            "Bytes received from a source and thrown away (a piece another stream delivered first, or cut off "
            "when a slow or stuck stream's run was cut: over-fetch), by dataset and source.",
            ["dataset", "source"],
            r.discarded,
        )
        yield counter(
            "kogitune_pieces_verified", "Pieces fetched whose hash matched, by dataset.", ["dataset"], r.pieces_verified
        )
        yield counter(
            "kogitune_pieces_rejected",
            "Pieces fetched whose hash did not match (each bans its source), by dataset.",
            ["dataset"],
            r.pieces_rejected,
        )
        yield gauge(
            "kogitune_banned_sources", "Sources dropped for a wrong hash, by dataset.", 0, ["dataset"], r.banned_sources
        )
        yield counter("kogitune_requests", "Requests the data server answered, by kind.", ["kind"], r.requests)
        yield counter(
            "kogitune_refused_streams",
            "Streams the data server refused or cut, by reason (busy: every slot taken).",
            ["reason"],
            r.refused,
        )
        yield gauge("kogitune_serving_streams", "Streams being served now.", r.streams_in_use)
        yield gauge("kogitune_serving_streams_limit", "Streams the data server serves at once.", r.streams_limit)
        yield gauge("kogitune_connected_peers", "Peers connected now.", len(r.connected_peers))
        yield gauge("kogitune_dht_peers", "Peers in the DHT routing table.", r.dht_peers)
        yield gauge("kogitune_inbound_connections", "Established incoming connections.", r.inbound_connections)
        yield gauge("kogitune_inbound_handshakes", "Incoming connections in their handshake.", r.inbound_handshakes)
        yield gauge(
            "kogitune_fetch_rate_bytes_per_second",
            f"Verified bytes fetched per second over the last {RATE_WINDOW_SECONDS:g} s.",
            r.fetch_rate,
        )
        yield gauge(
            "kogitune_serve_rate_bytes_per_second",
            f"Bytes served per second over the last {RATE_WINDOW_SECONDS:g} s.",
            r.serve_rate,
        )
        yield histogram(
            "kogitune_dht_lookup_seconds",
            "Provider lookups in the DHT, by outcome (found, none).",
            r.lookups,
        )
        yield histogram(
            "kogitune_shard_fetch_seconds",
            "Shard fetches, from start to verified, by outcome (ok, failed).",
            r.shard_fetches,
        )
        yield gauge(
            "kogitune_store_bytes", "Bytes of shards held in the content store.", sum(d.size_held for d in r.held)
        )
        yield gauge("kogitune_datasets_held", "Datasets in the content store (complete or not).", len(r.held))
