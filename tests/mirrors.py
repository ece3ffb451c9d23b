"""Helpers for tests that serve data tensors over HTTP from real server processes."""

import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

SERVER = Path(__file__).with_name("mirror_server.py")


@contextmanager
def mirrors(directory, *modes):
    """Start one mirror_server.py process per mode, serving `directory`; yield their URLs; kill them after."""
    procs = []
    try:
        urls = []
        for mode in modes:
            proc = subprocess.Popen([sys.executable, str(SERVER), str(directory), "--mode", mode],
                                    stdout=subprocess.PIPE, text=True)
            procs.append(proc)
            line = proc.stdout.readline()
            assert line.startswith("PORT "), f"mirror server did not start: {line!r}"
            urls.append(f"http://127.0.0.1:{int(line.split()[1])}")
        yield urls
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(timeout=10)
            proc.stdout.close()


@contextmanager
def stdlib_http_server(directory):
    """`python -m http.server` itself (no Range support) on a free port."""
    proc = subprocess.Popen([sys.executable, "-u", "-c",
                             "import http.server, functools, sys\n"
                             "h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])\n"
                             "s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), h)\n"
                             "print('PORT', s.server_address[1], flush=True)\n"
                             "s.serve_forever()\n", str(directory)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
