"""The local control API: one JSON request line, one JSON response line, over a Unix socket.

The socket is `<home>/control.sock`, created with owner-only permissions, so only the node's user can publish,
fetch or stop. Requests are small JSON objects (never pickle); a line longer than MAX_LINE, or nested deeper than
MAX_JSON_DEPTH, is refused. A failed request is answered with the error's message and class name; the log gets one
line for a Kogitune error (a typo, a missing file, a fetch that failed) and a traceback only for anything else (a bug).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import trio

from kogitune.errors import KogituneError, NodeError, error_reply
from kogitune.layout import CONTROL_SOCKET_FILE
from kogitune.protocol.ids import is_dataset_id
from kogitune.protocol.jsonlimits import MAX_JSON_DEPTH, loads
from kogitune.protocol.lock import is_recipe_id
from kogitune.protocol.names import is_dataset_name, is_short_name

from . import locks, names
from .collection import OpenCollection
from .daemon import Node

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup  # the backport that trio depends on

log = logging.getLogger(__name__)
MAX_LINE = 1 << 20
REQUEST_TIMEOUT = 10.0


async def serve_control(node: Node, task_status=trio.TASK_STATUS_IGNORED) -> None:
    path = Path(node.config.home) / CONTROL_SOCKET_FILE
    path.unlink(missing_ok=True)
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    sock.listen(16)
    listener = trio.SocketListener(sock)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(path)
            while True:
                stream = await listener.accept()
                nursery.start_soon(_serve_one, node, stream)
    finally:
        path.unlink(missing_ok=True)


async def _serve_one(node: Node, stream) -> None:
    async with stream:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT) as waiting:
                line = await _read_line(stream)
            if waiting.cancelled_caught:
                raise NodeError(f"no control request line arrived within {REQUEST_TIMEOUT:.0f} s")
            result = await _dispatch(node, _parse_request(line))
            reply = {"ok": True, **result}
        except Exception as exc:
            cause = _first_leaf(exc)
            if isinstance(cause, (KogituneError, OSError)):  # bad input or a missing file, as the CLI sees them
                log.info("control request failed: %s", cause)
            else:
                log.warning("control request failed with an unexpected error", exc_info=True)
            reply = {"ok": False, **error_reply(cause)}
        try:
            await stream.send_all(json.dumps(reply).encode() + b"\n")
        except trio.BrokenResourceError:
            pass


def _first_leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups, for a message a person can act on."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


async def _read_line(stream) -> bytes:
    """The first line on `stream` (without its newline; up to the end if none), at most MAX_LINE bytes. Each chunk
    is searched once, so a long line costs linear time."""
    data = bytearray()
    while True:
        chunk = await stream.receive_some(65536)
        end = chunk.find(b"\n")
        data += chunk if end < 0 else chunk[:end]
        if len(data) > MAX_LINE:
            raise NodeError(f"control request longer than {MAX_LINE} bytes")
        if not chunk or end >= 0:
            return bytes(data)


def _parse_request(line: bytes) -> dict:
    try:
        request = loads(line, MAX_JSON_DEPTH)
    except ValueError as exc:
        raise NodeError(f"control request is not valid JSON: {exc}") from None
    if not isinstance(request, dict):
        raise NodeError(f"control request is a JSON {type(request).__name__}, not an object")
    return request


def _dataset(request: dict) -> str:
    dataset_id = request.get("id", "")
    if not is_dataset_id(dataset_id):
        raise NodeError(f"{dataset_id!r} is not a dataset ID")
    return dataset_id


def _mirrors(request: dict) -> list[str]:
    """The web mirrors a request names for its dataset ("mirrors": a list of http(s) URLs; none by default)."""
    mirrors = request.get("mirrors") or []
    if not isinstance(mirrors, list) or not all(
        isinstance(url, str) and url.startswith(("http://", "https://")) for url in mirrors
    ):
        raise NodeError(f"mirrors must be a list of http(s) URLs, not {mirrors!r}")
    return mirrors


async def _dispatch(node: Node, request: dict) -> dict:
    op = request.get("op")
    if op == "status":
        return await node.status()
    if op == "stop":
        node.stop()
        return {}
    if op == "publish":
        allow, name = request.get("allow") or None, request.get("name")
        if name is not None and not is_short_name(name):
            raise NodeError(
                f"--name {str(name)[:200]!r}: a name is 1 to 100 of A-Z a-z 0-9 . _ -, not starting with . _ -"
            )
        dataset_id = await node.publish(str(request["path"]), allow)
        if request.get("name") is None:
            return {"id": dataset_id}
        record = await names.publish_name(node, str(name), dataset_id)
        return {"id": dataset_id, "name": record.name, "seq": record.sequence}
    if op == "resolve":
        name = request.get("name")
        if not isinstance(name, str) or not is_dataset_name(name):
            raise NodeError(f"{str(name)[:200]!r} is not a dataset name (<peer ID>/<name>)")
        return {"record": (await names.resolve(node, str(name))).to_bytes().decode()}
    if op == "publish_lock":  # a lock's published bytes (kogitune.protocol.lock)
        return {"id": await locks.publish_lock(node, str(request.get("lock", "")).encode())}
    if op == "lock":
        recipe_id = request.get("id")
        if not is_recipe_id(recipe_id):
            raise NodeError(f"{str(recipe_id)[:200]!r} is not a recipe ID (kgr1-...)")
        return {"lock": (await locks.fetch_lock(node, str(recipe_id))).decode()}
    if op == "get":
        opened = await node.get(_dataset(request), _mirrors(request))
        if isinstance(opened, OpenCollection):
            return {"directory": str(opened.directory), "sources": f"the {len(opened.parts)} parts' own"}
        return {"directory": str(opened.directory), "sources": opened.pool.report()}
    if op == "open" and "id" not in request:  # a dataset of web mirrors alone: its ID is its manifest's hash
        opened = await node.swarm.open_mirrors(_mirrors(request))
        return {"directory": str(opened.directory), "id": opened.dataset_id}
    if op == "open":
        trusted = request.get("trusted")
        opened = await node.swarm.open(
            _dataset(request), _mirrors(request), frozenset(trusted) if trusted is not None else None
        )
        reply: dict[str, object] = {"directory": str(opened.directory), "publisher": opened.publisher, "parts": None}
        if isinstance(opened, OpenCollection):  # its mirrors: those kept (OpenCollection.mirrors)
            reply.update(parts=list(opened.parts), mirrors=list(opened.mirrors))
        return reply
    if op == "manifest":  # a look at a dataset: its signed manifest, from the store or its providers; no shard
        copy = await node.swarm.peek(_dataset(request))
        return {"manifest": copy.data.decode(), "publisher": copy.publisher}
    if op == "remove":
        return {"directory": await node.remove(_dataset(request), bool(request.get("force", False)))}
    if op == "shard":
        directory = await node.swarm.fetch_shard(_dataset(request), int(request["index"]), _mirrors(request))
        return {"directory": str(directory)}
    if op == "prefetch":
        indexes = [int(index) for index in request.get("indexes", [])]
        node.nursery.start_soon(node.swarm.prefetch, _dataset(request), indexes, _mirrors(request))
        return {}
    if op == "job":  # a trainer's job (kogitune.client.job_of_environment): find its other hosts' nodes
        dataset_id, job = _dataset(request), request.get("job")
        if not isinstance(job, str):
            raise NodeError(f"job must be a string, not {type(job).__name__}")
        return {"joined": node.jobs.join(dataset_id, job), "peers": node.jobs.peers(dataset_id)}
    if op == "progress":
        return {"bytes_verified": node.swarm.bytes_verified(_dataset(request))}
    if op == "providers":
        return {"providers": await node.providers_status(_dataset(request))}
    raise NodeError(f"unknown control operation {op!r}")
