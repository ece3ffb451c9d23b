"""A static HTTP server for a data tensor directory, with switches that make it misbehave, for the mirror tests.

Run as `python tests/mirror_server.py DIR [--mode MODE]`; it prints `PORT <n>` once it listens on 127.0.0.1.
Modes: ok (Range supported), no-range (ignores Range, like `python -m http.server`), corrupt (flips one byte in
every .tokens response), die (exits abruptly after sending half of a .tokens file), hang (sends headers of
.tokens responses, then nothing), hang-once (hangs so on its first .tokens response only: a mirror that cannot
finish alone before a fetcher's read timeout ends that stream), not-found (404 for everything).
"""

import argparse
import os
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer


class MirrorHandler(SimpleHTTPRequestHandler):
    mode = "ok"
    hung = threading.Lock()
    """Taken by the .tokens response that hangs in mode hang-once."""

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        if self.mode == "not-found":
            self.send_error(404)
            return
        path = self.translate_path(self.path)
        if not os.path.isfile(path):
            self.send_error(404)
            return
        size = os.path.getsize(path)
        start, end = self._range(size) if self.mode != "no-range" else (None, size)
        is_tokens = path.endswith(".tokens")
        self.send_response(206 if start is not None else 200)
        if start is not None:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.send_header("Content-Length", str(end - (start or 0)))
        self.end_headers()
        if is_tokens and (self.mode == "hang" or (self.mode == "hang-once" and self.hung.acquire(blocking=False))):
            self.wfile.flush()
            threading.Event().wait()
        with open(path, "rb") as f:
            f.seek(start or 0)
            self._send_body(f, end - (start or 0), is_tokens)

    def _send_body(self, f, length: int, is_tokens: bool) -> None:
        """Stream the file from its current position, misbehaving as the mode says."""
        limit = length // 2 if is_tokens and self.mode == "die" else length
        first = True
        while limit > 0:
            chunk = f.read(min(1 << 20, limit))
            if not chunk:
                break
            if first and is_tokens and self.mode == "corrupt":
                chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
            first = False
            self.wfile.write(chunk)
            limit -= len(chunk)
        if is_tokens and self.mode == "die":
            self.wfile.flush()
            os._exit(1)

    def _range(self, size: int):
        """(start, end exclusive) of `Range: bytes=A-` or `bytes=A-B`; (None, size) without one: the whole file."""
        header = self.headers.get("Range", "")
        if not header.startswith("bytes="):
            return None, size
        first, _, last = header[len("bytes=") :].partition("-")
        return int(first), min(size, int(last) + 1) if last else size


class MirrorServer(ThreadingHTTPServer):
    request_queue_size = 128
    """Connections waiting for accept(): socketserver's default of 5 drops the SYNs of a fetcher that opens a dozen at
    once (4 shards x 3 sources), and each dropped one waits a second for its retry; web servers listen with 511."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory")
    parser.add_argument(
        "--mode", default="ok", choices=["ok", "no-range", "corrupt", "die", "hang", "hang-once", "not-found"]
    )
    args = parser.parse_args()
    MirrorHandler.mode = args.mode
    server = MirrorServer(("127.0.0.1", 0), partial(MirrorHandler, directory=args.directory))
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    main()
