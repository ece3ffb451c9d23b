"""The control API, bytes in, bytes out: a bad request gets a clear error of the right class, the node's log gets
one line for it (a traceback only for a bug), and the client raises the class the node named."""

from __future__ import annotations

import ast
import json
import logging
import socket
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio
import trio.testing

import kogitune.client as client_module
from kogitune.client import DaemonClient
from kogitune.errors import FetchError, IntegrityError, KogituneError, NodeError
from kogitune.layout import CONTROL_SOCKET_FILE
from kogitune.node import control
from kogitune.protocol.jsonlimits import MAX_JSON_DEPTH

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup, ExceptionGroup

ROOT = Path(__file__).resolve().parent.parent
GROUP_NAMES = {"BaseExceptionGroup", "ExceptionGroup"}


UNREACHED_NODE = SimpleNamespace(get=None)


def serve(line: bytes, node=UNREACHED_NODE) -> dict:
    """Send `line` to one control connection served by `node` (by default one that is never reached: the request
    fails first); the decoded reply."""

    async def main() -> bytes:
        ours, theirs = trio.testing.memory_stream_pair()
        reply = bytearray()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(control._serve_one, node, theirs)
            await ours.send_all(line)
            with trio.fail_after(10):
                while chunk := await ours.receive_some():
                    reply += chunk
        return bytes(reply)

    return json.loads(trio.run(main))


def failures(caplog) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records if r.name == "kogitune.node.control" and "control request failed" in r.getMessage()
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        (b"[" * 100_000 + b"\n", f"nested deeper than {MAX_JSON_DEPTH}"),
        (b'{"op": "status", "x": ' + b"[" * 65 + b"]" * 65 + b"}\n", f"nested deeper than {MAX_JSON_DEPTH}"),
        (b"not json\n", "not valid JSON"),
        (b'"status"\n', "a JSON str, not an object"),
        (b'{"op": "statsu"}\n', "unknown control operation 'statsu'"),
        (b'{"op": "get", "id": "kg1-typo"}\n', "'kg1-typo' is not a dataset ID"),
        (b"x" * (control.MAX_LINE + 1), f"longer than {control.MAX_LINE} bytes"),
    ],
)
def test_a_bad_request_is_a_node_error_logged_in_one_line(caplog, line, message):
    """Before: a deep request came back as RecursionError, a non-object as AttributeError, and every failed request
    (a typo too) put a traceback into node.log."""
    caplog.set_level(logging.INFO, logger="kogitune.node")
    reply = serve(line)
    assert reply["ok"] is False and reply["type"] == "NodeError" and message in reply["error"]
    [record] = failures(caplog)
    assert record.exc_info is None and message in record.getMessage()


class Broken:
    """A node whose `status` fails as asked."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def status(self):
        raise self.error


def test_the_first_error_inside_exception_groups_is_reported(caplog):
    caplog.set_level(logging.INFO, logger="kogitune.node")
    group = BaseExceptionGroup("tasks", [ExceptionGroup("inner", [FetchError("no source could deliver x")])])
    reply = serve(b'{"op": "status"}\n', Broken(group))
    assert reply == {"ok": False, "error": "no source could deliver x", "type": "FetchError"}
    assert failures(caplog)[0].exc_info is None


@pytest.mark.parametrize(
    "path",
    sorted(
        p.relative_to(ROOT)
        for folder in ("kogitune", "node", "protocol", "tests")
        for p in (ROOT / folder).rglob("*.py")
    ),
    ids=str,
)
def test_exception_groups_come_from_the_backport_before_python_3_11(path):
    """Python 3.10 (which pyproject.toml supports) has no builtin (Base)ExceptionGroup: a module that names one
    without importing it from the `exceptiongroup` backport (trio's dependency there) dies with NameError on 3.10,
    as node/control.py did whenever a control request failed."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    named = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and node.id in GROUP_NAMES}
    imported = {
        alias.asname or alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "exceptiongroup"
        for alias in node.names
    }
    assert named <= imported, f"{path} names {sorted(named - imported)} without the exceptiongroup backport"


def test_a_bug_still_logs_its_traceback(caplog):
    caplog.set_level(logging.INFO, logger="kogitune.node")
    reply = serve(b'{"op": "status"}\n', Broken(ZeroDivisionError("division by zero")))
    assert reply["type"] == "ZeroDivisionError"
    [record] = failures(caplog)
    assert record.exc_info is not None and record.levelno == logging.WARNING


def test_a_request_line_in_small_chunks_is_read_whole():
    async def main() -> bytes:
        ours, theirs = trio.testing.memory_stream_pair()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ours.send_all, b'{"op":')
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(ours.send_all, b' "status"}\nignored')
            return await control._read_line(theirs)

    assert trio.run(main) == b'{"op": "status"}'


class Dribble:
    """A receive stream that delivers `data` a few bytes at a time, as a slow writer would."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data, self.size, self.at = data, size, 0

    async def receive_some(self, max_bytes=None) -> bytes:
        chunk = self.data[self.at : self.at + self.size]
        self.at += len(chunk)
        return chunk


def test_a_long_line_in_tiny_chunks_is_read_in_linear_time():
    """1 MiB in 16-byte chunks: each chunk was appended to a bytes object and the whole line searched again for
    its newline (3.5 s, quadratic); now 0.03 s. The bound leaves 30x for a loaded machine."""
    line = b"x" * (control.MAX_LINE - 1)
    started = time.perf_counter()
    assert trio.run(control._read_line, Dribble(line + b"\n", 16)) == line
    assert time.perf_counter() - started < 1.0


def test_user_typos_put_no_traceback_into_node_log(tmp_path):
    """A real node: a publish of a path that is no tensor, an ID with a typo, an unknown ID: each is a clear error
    for the user and one line in node.log (before: a traceback for each)."""
    from netnodes import NodeProcess

    (tmp_path / "file.txt").write_text("hello")
    node = NodeProcess(tmp_path / "home")
    try:
        typos = [
            (("publish", str(tmp_path / "nope")), f"{tmp_path / 'nope'}: no such directory"),
            (("publish", str(tmp_path / "file.txt")), "is not a data tensor"),
            (("get", "kg1-typo"), "'kg1-typo' is not a dataset ID"),
        ]
        for args, message in typos:
            result = node.cli(*args, check=False)
            assert result.returncode != 0 and message in result.stderr and "Traceback" not in result.stderr
    finally:
        node.close()
    log = (tmp_path / "home" / "node.log").read_text()
    assert "Traceback" not in log
    assert [line.split(": ", 1)[1] for line in log.splitlines() if "control request failed" in line] == [
        f"control request failed: {tmp_path / 'nope'}: no such directory",
        f"control request failed: {tmp_path / 'file.txt'} is not a data tensor: it has no manifest.json. "
        "Create one with `kogitune store FILE.jsonl`.",
        "control request failed: 'kg1-typo' is not a dataset ID",
    ]


@pytest.mark.parametrize("config", [b'{"bootstrap": ' + b"[" * 100_000, b'{"bootstrap": 5}', b'["x"]', b"{oops"])
def test_a_bad_config_json_is_a_node_error(tmp_path, config):
    """<home>/config.json is the user's: nested too deep (RecursionError before) or of the wrong shape (TypeError
    for a number), it is a NodeError that says what the file should hold."""
    from kogitune.layout import CONFIG_FILE
    from kogitune.node.service import bootstrap_peers

    (tmp_path / CONFIG_FILE).write_bytes(config)
    with pytest.raises(NodeError, match="is not a JSON object like"):
        bootstrap_peers(tmp_path)


# ---- the client side --------------------------------------------------------------------------------------------


@pytest.fixture
def fake_daemon(tmp_path):
    """A control socket in `tmp_path` that answers one request with the bytes given to `answer`."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / CONTROL_SOCKET_FILE))
    listener.listen(1)
    threads = []

    def answer(reply: bytes) -> DaemonClient:
        def run():
            conn, _ = listener.accept()
            with conn:
                conn.recv(1 << 16)
                conn.sendall(reply)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        return DaemonClient(tmp_path)

    yield answer
    listener.close()
    for thread in threads:
        thread.join(timeout=10)


@pytest.mark.parametrize(
    "kind, cls",
    [
        ("FetchError", FetchError),
        ("NodeError", NodeError),
        ("IntegrityError", IntegrityError),
        ("ZeroDivisionError", KogituneError),
        (None, KogituneError),
    ],
)
def test_the_client_raises_the_class_the_node_named(fake_daemon, kind, cls):
    """Before, every failure came back as a bare KogituneError, whatever the node raised."""
    reply = {"ok": False, "error": "what happened", **({"type": kind} if kind else {})}
    with pytest.raises(cls, match="node: what happened") as caught:
        fake_daemon(json.dumps(reply).encode() + b"\n").call("get", timeout=10)
    assert type(caught.value) is cls


@pytest.mark.parametrize(
    "reply, message",
    [
        (b"[" * 100_000 + b"\n", f"nested deeper than {MAX_JSON_DEPTH}"),
        (b"[1]\n", "not an object"),
        (b"{oops\n", "not valid JSON"),
    ],
)
def test_a_bad_reply_is_a_kogitune_error(fake_daemon, reply, message):
    with pytest.raises(KogituneError, match=message):
        fake_daemon(reply).call("status", timeout=10)


def test_a_reply_over_the_limit_is_refused_unread(fake_daemon, monkeypatch):
    monkeypatch.setattr(client_module, "MAX_REPLY_BYTES", 1000)
    with pytest.raises(KogituneError, match="longer than 1000 bytes"):
        fake_daemon(b'{"ok": true, "x": "' + b"y" * 5000 + b'"}\n').call("status", timeout=10)
