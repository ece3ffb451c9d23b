"""node/http.py and HttpSource against servers written here, on 127.0.0.1: trio TCP servers that answer with crafted
bytes (a hostile answer is bytes in, bytes out), a TLS server with a certificate authority made for the test, and a
small forwarding proxy.

Each test runs its own trio.run under trio.fail_after(BOUND), with its servers in a nursery cancelled at the end. The
client's timeout is TIMEOUT, so a hanging server shows up as a SourceError well within the bound; nothing sleeps.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import re
import socket
import ssl
from contextlib import asynccontextmanager, suppress
from functools import partial
from urllib.parse import urlsplit

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kogitune.errors import SourceError
from kogitune.node.http import MAX_REDIRECTS, HttpClient
from kogitune.node.sources import HttpSource

BOUND = 5.0
TIMEOUT = 0.5
DATA = bytes(range(256)) * 64


def run(main) -> None:
    """trio.run(main), failing if it takes longer than BOUND."""

    async def bounded():
        with trio.fail_after(BOUND):
            await main()

    trio.run(bounded)


@pytest.fixture(autouse=True)
def no_proxy_in_environment(monkeypatch):
    """Tests start with no proxy setting, whatever this machine's environment has."""
    for name in list(os.environ):
        if name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


# ---- servers ----------------------------------------------------------------------------------------------------


class Server:
    """What a served port saw: the number of connections and each request head."""

    def __init__(self, scheme: str) -> None:
        self.scheme, self.port, self.connections, self.heads = scheme, 0, 0, []

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"


@asynccontextmanager
async def serving(reply, tls: ssl.SSLContext | None = None):
    """A server on 127.0.0.1 that reads each request head, then lets `reply(stream, head)` answer; a client that
    goes away early is no error."""
    server = Server("https" if tls else "http")

    async def handle(stream: trio.abc.Stream) -> None:
        server.connections += 1
        if tls is not None:
            stream = trio.SSLStream(stream, tls, server_side=True)
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            head = await read_head(stream)
            server.heads.append(head)
            await reply(stream, head)
        await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handle, 0, host="127.0.0.1"))
        server.port = listeners[0].socket.getsockname()[1]
        yield server
        nursery.cancel_scope.cancel()


async def read_head(stream: trio.abc.Stream) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = await stream.receive_some(1 << 16)
        if not chunk:
            break
        data += chunk
    return data.partition(b"\r\n\r\n")[0]


def answer(*parts: bytes, hang: bool = False):
    """A reply that sends `parts` one after the other, then closes the connection or hangs."""

    async def reply(stream, head):
        for part in parts:
            await stream.send_all(part)
        if hang:
            await trio.sleep_forever()

    return reply


def ok(body: bytes = DATA, hang: bool = False):
    return answer(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body), body, hang=hang)


def redirect(location: str):
    return answer(f"HTTP/1.1 302 Found\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n".encode())


def by_path(replies: dict):
    """A reply chosen by the request target."""

    async def reply(stream, head):
        await replies[head.split(b" ")[1].decode()](stream, head)

    return reply


async def fetch(url: str, headers: dict[str, str] | None = None):
    """The response and its whole body."""
    async with HttpClient(TIMEOUT).get(url, headers) as response:
        return response, await response.body.read_all(1 << 30, url)


def refused_port() -> socket.socket:
    """A socket bound to a port on 127.0.0.1 but not listening: connecting to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


# ---- responses ---------------------------------------------------------------------------------------------------

FRAMINGS = {
    "content-length": [b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", b"hello", b" world"],
    "chunked": [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
        b"lo\r\n6\r\n world\r\n",
        b"0\r\n\r\n",
    ],
    "after 100 Continue": [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world"],
    "content-length, more bytes after": [b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello", b" world and more"],
}


@pytest.mark.parametrize("framing", FRAMINGS)
def test_body_ends_where_the_framing_says(framing):
    """The body is complete at its framed end, while the server still holds the connection open."""

    async def main():
        async with serving(answer(*FRAMINGS[framing], hang=True)) as server:
            response, body = await fetch(f"{server.url}/a/b?c=1")
        assert (response.status, body) == (200, b"hello world")
        request_line, *fields = server.heads[0].split(b"\r\n")
        assert request_line == b"GET /a/b?c=1 HTTP/1.1"
        assert b"host: 127.0.0.1:%d" % server.port in {f.lower() for f in fields}
        assert not any(f.lower().startswith(b"connection:") for f in fields)  # HTTP/1.1: kept alive by default

    run(main)


@pytest.mark.parametrize("framing", FRAMINGS)
def test_body_into_small_buffers(framing):
    """receive_into fills at most the buffer it is given, however the bytes arrived."""

    async def main():
        async with serving(answer(*FRAMINGS[framing], hang=True)) as server:
            async with HttpClient(TIMEOUT).get(server.url) as response:
                buffer, parts = bytearray(4), []
                while count := await response.body.receive_into(memoryview(buffer)):
                    parts.append(bytes(buffer[:count]))
        assert b"".join(parts) == b"hello world"
        assert max(map(len, parts)) <= 4
        with pytest.raises(ValueError, match="non-empty buffer"):
            await response.body.receive_into(memoryview(bytearray()))

    run(main)


def test_body_until_close_without_framing():
    async def main():
        async with serving(answer(b"HTTP/1.1 200 OK\r\n\r\n", DATA[:1000], DATA[1000:])) as server:
            _, body = await fetch(server.url)
        assert body == DATA

    run(main)


def test_range_gives_206_and_the_offset():
    """HttpSource asks for `Range: bytes=START-` and returns the Content-Range start as the offset."""

    async def ranged(stream, head):
        start = int(re.search(rb"\r\nrange: bytes=(\d+)-", head, re.IGNORECASE).group(1))
        await stream.send_all(
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\n"
            b"Content-Length: %d\r\n\r\n" % (start, len(DATA) - 1, len(DATA), len(DATA) - start)
        )
        await stream.send_all(DATA[start:])

    async def main():
        async with serving(ranged) as server:
            async with HttpSource(f"{server.url}/tensor/", TIMEOUT).stream("shards/00000.tokens", 4096) as (
                offset,
                body,
            ):
                body = await body.read_all(len(DATA), "tokens")
        assert (offset, body) == (4096, DATA[4096:])
        assert server.heads[0].startswith(b"GET /tensor/shards/00000.tokens HTTP/1.1\r\n")
        assert b"\r\nAccept-Encoding: identity" in server.heads[0]

    run(main)


def test_a_bounded_stream_asks_for_a_closed_range():
    """HttpSource.stream(path, start, end) asks for `bytes=START-(END-1)` (the last byte is inclusive in HTTP)."""

    async def ranged(stream, head):
        start, last = map(int, re.search(rb"\r\nrange: bytes=(\d+)-(\d+)", head, re.IGNORECASE).groups())
        await stream.send_all(
            b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes %d-%d/%d\r\n"
            b"Content-Length: %d\r\n\r\n" % (start, last, len(DATA), last + 1 - start)
        )
        await stream.send_all(DATA[start : last + 1])

    async def main():
        async with serving(ranged) as server:
            async with HttpSource(server.url, TIMEOUT).stream("f", 4096, 8192) as (offset, body):
                body = await body.read_all(len(DATA), "f")
        assert (offset, body) == (4096, DATA[4096:8192])

    run(main)


def test_unreadable_content_range_is_a_source_error():
    async def main():
        reply = answer(b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes */100\r\nContent-Length: 0\r\n\r\n")
        async with serving(reply) as server:
            with pytest.raises(SourceError, match=re.escape(f"{server.url}/f: unreadable Content-Range")):
                await HttpSource(server.url, TIMEOUT).read_all("f", 100)

    run(main)


def test_404_names_the_url_and_status():
    async def main():
        async with serving(answer(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found")) as server:
            with pytest.raises(SourceError, match=re.escape(f"{server.url}/manifest.json: HTTP 404")):
                await HttpSource(server.url, TIMEOUT).read_all("manifest.json", 1000)

    run(main)


# ---- redirects ---------------------------------------------------------------------------------------------------


def test_redirects_relative_and_absolute_are_followed():
    """A relative Location, then an absolute one to another server, then one that needs percent-encoding."""

    async def main():
        async with serving(by_path({"/x": redirect("/final ü"), "/final%20%C3%BC": ok(b"there")})) as second:
            first_reply = by_path({"/start": redirect("moved"), "/moved": redirect(f"{second.url}/x")})
            async with serving(first_reply) as first:
                response, body = await fetch(f"{first.url}/start")
        assert (response.url, response.status, body) == (f"{second.url}/final%20%C3%BC", 200, b"there")
        assert [h.split(b"\r\n")[0] for h in first.heads] == [b"GET /start HTTP/1.1", b"GET /moved HTTP/1.1"]
        assert [h.split(b"\r\n")[0] for h in second.heads] == [b"GET /x HTTP/1.1", b"GET /final%20%C3%BC HTTP/1.1"]

    run(main)


def test_redirect_loop_is_a_source_error():
    async def main():
        async with serving(redirect("/loop")) as server:
            with pytest.raises(SourceError, match=f"more than {MAX_REDIRECTS} redirects"):
                await fetch(f"{server.url}/loop")
        assert len(server.heads) == MAX_REDIRECTS + 1

    run(main)


@pytest.mark.parametrize(
    "location, message",
    [
        ("ftp://127.0.0.1/x", "not an http:// or https:// URL"),
        ("http://[::1/x", "redirect to an invalid URL"),
        ("http://127.0.0.1:99999/x", "not a valid URL"),
    ],
)
def test_redirect_to_a_bad_url_is_a_source_error(location, message):
    async def main():
        async with serving(redirect(location)) as server:
            with pytest.raises(SourceError, match=re.escape(message)):
                await fetch(server.url)

    run(main)


# ---- hostile and broken servers ----------------------------------------------------------------------------------

HOSTILE = {
    "garbage status line": ([b"SSH-2.0-OpenSSH_9.6\r\n\r\n"], True, "not valid HTTP/1.1"),
    "body shorter than Content-Length": (
        [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"x" * 50],
        False,
        "connection closed after 50 of 100 body bytes",
    ),
    "chunked body cut off": (
        [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel"],
        False,
        "not valid HTTP/1.1",
    ),
    "bad chunk size": ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"], True, "not valid HTTP/1.1"),
    "negative Content-Length": ([b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"], True, "not valid HTTP/1.1"),
    "head cut off": ([b"HTTP/1.1 200 OK\r\nContent-Le"], False, "connection closed before the response"),
    "closed without an answer": ([], False, "connection closed before the response"),
    "silent": ([], True, f"no data for {TIMEOUT:g} s"),
    "headers, then nothing": ([b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"], True, f"no data for {TIMEOUT:g} s"),
    "half the body, then nothing": (
        [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"x" * 50],
        True,
        f"no data for {TIMEOUT:g} s",
    ),
}


@pytest.mark.parametrize("case", HOSTILE)
def test_broken_answers_are_source_errors(case):
    """Each broken answer is a SourceError naming the URL, within the client's timeout."""
    parts, hang, message = HOSTILE[case]

    async def main():
        async with serving(answer(*parts, hang=hang)) as server:
            with trio.fail_after(TIMEOUT * 3):
                with pytest.raises(SourceError, match=re.escape(message)) as caught:
                    await HttpSource(server.url, TIMEOUT).read_all("f", len(DATA))
        assert str(caught.value).startswith(f"{server.url}/f: ")

    run(main)


def test_head_under_64_kib_is_waited_for():
    """60 KiB of header lines, then nothing: the client waits for the rest of the head (h11's own default would
    have refused it at 16 KiB)."""
    filler = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"a" * 1000) for i in range(60))

    async def main():
        async with serving(answer(b"HTTP/1.1 200 OK\r\n", filler, hang=True)) as server:
            with pytest.raises(SourceError, match=f"no data for {TIMEOUT:g} s"):
                await fetch(server.url)

    run(main)


def test_endless_headers_are_refused_not_buffered():
    """A server that sends header lines for ever: the client gives up once the head passes 64 KiB, instead of
    buffering until memory runs out."""

    async def endless(stream, head):
        await stream.send_all(b"HTTP/1.1 200 OK\r\n")
        while True:
            await stream.send_all(b"X-Filler: " + b"a" * 1000 + b"\r\n")

    async def main():
        async with serving(endless) as server:
            with pytest.raises(SourceError, match="not valid HTTP/1.1: Receive buffer too long"):
                await fetch(server.url)

    run(main)


def test_connection_refused():
    async def main():
        with refused_port() as sock:
            url = f"http://127.0.0.1:{sock.getsockname()[1]}/f"
            with pytest.raises(SourceError, match=re.escape(f"{url}: cannot connect: ")):
                await fetch(url)

    run(main)


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/f", "file:///etc/passwd", "http:///f", "127.0.0.1/f"])
def test_not_an_http_url(url):
    async def main():
        with pytest.raises(SourceError, match=re.escape(f"{url}: not an http:// or https:// URL")):
            await fetch(url)

    run(main)


# ---- TLS ---------------------------------------------------------------------------------------------------------


def certificate_authority(name: str):
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def server_certificate(ca_key, ca_cert):
    """A certificate for 127.0.0.1 signed by the CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mirror")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def pem(cert) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """The CA file a client should trust, one of another CA, and a server SSLContext with a certificate from the
    first."""
    root = tmp_path_factory.mktemp("pki")
    ca_key, ca_cert = certificate_authority("kogitune test CA")
    key, cert = server_certificate(ca_key, ca_cert)
    (root / "ca.pem").write_bytes(pem(ca_cert))
    (root / "other-ca.pem").write_bytes(pem(certificate_authority("another CA")[1]))
    (root / "server.pem").write_bytes(
        pem(cert)
        + key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(root / "server.pem")
    return root / "ca.pem", root / "other-ca.pem", server


def test_https_with_a_trusted_ca(pki, monkeypatch):
    """ssl.create_default_context() reads SSL_CERT_FILE (OpenSSL's default verify paths), so the test CA is
    trusted without a parameter for it."""
    ca, _, server_tls = pki
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))

    async def main():
        async with serving(ok(hang=True), server_tls) as server:
            response, body = await fetch(f"{server.url}/f")
        assert (response.status, body) == (200, DATA)

    run(main)


def test_https_with_an_untrusted_certificate_is_refused(pki, monkeypatch):
    _, other_ca, server_tls = pki
    monkeypatch.setenv("SSL_CERT_FILE", str(other_ca))

    async def main():
        async with serving(ok(), server_tls) as server:
            with pytest.raises(
                SourceError, match=re.escape(f"{server.url}/f: TLS handshake failed: SSLCertVerificationError")
            ):
                await fetch(f"{server.url}/f")
        assert server.heads == []

    run(main)


def test_https_to_a_name_the_certificate_does_not_cover_is_refused(pki, monkeypatch):
    """A web mirror's certificate must name the host dialed (node/tlsclient.py keeps OpenSSL's host name check):
    the test certificate covers 127.0.0.1, not localhost."""
    ca, _, server_tls = pki
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))

    async def main():
        async with serving(ok(), server_tls) as server:
            with pytest.raises(SourceError, match="TLS handshake failed: SSLCertVerificationError.*mismatch"):
                await fetch(f"https://localhost:{server.port}/f")
        assert server.heads == []

    run(main)


def test_https_to_a_server_that_does_not_speak_tls():
    async def main():
        async with serving(answer(hang=True)) as silent:
            with pytest.raises(SourceError, match=f"no TLS handshake within {TIMEOUT:g} s"):
                await fetch(f"https://127.0.0.1:{silent.port}/f")

    run(main)


# ---- proxies -----------------------------------------------------------------------------------------------------


def proxying(credentials: str | None = None):
    """A forwarding proxy: CONNECT opens a tunnel; an absolute-form request goes on in origin form. With
    `credentials` ("user:password") it answers 407 to requests without them."""

    async def reply(stream, head):
        request_line, *fields = head.split(b"\r\n")
        method, target, _ = request_line.split(b" ")
        given = {name.lower(): value.strip() for name, _, value in (f.partition(b":") for f in fields)}
        if credentials and given.get(b"proxy-authorization") != b"Basic " + base64.b64encode(credentials.encode()):
            await stream.send_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n"
            )
            return
        if method == b"CONNECT":
            host, _, port = target.decode().rpartition(":")
            upstream = await trio.open_tcp_stream(host, int(port))
            await stream.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            url = urlsplit(target.decode())
            upstream = await trio.open_tcp_stream(url.hostname, url.port)
            origin = (url.path + (f"?{url.query}" if url.query else "")).encode()
            kept = [f for f in fields if not f.lower().startswith(b"proxy-authorization:")]
            await upstream.send_all(b"\r\n".join([b"%s %s HTTP/1.1" % (method, origin), *kept]) + b"\r\n\r\n")
        async with upstream:
            await relay(stream, upstream)

    return reply


async def relay(a: trio.abc.Stream, b: trio.abc.Stream) -> None:
    """Copy bytes both ways until either side ends."""

    async def copy(source, sink):
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await source.receive_some(1 << 16):
                await sink.send_all(data)
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(copy, a, b)
        nursery.start_soon(copy, b, a)


def use_proxy(monkeypatch, proxy_url: str, no_proxy: str = "") -> None:
    """Both proxy variables name the proxy. no_proxy is set even when empty: the test servers are on 127.0.0.1,
    which must not be bypassed unless a test says so (urllib bypasses only the hosts no_proxy lists)."""
    monkeypatch.setenv("http_proxy", proxy_url)
    monkeypatch.setenv("https_proxy", proxy_url)
    monkeypatch.setenv("no_proxy", no_proxy)


def test_http_through_a_proxy(monkeypatch):
    """The request goes to the proxy with the absolute URL as its target."""

    async def main():
        async with serving(ok(hang=True)) as mirror, serving(proxying()) as proxy:
            use_proxy(monkeypatch, proxy.url)
            response, body = await fetch(f"{mirror.url}/d/f?x=1")
        assert (response.status, body) == (200, DATA)
        assert proxy.heads[0].startswith(b"GET %s/d/f?x=1 HTTP/1.1\r\n" % mirror.url.encode())
        assert mirror.heads[0].startswith(b"GET /d/f?x=1 HTTP/1.1\r\n")

    run(main)


def test_https_through_a_connect_tunnel(pki, monkeypatch):
    """TLS runs end to end through the tunnel: the certificate checked is the mirror's."""
    ca, _, server_tls = pki
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))

    async def main():
        async with serving(ok(hang=True), server_tls) as mirror, serving(proxying()) as proxy:
            use_proxy(monkeypatch, proxy.url)
            response, body = await fetch(f"{mirror.url}/f")
        assert (response.status, body) == (200, DATA)
        assert proxy.heads == [b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d" % (mirror.port, mirror.port)]
        assert mirror.heads[0].startswith(b"GET /f HTTP/1.1\r\n")

    run(main)


def test_no_proxy_bypasses_the_proxy(monkeypatch):
    async def main():
        async with serving(ok(hang=True)) as mirror, serving(proxying()) as proxy:
            use_proxy(monkeypatch, proxy.url, no_proxy="example.org,127.0.0.1")
            _, body = await fetch(f"{mirror.url}/f")
        assert body == DATA
        assert proxy.connections == 0 and mirror.connections == 1

    run(main)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_proxy_credentials_from_the_proxy_url(scheme, pki, monkeypatch):
    """user:password in the proxy URL (percent-decoded) become Basic Proxy-Authorization."""
    ca, _, server_tls = pki
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))

    async def main():
        tls = server_tls if scheme == "https" else None
        async with serving(ok(hang=True), tls) as mirror, serving(proxying("kogi:p@ss")) as proxy:
            use_proxy(monkeypatch, f"http://kogi:p%40ss@127.0.0.1:{proxy.port}")
            _, body = await fetch(f"{mirror.url}/f")
        assert body == DATA
        assert b"Proxy-Authorization" not in mirror.heads[0]

    run(main)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_proxy_refusal_names_the_proxy_and_status(scheme, monkeypatch):
    """A 407 is a SourceError naming the proxy (without the password given) and the status."""

    async def main():
        async with serving(answer(hang=True)) as mirror, serving(proxying("kogi:p@ss")) as proxy:
            use_proxy(monkeypatch, f"http://kogi:wrong@127.0.0.1:{proxy.port}")
            with pytest.raises(SourceError, match=rf"proxy 127\.0\.0\.1:{proxy.port} .*HTTP 407") as caught:
                await fetch(f"{scheme}://127.0.0.1:{mirror.port}/f")
        assert "wrong" not in str(caught.value)
        assert mirror.connections == 0

    run(main)


def test_unreachable_proxy(monkeypatch):
    """A proxy setting without a scheme is taken as http://; a proxy that is down is named in the error."""

    async def main():
        with refused_port() as sock:
            use_proxy(monkeypatch, f"127.0.0.1:{sock.getsockname()[1]}")
            with pytest.raises(SourceError, match=f"cannot connect to proxy 127.0.0.1:{sock.getsockname()[1]}: "):
                await fetch("https://127.0.0.1:1/f")

    run(main)


def test_proxy_that_talks_into_the_tunnel(monkeypatch):
    """Bytes after the CONNECT answer, before TLS started, can only come from the proxy."""

    async def main():
        async with serving(answer(b"HTTP/1.1 200 OK\r\n\r\nHELLO", hang=True)) as proxy:
            use_proxy(monkeypatch, proxy.url)
            with pytest.raises(SourceError, match="sent bytes of its own into the tunnel"):
                await fetch("https://127.0.0.1:1/f")

    run(main)


def test_socks_proxy_is_not_supported(monkeypatch):
    use_proxy(monkeypatch, "socks5://127.0.0.1:1080")

    async def main():
        with pytest.raises(SourceError, match="https_proxy setting is not an http://host:port proxy URL"):
            await fetch("https://127.0.0.1:1/f")

    run(main)
