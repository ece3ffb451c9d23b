"""The node's metrics port (`kogitune node start --metrics HOST:PORT`, or the setting metrics_port): `/metrics` in
the Prometheus text format and `/`, a small HTML status page (datasets held, peers, rates), over plain HTTP/1.1.

Read-only and bounded, since anyone who can reach the port can ask (it binds 127.0.0.1 unless told otherwise;
docs/security.md): one GET or HEAD per connection, answered and closed; the request head must arrive whole within
StatusLimits.request_timeout and fit StatusLimits.max_request_bytes; the answer must leave within write_timeout; at
most `connections_total` connections are served at once, `connections_per_ip` from one IP, shared fairly between
IPs as the data server's streams are (host.FairSlots: a newcomer evicts the oldest connection of the IP holding the
most). The page holds no script and loads nothing: every value is escaped text, and it refreshes itself.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass
from http import HTTPStatus

import h11
import trio

from kogitune.errors import NodeError
from kogitune.settings import settings

from .host import FairSlots, ip_key
from .metrics import Rates, Reading, StoreScan, exposition, read_node, sample_rates

log = logging.getLogger(__name__)
REFRESH_SECONDS = 5
"""The status page reloads itself this often (a meta refresh tag)."""
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The Prometheus text format that metrics.exposition writes (prometheus_client.generate_latest), which every
Prometheus server reads."""
LINGER_SECONDS = 1.0
LINGER_BYTES = 64 << 10
"""After an error answer to a request that was not read whole, what is read and dropped before the close."""
MAX_PEERS_LISTED = 100
"""Peers named on the status page (the count is always whole)."""


@dataclass(frozen=True)
class StatusLimits:
    """What one client of the metrics port may hold (a scraper sends its request at once and reads a few KiB)."""

    request_timeout: float = 3.0
    """Seconds a connection has, from its accept, to deliver its whole request head."""
    write_timeout: float = 10.0
    """Seconds the answer has to leave (a reader that does not read is cut)."""
    max_request_bytes: int = 8192
    """Bytes of a request head (request line and headers); a longer one is answered 431 and closed."""
    connections_total: int = 16
    """Connections served at once; more are shared fairly between IPs, or closed at accept."""
    connections_per_ip: int = 4
    """Connections from one IP served at once; more are closed at accept."""


def metrics_address(flag: str | None) -> tuple[str, int] | None:
    """Where the metrics port listens: the address of `--metrics` when given, else 127.0.0.1 and the setting
    metrics_port; None when neither asks for it (the default)."""
    if flag is not None:
        return parse_address(flag)
    port = settings().metrics_port
    if port >= 65536:
        raise NodeError(f"the setting metrics_port is {port}; a port is below 65536")
    return ("127.0.0.1", port) if port else None


def parse_address(text: str) -> tuple[str, int]:
    """(host, port) of `--metrics [HOST:]PORT` (host 127.0.0.1 if not given; `[::1]:9100` for IPv6)."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        number = -1
    if not 0 <= number < 65536:
        raise NodeError(f"--metrics {text!r} is not HOST:PORT, such as 127.0.0.1:9100 (port 0: any free port)")
    return host, number


async def serve_status(
    node, host: str, port: int, limits: StatusLimits = StatusLimits(), task_status=trio.TASK_STATUS_IGNORED
) -> None:
    """Serve the metrics and the status page of `node` on host:port until cancelled; started() with the URL."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()
    url = f"http://{f'[{bound[0]}]' if ':' in bound[0] else bound[0]}:{bound[1]}/"
    rates, scan = Rates(), StoreScan(node.store)
    slots: FairSlots[trio.CancelScope] = FairSlots(limits.connections_total, limits.connections_per_ip)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(sample_rates, node, rates)

        async def answer(stream: trio.SocketStream) -> None:
            try:
                ip = ip_key(stream.socket.getpeername())
            except OSError:  # gone already
                await trio.aclose_forcefully(stream)
                return
            scope = trio.CancelScope()
            admitted, evicted = slots.take(ip, scope)
            if evicted is not None:
                evicted.cancel()
            try:
                if admitted:
                    with scope:
                        await _answer(stream, lambda: read_node(node, rates, scan), limits)
            finally:
                slots.release(ip, scope)
                await trio.aclose_forcefully(stream)

        task_status.started(url)
        log.info("metrics and status page on %s", url)
        await trio.serve_listeners(answer, listeners, handler_nursery=nursery)


async def _answer(stream: trio.SocketStream, read, limits: StatusLimits) -> None:
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_request_bytes)
    try:
        with trio.fail_after(limits.request_timeout):
            request = await _read_request(stream, connection, limits.max_request_bytes)
    except h11.RemoteProtocolError as exc:
        await _send(stream, connection, exc.error_status_hint, "text/plain", f"{exc}\n".encode(), limits)
        await _linger(stream)
        return
    except trio.TooSlowError:
        log.debug("metrics port: no whole request within %.0f s", limits.request_timeout)
        return
    if request is None:
        return
    path = request.target.decode("ascii", "replace").split("?")[0]
    if request.method not in (b"GET", b"HEAD"):
        status, kind, body = 405, "text/plain", b"only GET and HEAD\n"
    elif path == "/metrics":
        status, kind, body = 200, METRICS_CONTENT_TYPE, exposition(await read())
    elif path == "/":
        status, kind, body = 200, "text/html; charset=utf-8", status_page(await read()).encode()
    else:
        status, kind, body = 404, "text/plain", b"not found: try / or /metrics\n"
    await _send(stream, connection, status, kind, b"" if request.method == b"HEAD" else body, limits, len(body))


async def _read_request(stream: trio.SocketStream, connection: h11.Connection, limit: int) -> h11.Request | None:
    """The request head; None if the client closed first. A malformed head, or one longer than `limit` bytes, is
    an h11.RemoteProtocolError (its error_status_hint: 400, 431)."""
    received = 0
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(4096)
            received += len(data)
            if received > limit:  # h11's own bound lets a head that arrives in one piece through
                raise h11.RemoteProtocolError(f"request head longer than {limit} bytes", error_status_hint=431)
            connection.receive_data(data)
        elif isinstance(event, h11.Request):
            return event
        else:  # ConnectionClosed
            return None


async def _send(
    stream, connection: h11.Connection, status: int, kind: str, body: bytes, limits: StatusLimits, length=None
) -> None:
    headers = [
        ("content-type", kind),
        ("content-length", str(len(body) if length is None else length)),
        ("connection", "close"),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("content-security-policy", "default-src 'none'; style-src 'unsafe-inline'"),
    ]
    try:
        events = [
            h11.Response(status_code=status, headers=headers, reason=HTTPStatus(status).phrase),
            *([h11.Data(data=body)] if body else []),
        ]
        data = b"".join(connection.send(event) or b"" for event in [*events, h11.EndOfMessage()])
    except h11.LocalProtocolError:  # e.g. the request was too broken to answer
        return
    with trio.move_on_after(limits.write_timeout):
        try:
            await stream.send_all(data)
        except trio.BrokenResourceError:
            pass


async def _linger(stream: trio.SocketStream) -> None:
    """End our side, then read and drop what the client still sends, briefly (LINGER_SECONDS, LINGER_BYTES): a
    socket closed with unread data is reset, and the reset would destroy the error answer before it is read."""
    try:
        await stream.send_eof()
        with trio.move_on_after(LINGER_SECONDS):
            dropped = 0
            while dropped < LINGER_BYTES and (data := await stream.receive_some(4096)):
                dropped += len(data)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def status_page(r: Reading) -> str:
    """The HTML status page of a reading: escaped text, no script."""

    def e(value) -> str:
        return html.escape(str(value))

    def mb(size: float) -> str:
        return f"{size / 1e6:,.1f} MB"

    fetched_by_dataset: dict[str, int] = {}
    for (dataset, _), size in r.fetched.items():
        fetched_by_dataset[dataset] = fetched_by_dataset.get(dataset, 0) + size
    rows = "".join(
        f"<tr><td><code>{e(d.dataset_id)}</code></td><td>{e(d.tokenizer)}</td><td>{d.tokens:,}</td>"
        f"<td>{e(mb(d.size_held))} of {e(mb(d.size))}</td><td>{d.shards_held}/{d.shards}</td>"
        f"<td>{'private' if d.private else 'public'}</td><td>{e(mb(r.served_of(d.dataset_id)))}</td>"
        f"<td>{e(mb(fetched_by_dataset.get(d.dataset_id, 0)))}</td></tr>"
        for d in r.held
    )
    peers = "".join(f"<li><code>{e(p)}</code></li>" for p in r.connected_peers[:MAX_PEERS_LISTED])
    more = len(r.connected_peers) - MAX_PEERS_LISTED
    refused = ", ".join(f"{e(reason)} {count}" for reason, count in sorted(r.refused.items())) or "none"
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<title>Kogitune node {e(r.peer_id[-8:])}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:0 1em 0 0;text-align:left}}</style></head>
<body><h1>Kogitune node</h1>
<p>peer ID <code>{e(r.peer_id)}</code><br>listening {", ".join(f"<code>{e(a)}</code>" for a in r.addresses)}</p>
<h2>Rates</h2>
<p>fetching {e(mb(r.fetch_rate))}/s, serving {e(mb(r.serve_rate))}/s (last 10 s)<br>
fetched {e(mb(r.fetched_total))}, served {e(mb(sum(r.served.values())))} since the node started<br>
serving streams {r.streams_in_use} of {r.streams_limit}; refused or cut: {refused}</p>
<h2>Datasets ({len(r.held)}, {e(mb(sum(d.size_held for d in r.held)))} held)</h2>
<table><tr><th>ID</th><th>tokenizer</th><th>tokens</th><th>held</th><th>shards</th><th>access</th><th>served</th>
<th>fetched</th></tr>{rows}</table>
<h2>Peers ({len(r.connected_peers)} connected, {r.dht_peers} in the DHT routing table)</h2>
<ul>{peers}{f"<li>and {more} more</li>" if more > 0 else ""}</ul>
<p><a href="/metrics">/metrics</a> (Prometheus)</p></body></html>
"""
