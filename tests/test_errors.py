"""kogitune.errors holds the whole KogituneError tree, and a node daemon's error reaches the client as its class."""

from __future__ import annotations

import ast
import threading
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from kogitune import errors
from kogitune.client import DaemonClient
from kogitune.errors import (
    FetchError,
    KogituneError,
    ManifestError,
    NodeError,
    NodeNotRunning,
    TensorError,
    WireError,
    error_classes,
)
from kogitune.layout import MANIFEST_FILE

ROOT = Path(__file__).resolve().parent.parent
DEFINED_IN = {"kogitune/errors.py", "protocol/errors.py", "protocol/frames.py"}
"""Where error classes may be defined: kogitune.errors, and the protocol (which imports nothing from kogitune)."""
VALID_ID = "kg1-aaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypq"


def test_every_error_class_is_defined_in_kogitune_errors_or_the_protocol():
    """Before, KogituneError subclasses were defined in 7 modules; a class derived from one of the tree's anywhere
    else in kogitune/, node/ or protocol/ fails here."""
    names = set(error_classes())
    elsewhere = [
        f"{path.relative_to(ROOT)}: {node.name}"
        for folder in ("kogitune", "node", "protocol")
        for path in sorted((ROOT / folder).rglob("*.py"))
        if str(path.relative_to(ROOT)) not in DEFINED_IN
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ClassDef) and any(getattr(base, "id", None) in names for base in node.bases)
    ]
    assert elsewhere == []


def test_the_docstring_tree_names_every_class_and_each_says_when_it_is_raised():
    tree = errors.__doc__.split("\n\n")[2]
    for name, cls in error_classes().items():
        assert f" {name} " in tree, name
        assert cls.__doc__, name
    assert issubclass(NodeNotRunning, NodeError)  # before: a bare KogituneError


def _raise(cls: type[KogituneError]) -> KogituneError:
    return cls("busy", "a message") if cls is WireError else cls("a message")


@contextmanager
def control_server(home: Path, node):
    """node/control.py's real server on `<home>/control.sock`, run by trio in a thread, answering for `node`."""
    running: dict = {}
    started = threading.Event()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            from kogitune.node import control

            await nursery.start(control.serve_control, node)
            running.update(scope=nursery.cancel_scope, token=trio.lowlevel.current_trio_token())
            started.set()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    assert started.wait(30), "the control server did not start"
    try:
        yield DaemonClient(home)
    finally:
        trio.from_thread.run_sync(running["scope"].cancel, trio_token=running["token"])
        thread.join(timeout=30)


class Failing:
    """A node whose every control operation raises `error` (the control server and the client are real)."""

    def __init__(self, home: Path) -> None:
        self.config = SimpleNamespace(home=home)
        self.error: BaseException = ZeroDivisionError()

    def status(self):
        raise self.error


def test_every_class_raised_in_a_control_op_arrives_as_that_class(tmp_path):
    """Before, the client knew only the classes of kogitune.errors and kogitune.node.errors: a PerturbError,
    FilterError or WireError from the daemon arrived as a bare KogituneError."""
    node = Failing(tmp_path)
    with control_server(tmp_path, node) as client:
        for cls in error_classes().values():
            node.error = _raise(cls)
            with pytest.raises(KogituneError, match="node: a message") as caught:
                client.call("status", timeout=30)
            assert type(caught.value) is cls
            if cls is WireError:
                assert caught.value.code == "busy"
        node.error = ZeroDivisionError("a bug")  # a name outside the tree
        with pytest.raises(KogituneError, match="node: a bug") as caught:
            client.call("status", timeout=30)
        assert type(caught.value) is KogituneError


def test_a_real_daemons_errors_arrive_as_their_class(tmp_path):
    """A real node process: the errors its operations raise (NodeError, FetchError, TensorError, ManifestError)
    reach a DaemonClient as those classes, and a home without a node is NodeNotRunning, a NodeError."""
    from netnodes import NodeProcess

    (tmp_path / "no-tensor").mkdir()
    (tmp_path / "bad-manifest").mkdir()
    (tmp_path / "bad-manifest" / MANIFEST_FILE).write_text("{}")
    node = NodeProcess(tmp_path / "home")
    try:
        client = DaemonClient(node.home)
        for cls, op, fields in [
            (NodeError, "get", {"id": "kg1-typo"}),
            (NodeError, "frobnicate", {}),
            (FetchError, "get", {"id": VALID_ID}),  # a lone node: nobody to ask
            (TensorError, "publish", {"path": str(tmp_path / "no-tensor")}),
            (ManifestError, "publish", {"path": str(tmp_path / "bad-manifest")}),
        ]:
            with pytest.raises(KogituneError) as caught:
                client.call(op, timeout=60, **fields)
            assert type(caught.value) is cls, (op, fields, caught.value)
    finally:
        node.close()
    with pytest.raises(NodeNotRunning, match="kogitune node start"):
        DaemonClient(tmp_path / "nobody").call("status", timeout=10)
