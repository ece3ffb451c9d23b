"""How fast a private dataset comes over the TLS data port, against plain HTTP of the same file, on loopback.

A server process (this script with --serve) listens on 127.0.0.1 with one h11 file handler for plain HTTP and TLS
on the same port (node/tlsdata.ServerTls.accept; the certificate bound to its libp2p key), where the file is
private to the fetcher's peer ID over TLS. The fetcher (this process) reads the file with HttpSource into a 1 MiB buffer, as the fetch
service does, plain and TLS interleaved, and prints MiB/s of each and their ratio (TLS / plain):

    .venv/bin/python scripts/bench_tlsdata.py --mib 100 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import h11
import trio

SERVER_SEED, FETCHER_SEED = bytes(range(32)), bytes([7] * 32)
CHUNK = 1 << 20


async def serve(path: Path, allowed: str) -> None:
    """Serve `path` (a URL ending in .tokens; any other, its first KiB) over plain HTTP to anyone and over TLS only to
    `allowed`, on one port; print it."""
    from kogitune.node.tlsdata import ServerTls, requester

    identity = ServerTls(SERVER_SEED)

    async def answer(stream) -> None:
        stream = await identity.accept(stream, 10.0)
        if stream is None:
            return
        connection = h11.Connection(h11.SERVER)
        while (event := connection.next_event()) is h11.NEED_DATA:
            connection.receive_data(await stream.receive_some(65536))
        size = path.stat().st_size if event.target.endswith(b".tokens") else 1024
        if isinstance(stream, trio.SSLStream) and requester(event.headers, stream, identity) != allowed:
            head = h11.Response(status_code=404, headers=[("Content-Length", "0")])
            await stream.send_all(connection.send(head) + connection.send(h11.EndOfMessage()))
            return
        await stream.send_all(connection.send(h11.Response(status_code=200, headers=[("Content-Length", str(size))])))
        with open(path, "rb") as f:
            while (chunk := f.read(min(CHUNK, size))) and size:
                size -= len(chunk)
                await stream.send_all(chunk)
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        listener = (await nursery.start(partial(trio.serve_tcp, answer, 0, host="127.0.0.1")))[0]
        print("PORT", listener.socket.getsockname()[1], identity.peer_id, flush=True)


async def read(url: str, peer=None, repeat: int = 1) -> tuple[float, float]:
    """(wall, CPU) seconds of this process to read `url` whole through HttpSource into a 1 MiB buffer, `repeat`
    times (a connection each)."""
    from kogitune.node.sources import HttpSource

    source = HttpSource(url.rsplit("/", 1)[0], 30.0, peer=peer)
    buffer = memoryview(bytearray(CHUNK))
    started, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        async with source.stream(url.rsplit("/", 1)[1], 0) as (_, body):
            while await body.receive_into(buffer):
                pass
    return time.perf_counter() - started, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--allowed", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        trio.run(serve, Path(args.serve), args.allowed)
        return
    from kogitune.node.tlsdata import PeerTls
    from kogitune.protocol.signing import peer_id_from_public_key, public_key_from_seed

    fetcher = peer_id_from_public_key(public_key_from_seed(FETCHER_SEED))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.tokens"
        path.write_bytes(os.urandom(args.mib << 20))
        command = [sys.executable, __file__, "--serve", str(path), "--allowed", fetcher]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            _, plain, peer = server.stdout.readline().split()
            tls = plain  # one port: a connection that opens with a TLS record is TLS
            times: dict[str, list[tuple[float, float]]] = {"plain HTTP": [], "TLS, authorized": []}
            small: dict[str, list[tuple[float, float]]] = {"plain HTTP": [], "TLS, authorized": []}
            for _ in range(args.rounds):
                pin = PeerTls(peer, FETCHER_SEED)
                times["plain HTTP"].append(trio.run(read, f"http://127.0.0.1:{plain}/shard.tokens"))
                times["TLS, authorized"].append(trio.run(read, f"https://127.0.0.1:{tls}/shard.tokens", pin))
                small["plain HTTP"].append(trio.run(read, f"http://127.0.0.1:{plain}/shard.docs", None, 100))
                small["TLS, authorized"].append(trio.run(read, f"https://127.0.0.1:{tls}/shard.docs", pin, 100))
        finally:
            server.terminate()
            server.wait()
    speeds = {name: [args.mib / wall for wall, _ in ts] for name, ts in times.items()}
    for name, values in speeds.items():
        cpu = min(c for _, c in times[name]) * 1024 / args.mib
        print(
            f"{name:16} {' '.join(f'{v:7.0f}' for v in values)} MiB/s (best {max(values):.0f}), fetcher CPU {cpu:.2f} s/GiB"
        )
    for name, pairs in small.items():
        wall, cpu = min(w for w, _ in pairs) * 10, min(c for _, c in pairs) * 10
        print(
            f"{name:16} 1 KiB file, a connection each: {wall:.2f} ms, fetcher CPU {cpu:.2f} ms (best of {args.rounds} x 100)"
        )
    ratio = max(speeds["TLS, authorized"]) / max(speeds["plain HTTP"])
    print(f"TLS / plain (best of {args.rounds}): {ratio:.2f}x; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
