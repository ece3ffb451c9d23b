"""Helpers for tests that serve data tensors over HTTP from real server processes."""

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

SERVER = Path(__file__).with_name("mirror_server.py")


@contextmanager
def server_processes(commands, quiet: bool = False):
    """Start one process per command, each printing `PORT <n>` once it listens on 127.0.0.1; yield their URLs;
    kill them after. `quiet` drops their stderr (a client that stops reading early makes http.server print a
    BrokenPipeError traceback, as the fetcher does by design)."""
    procs = []
    try:
        urls = []
        for command in commands:
            proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL if quiet else None, text=True
            )
            procs.append(proc)
            line = proc.stdout.readline()
            if not line.startswith("PORT "):
                raise RuntimeError(f"mirror server did not start: {line!r}")
            urls.append(f"http://127.0.0.1:{int(line.split()[1])}")
        yield urls
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
            proc.stdout.close()


@contextmanager
def mirrors(directory, *modes):
    """Start one mirror_server.py process per mode, serving `directory`; yield their URLs; kill them after."""
    with server_processes([sys.executable, str(SERVER), str(directory), "--mode", mode] for mode in modes) as urls:
        yield urls


@contextmanager
def stdlib_http_server(directory):
    """`python -m http.server` itself (no Range support) on a free port."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-u",
            "-c",
            "import http.server, functools, sys\n"
            "h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])\n"
            "s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), h)\n"
            "print('PORT', s.server_address[1], flush=True)\n"
            "s.serve_forever()\n",
            str(directory),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
