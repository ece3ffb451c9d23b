"""The client end of TLS for node/http.py (web mirrors over https://, and nodes' TLS data ports): a trio stream
that decrypts as much as the caller's buffer holds before it waits on the socket again.

trio.SSLStream returns at most one TLS record (16 KiB) per receive, and each receive is a trip through the event
loop: a 1 MiB piece took 64 of them, and the fetcher spent ~1.5 CPU s/GiB on TLS where plain HTTP costs 0.2
(docs/benchmarks.md). `ClientTls` drives an `ssl.SSLObject` over two memory BIOs itself: `receive_into` decrypts
record after record straight into the caller's buffer, and only when no whole record is left does it receive from
the transport, up to TRANSPORT_BYTES at a time. The checks are OpenSSL's as in trio.SSLStream (the context decides:
the system's CAs and the host name for a web mirror; for a data port, none, and the caller pins the certificate
with `getpeercert` before it sends a byte, node/tlsdata.PeerTls).

    tls = ClientTls(tcp_stream, context, server_hostname)       # None: no host name to send or check
    with trio.fail_after(timeout):
        await tls.do_handshake()                                # SSL failures: trio.BrokenResourceError
    ... tls.getpeercert(binary_form=True); await tls.send_all(request); await tls.receive_into(view)

The end of the stream (0 bytes, b"") is the transport's end, with or without the server's close_notify, as
trio.SSLStream's `https_compatible` reads it: a body framed by Content-Length is checked for its length by the
caller, so a truncation is never taken for a whole body. Only the server side of the data port stays on
trio.SSLStream (node/tlsdata.ServerTls: it sends, and its requests are small).
"""

from __future__ import annotations

import ssl

import trio

TRANSPORT_BYTES = 1 << 20
"""Bytes asked of the socket at once (64 TLS records of 16 KiB: a piece in one or a few receives)."""
RECEIVE_SOME_BYTES = 64 << 10
"""The most `receive_some` returns (response heads and chunked bodies; large bodies go through `receive_into`)."""


class ClientTls(trio.abc.Stream):
    """TLS over `transport_stream` (client side), for one request at a time: a send and a receive never overlap."""

    def __init__(self, transport_stream: trio.abc.Stream, context: ssl.SSLContext, server_hostname: str | None) -> None:
        self.transport_stream = transport_stream
        self._incoming, self._outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=False, server_hostname=server_hostname)
        self._ended = False

    async def do_handshake(self) -> None:
        """The TLS handshake; its failure (a certificate the context refuses, a closed connection) is a
        trio.BrokenResourceError whose __cause__ says why."""
        while True:
            try:
                self._ssl.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise trio.BrokenResourceError("connection closed during the TLS handshake") from None
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS handshake failed: {exc}") from exc
        await self._flush()

    def getpeercert(self, binary_form: bool = False):
        """The server's certificate (DER with `binary_form`, also when the context verifies none)."""
        return self._ssl.getpeercert(binary_form)

    @property
    def holds_unread(self) -> bool:
        """Whether bytes received from the transport wait here, decrypted or not (node/keepalive.py reuses a
        connection only if none does: they would be read as the start of the next response)."""
        return bool(self._incoming.pending or self._ssl.pending())

    async def receive_into(self, buffer: memoryview) -> int:
        """Decrypt into `buffer` (non-empty) as many bytes as have arrived, up to its size, waiting on the transport
        only while none has; 0 at the end of the stream."""
        count, waited = 0, False
        while count < len(buffer) and not self._ended:
            try:
                # Given a buffer, read returns a count (typeshed says bytes).
                got: int = self._ssl.read(len(buffer) - count, buffer[count:])  # type: ignore[assignment]
            except ssl.SSLWantReadError:
                if count:
                    break
                await self._flush()  # what reading queued (a TLS 1.2 renegotiation, a key update answer)
                waited = True
                if not await self._fill():
                    self._incoming.write_eof()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                got = 0
            except ssl.SSLError as exc:
                raise trio.BrokenResourceError(f"TLS failed: {exc}") from exc
            if not got:
                self._ended = True
            count += got
        if not waited:
            await trio.lowlevel.checkpoint()  # a trio stream's receive always yields once, as trio.SSLStream's does
        return count

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        buffer = bytearray(min(max_bytes or RECEIVE_SOME_BYTES, RECEIVE_SOME_BYTES))
        count = await self.receive_into(memoryview(buffer))
        del buffer[count:]
        return bytes(buffer)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            raise trio.BrokenResourceError(f"TLS failed: {exc}") from exc
        await self._flush()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        """Send a close_notify if the transport takes it at once, then close the transport."""
        try:
            try:
                self._ssl.unwrap()
            except ssl.SSLError:
                pass  # the close_notify is queued; the server's answer is not waited for
            await self._flush()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await self.transport_stream.aclose()

    async def _flush(self) -> None:
        if self._outgoing.pending:
            await self.transport_stream.send_all(self._outgoing.read())

    async def _fill(self) -> bool:
        """Receive from the transport into the incoming BIO; False at its end."""
        data = await self.transport_stream.receive_some(TRANSPORT_BYTES)
        self._incoming.write(data)
        return bool(data)
