"""TLS on the data port, both ends: the server's libp2p-bound certificate and who a request comes from, and the
fetcher's pin to the peer it dialed.

The data port (node/dataport.py) serves public datasets over plain HTTP/1.1, and private datasets only over TLS on
the same port (a connection that opens with a TLS record is TLS), only to the peers of their signed allow-lists.
Its request handler runs unchanged on either kind of stream; for a private dataset it asks `requester(headers,
stream, identity)` who signed the request, and answers a refused peer exactly as a dataset it does not hold (404,
same body):

    identity = ServerTls(load_identity_seed(home))
    stream = await identity.accept(tcp_stream, timeout)           # TLS or plain; None: silent or failed, closed
    ... peer = requester(request.headers, stream, identity)       # None over plain HTTP, or unauthorized
    ... if manifest.is_private and not (peer and audience.admits(peer)): answer 404 as for a dataset not held

The fetcher side is `PeerTls(peer_id, seed)`, given to HttpSource / HttpClient for an https:// data port URL: it
drops a connection whose certificate is not bound to `peer_id` before sending anything, and signs each request's
`Authorization` header for that connection (kogitune.protocol.tlsid; docs/security.md says what this defends).
"""

from __future__ import annotations

import hashlib
import os
import secrets
import ssl
import tempfile
import time
from collections.abc import Iterable

import trio
from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, Encoding, PrivateFormat

from kogitune.errors import IdentityError, SourceError
from kogitune.protocol.tlsid import certificate_peer, check_auth, check_certificate, make_auth, make_certificate

from .tlsclient import ClientTls

TLS_HANDSHAKE_RECORD = 0x16
"""The first byte of every TLS connection (a handshake record holding the ClientHello)."""
SNIFF_BYTES = 4096


class ServerTls:
    """The server end: a fresh certificate bound to the node's identity (the Ed25519 `seed` of node/host.py), made
    once per process, and the TLS 1.3 context that presents it."""

    def __init__(self, seed: bytes) -> None:
        self.certificate, key = make_certificate(seed, time.time())
        self.certificate_sha256 = hashlib.sha256(self.certificate).digest()
        self.peer_id = certificate_peer(self.certificate, time.time())
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_3
        # Python's ssl loads a certificate only from a file: the key goes there encrypted under a one-time password
        # that never leaves memory, and the file is gone before this returns.
        password = secrets.token_bytes(32)
        pem = ssl.DER_cert_to_PEM_cert(self.certificate).encode() + key.private_bytes(
            Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(password)
        )
        fd, path = tempfile.mkstemp(prefix="kogitune-tls-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            self.context.load_cert_chain(path, password=password)
        finally:
            os.unlink(path)

    async def accept(self, stream: trio.abc.Stream, timeout: float) -> trio.abc.Stream | None:
        """One port for plain HTTP and TLS: a TLS stream over `stream` if the client opens with a TLS handshake
        record (first byte 0x16, which begins no HTTP request), else `stream` as it came (the bytes read to tell
        them apart are served first). None, with `stream` closed, if nothing arrives, or the first byte and the
        handshake do not both come within `timeout` seconds (the data port's head deadline counts from the accept
        too: a client holds its slot one head timeout at most, however it splits it)."""
        try:
            with trio.fail_after(timeout):
                first = await stream.receive_some(SNIFF_BYTES)
                if first and first[0] != TLS_HANDSHAKE_RECORD:
                    return _Prefixed(stream, first)
                if first:
                    tls = trio.SSLStream(
                        _Prefixed(stream, first), self.context, server_side=True, https_compatible=True
                    )
                    await tls.do_handshake()
                    return tls
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError, OSError):
            pass
        await trio.aclose_forcefully(stream)
        return None


class _Prefixed(trio.abc.Stream):
    """`stream` with `prefix` (bytes already received from it) put back in front of what it receives."""

    def __init__(self, stream: trio.abc.Stream, prefix: bytes | bytearray) -> None:
        self.stream = stream
        self._prefix = memoryview(bytes(prefix))

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if not self._prefix:
            return bytes(await self.stream.receive_some(max_bytes))  # requests only: small
        count = len(self._prefix) if max_bytes is None else max_bytes
        data, self._prefix = bytes(self._prefix[:count]), self._prefix[count:]
        await trio.lowlevel.checkpoint()
        return data

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Over TCP, write to the socket as long as it takes bytes, wait only when it is full, and pass through the
        scheduler once at the end: trio's SocketStream passes through it after every send that succeeds, several
        times per 1 MiB chunk that a reader drains a few hundred KiB at a time (most of a serving node's CPU). A
        connection already cut (evicted, or its send allowance spent) sends nothing, as with trio's send_all."""
        socket = getattr(self.stream, "socket", None)
        if socket is None:
            await self.stream.send_all(memoryview(data))
            return
        await trio.lowlevel.checkpoint_if_cancelled()
        fd, view = socket.fileno(), memoryview(data)
        if fd < 0:
            raise trio.ClosedResourceError("the connection is closed")
        try:
            while view:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(fd)
        except OSError as exc:  # (EPIPE, ECONNRESET: the reader is gone)
            raise trio.BrokenResourceError(f"sending failed: {exc}") from exc
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await self.stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        await self.stream.aclose()


def requester(headers: Iterable[tuple[bytes, bytes]], stream: object, identity: ServerTls) -> str | None:
    """The peer ID that signed this request's `Authorization` header for `identity`'s certificate, if `stream` is
    a TLS stream that `identity` accepted and the header verifies now; else None (no header, several, another
    server's, expired, or plain HTTP). `headers` are h11's (lower-case name, value) pairs."""
    if not isinstance(stream, trio.SSLStream) or stream.context is not identity.context:
        return None
    values = [value for name, value in headers if name.lower() == b"authorization"]
    if len(values) != 1:
        return None
    try:
        return check_auth(values[0].decode("ascii"), identity.peer_id, identity.certificate_sha256, time.time())
    except (IdentityError, UnicodeDecodeError):
        return None


_client_context: ssl.SSLContext | None = None


class PeerTls:
    """The fetcher end: TLS to a data port that must prove to be `peer_id`, each request signed with the fetcher's
    Ed25519 `seed` (None: no identity, so only public datasets). No certificate authority is consulted."""

    def __init__(self, peer_id: str, seed: bytes | None) -> None:
        self.peer_id = peer_id
        self._seed = seed

    @property
    def context(self) -> ssl.SSLContext:
        global _client_context
        if _client_context is None:
            _client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            _client_context.minimum_version = ssl.TLSVersion.TLSv1_3
            _client_context.check_hostname = False
            _client_context.verify_mode = ssl.CERT_NONE  # the peer ID is checked after the handshake (check)
        return _client_context

    def check(self, tls: ClientTls, url: str) -> None:
        """SourceError unless the server's certificate is bound to `peer_id`: called right after the handshake."""
        try:
            check_certificate(_server_certificate(tls), self.peer_id, time.time())
        except IdentityError as exc:
            raise SourceError(f"{url}: {exc}") from None

    def request_fields(self, tls: trio.abc.Stream) -> list[tuple[str, str]]:
        """The `Authorization` field for a request on the checked connection `tls` (none without an identity)."""
        if self._seed is None or not isinstance(tls, ClientTls):
            return []
        return [("Authorization", make_auth(self._seed, self.peer_id, _server_certificate(tls), time.time()))]


def _server_certificate(tls: ClientTls) -> bytes:
    """The DER certificate the server presented (with CERT_NONE, Python's ssl still hands it over in binary form)."""
    der = tls.getpeercert(binary_form=True)
    return der if isinstance(der, bytes) else b""
