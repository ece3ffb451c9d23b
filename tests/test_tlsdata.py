"""Private datasets on the data port: TLS bound to the node's libp2p key, each request signed by the fetcher.

The certificate and authorization checks (kogitune.protocol.tlsid) are pure: bytes in, a peer ID or an
IdentityError out, with the test vectors of docs/protocol.md. The exchange runs against a data port written here on
127.0.0.1 (h11, one request per connection; the node's own data port consults node/tlsdata.py the same way): plain
HTTP and TLS on one port, a private dataset served only over TLS to the peers of its allow-list, and refused
exactly like a dataset the server does not hold. Each test runs under trio.fail_after(BOUND); nothing sleeps.
"""

from __future__ import annotations

import datetime
import hashlib
import time
from contextlib import asynccontextmanager
from functools import partial

import h11
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kogitune.errors import IdentityError, SourceError
from kogitune.node.http import HttpClient
from kogitune.node.server import PUBLIC, Audience
from kogitune.node.sources import HttpSource
from kogitune.node.tlsdata import PeerTls, ServerTls, requester
from kogitune.protocol import tlsid
from kogitune.protocol.signing import peer_id_from_public_key, public_key_from_seed

BOUND = 10.0
TIMEOUT = 2.0
SERVER_SEED, ALLOWED_SEED, STRANGER_SEED = bytes(range(32)), bytes([7] * 32), bytes([9] * 32)
ALLOWED = peer_id_from_public_key(public_key_from_seed(ALLOWED_SEED))
DATA = bytes(range(256)) * 1024
NOW = 1_800_000_000

# Test vectors (docs/protocol.md, "Private datasets on the data port"): a certificate made by make_certificate for
# SERVER_SEED at NOW (ECDSA signatures are randomized, so it is this one, recorded), and the header that
# ALLOWED_SEED signs for it at NOW.
VECTOR_CERT = bytes.fromhex(
    "308201963082013ca003020102020827cf862d627a473b300a06082a8648ce3d0403023011310f300d06035504030c066c69627032703020"
    "170d3237303131353037303030305a180f32313236313232323037303030305a3011310f300d06035504030c066c69627032703059301306"
    "072a8648ce3d020106082a8648ce3d03010703420004c260b47779cd7f5196fff6c96e4bb391096c012ccb520abbecff6420c67b6bd44556"
    "f0998658ea782e64a43d7f0e33d05aeaf813d3ebc490f13eba04a97408aba37c307a3078060a2b0601040183a25a0101046a306804240801"
    "122003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8044030b57e4aa4559f90295c8421fac4d37f8aa600d9"
    "453c585a5e09212e99ff8f461a25268a5a2ce0fd979f7a6491a5ea82428e5a8d2cadb94254134a336638a40c300a06082a8648ce3d040302"
    "03480030450221009fcef8237f49292fedd4b12870715285f9e1e02e6014ecd2013dc9d9ddb97b6802204ec31a47552507d7848564fc7108"
    "839f0a4539929dc12a0bf123222a0c0eb7be"
)
VECTOR_PEER = "12D3KooWA4Xop1JaT3MHxwYMkCepYsv4iPVopMXwCz5iHYdBfeSB"
VECTOR_AUTH = (
    "KogituneData 6kpsY-KcUgq-9VB7Ey7F-ZVHdq6-vnuSQh7qaRRG0iwAAAA"
    "Aa0nTLGnWRGNEJ9-XUuuWb6arYXMjd4C_H5MTU66fcaMFbClAr1v0WOqBbzNnfjEPd0kblv51ubZUjxUzgr1mUp_jug0"
)


def run(main) -> None:
    async def bounded():
        with trio.fail_after(BOUND):
            await main()

    trio.run(bounded)


# ---- the certificate, bytes in, bytes out ------------------------------------------------------------------------


def certificate(seed=SERVER_SEED, now=NOW, extensions=None, sign_spki_of=None, lifetime=None) -> bytes:
    """A certificate like make_certificate's, with the parts a test wants changed."""
    key = ec.generate_private_key(ec.SECP256R1())
    identity = Ed25519PrivateKey.from_private_bytes(seed)
    signed = (sign_spki_of or key).public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    public = identity.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    value = tlsid._signed_key_der(bytes([8, 1, 0x12, 0x20]) + public, identity.sign(tlsid.CERT_CONTEXT + signed))
    start = datetime.datetime.fromtimestamp(now, datetime.timezone.utc) - datetime.timedelta(hours=1)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "libp2p")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(start)
        .not_valid_after(start + (lifetime or tlsid.CERT_LIFETIME))
    )
    for extension, critical in (
        extensions
        if extensions is not None
        else [(x509.UnrecognizedExtension(tlsid.LIBP2P_EXTENSION_OID, value), False)]
    ):
        builder = builder.add_extension(extension, critical=critical)
    return builder.sign(key, hashes.SHA256()).public_bytes(Encoding.DER)


def test_a_certificate_names_the_peer_whose_key_made_it():
    der, _ = tlsid.make_certificate(SERVER_SEED, NOW)
    assert len(der) < 600
    assert tlsid.certificate_peer(der, NOW) == peer_id_from_public_key(public_key_from_seed(SERVER_SEED))
    tlsid.check_certificate(der, tlsid.certificate_peer(der, NOW), NOW)
    assert tlsid.certificate_peer(VECTOR_CERT, NOW) == VECTOR_PEER


def signed_key(seed: bytes, message: bytes) -> bytes:
    identity = Ed25519PrivateKey.from_private_bytes(seed)
    public = identity.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return tlsid._signed_key_der(bytes([8, 1, 0x12, 0x20]) + public, identity.sign(message))


@pytest.mark.parametrize(
    "make, now, error",
    [
        (lambda: certificate(extensions=[]), NOW, "exactly one libp2p key extension"),
        (
            lambda: certificate(
                extensions=[
                    (x509.UnrecognizedExtension(tlsid.LIBP2P_EXTENSION_OID, signed_key(SERVER_SEED, b"x")), False)
                ]
            ),
            NOW,
            "did not sign the certificate's key",
        ),
        (lambda: certificate(sign_spki_of=ec.generate_private_key(ec.SECP256R1())), NOW, "did not sign"),
        (
            lambda: certificate(
                extensions=[(x509.UnrecognizedExtension(tlsid.LIBP2P_EXTENSION_OID, b"\x30\x03\x04\x01"), False)]
            ),
            NOW,
            "truncated",
        ),
        (
            lambda: certificate(
                extensions=[(x509.UnrecognizedExtension(tlsid.LIBP2P_EXTENSION_OID, b"\x30\x84" + bytes(600)), False)]
            ),
            NOW,
            "over 512 bytes",
        ),
        (
            lambda: certificate(
                extensions=[
                    (x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00"), True),
                    *[(x509.UnrecognizedExtension(tlsid.LIBP2P_EXTENSION_OID, signed_key(SERVER_SEED, b"")), False)],
                ]
            ),
            NOW,
            "critical extensions",
        ),
        (lambda: certificate(), NOW - 7200, "not now"),
        (lambda: certificate(lifetime=datetime.timedelta(days=1)), NOW + 2 * 86400, "not now"),
        (lambda: b"\x30\x82\x01\x00" + bytes(256), NOW, "not a valid self-signed X.509"),
        (lambda: b"garbage", NOW, "not a valid self-signed X.509"),
        (lambda: b"", NOW, "1 to 4096 bytes"),
        (lambda: bytes(5000), NOW, "1 to 4096 bytes"),
    ],
    ids=[
        "no-extension",
        "signature-over-other-bytes",
        "signature-over-another-key",
        "truncated-der",
        "oversized-extension",
        "unknown-critical-extension",
        "not-yet-valid",
        "expired",
        "garbage-der",
        "not-der",
        "empty",
        "oversized",
    ],
)
def test_a_certificate_that_does_not_prove_its_peer_is_refused(make, now, error):
    with pytest.raises(IdentityError, match=error):
        tlsid.certificate_peer(make(), now)


def test_a_certificate_bound_to_another_peer_is_refused():
    der = certificate(seed=STRANGER_SEED)
    with pytest.raises(IdentityError, match=f"bound to .* not to {VECTOR_PEER}"):
        tlsid.check_certificate(der, VECTOR_PEER, NOW)


# ---- the authorization header, bytes in, bytes out ---------------------------------------------------------------


def test_an_authorization_names_its_signer_for_one_server_and_certificate_until_it_expires():
    digest = hashlib.sha256(VECTOR_CERT).digest()
    header = tlsid.make_auth(ALLOWED_SEED, VECTOR_PEER, VECTOR_CERT, NOW)
    assert header == VECTOR_AUTH
    assert digest.hex() == "9f133a37d4afbea0ae73b4b937be24c33bd97671be640763d2977ff14582a007"
    assert (
        tlsid.auth_payload(VECTOR_PEER, digest, ALLOWED, NOW + 300)
        .hex()
        .startswith("6b6f676974756e652d646174612d617574682f3100313244334b6f6f574134586f7031")
    )
    assert tlsid.check_auth(header, VECTOR_PEER, digest, NOW) == ALLOWED
    assert tlsid.check_auth(header, VECTOR_PEER, digest, NOW + tlsid.AUTH_LIFETIME) == ALLOWED
    refusals = {
        "another server": (header, ALLOWED, digest, NOW),
        "another certificate": (header, VECTOR_PEER, hashlib.sha256(b"other").digest(), NOW),
        "expired": (header, VECTOR_PEER, digest, NOW + tlsid.AUTH_LIFETIME + 1),
        "too long valid": (
            tlsid.make_auth(ALLOWED_SEED, VECTOR_PEER, VECTOR_CERT, NOW + tlsid.MAX_CLOCK_SKEW + 1),
            VECTOR_PEER,
            digest,
            NOW,
        ),
        "another scheme": ("Bearer " + header.split(" ")[1], VECTOR_PEER, digest, NOW),
        "tampered": (header[:-2] + ("A" if header[-2] != "A" else "B") + header[-1], VECTOR_PEER, digest, NOW),
        "cut short": (header[:-1], VECTOR_PEER, digest, NOW),
        "not base64": (header[:-1] + "*", VECTOR_PEER, digest, NOW),
        "huge": (header + "A" * 100_000, VECTOR_PEER, digest, NOW),
    }
    for why, arguments in refusals.items():
        with pytest.raises(IdentityError):
            tlsid.check_auth(*arguments)
            pytest.fail(f"{why}: accepted")


# ---- the exchange, over TLS on 127.0.0.1 -------------------------------------------------------------------------


class DataPort:
    """A data port as node/dataport.py runs one, for two datasets: "public" (anyone, plain HTTP or TLS) and
    "private" (over TLS only, to ALLOWED). Anything else, and a refused request, gets the 404 of a dataset not
    held. Plain HTTP and TLS share the port (ServerTls.accept)."""

    def __init__(self, seed: bytes = SERVER_SEED) -> None:
        self.identity = ServerTls(seed)
        self.audiences = {"public": PUBLIC, "private": Audience(frozenset({ALLOWED}))}
        self.requests = 0
        self.served: list[tuple[str, str | None]] = []

    async def handle(self, stream) -> None:
        accepted = await self.identity.accept(stream, TIMEOUT)
        if accepted is not None:
            await self.answer(accepted)

    async def answer(self, stream) -> None:
        connection = h11.Connection(h11.SERVER)
        try:
            while (event := connection.next_event()) is h11.NEED_DATA:
                connection.receive_data(await stream.receive_some(65536))
            if not isinstance(event, h11.Request):
                return
            self.requests += 1
            name = event.target.decode().strip("/").split("/")[0]
            peer = requester(event.headers, stream, self.identity)
            audience = self.audiences.get(name)
            if audience is None or not (audience.peers is None or (peer is not None and audience.admits(peer))):
                status, body = 404, f"this node does not hold {name}\n".encode()
            else:
                status, body = 200, DATA
                self.served.append((name, peer))
            head = h11.Response(
                status_code=status, headers=[("Content-Length", str(len(body))), ("Connection", "close")]
            )
            await stream.send_all(connection.send(head) + connection.send(h11.Data(data=body)))
            await stream.send_all(connection.send(h11.EndOfMessage()))
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


@asynccontextmanager
async def data_port(seed: bytes = SERVER_SEED):
    """(the DataPort, its http:// base URL, its https:// base URL: the same port) on 127.0.0.1."""
    port = DataPort(seed)
    async with trio.open_nursery() as nursery:
        listener = (await nursery.start(partial(trio.serve_tcp, port.handle, 0, host="127.0.0.1")))[0]
        address = f"127.0.0.1:{listener.socket.getsockname()[1]}"
        yield port, f"http://{address}", f"https://{address}"
        nursery.cancel_scope.cancel()


async def status_and_body(client: HttpClient, url: str, headers=None) -> tuple[int, bytes]:
    async with client.get(url, headers) as response:
        return response.status, await response.body.read_all(1 << 22, url)


def test_an_allowed_fetcher_reads_a_private_dataset_over_tls():
    async def main():
        async with data_port() as (port, _, https):
            source = HttpSource(f"{https}/private", TIMEOUT, peer=PeerTls(port.identity.peer_id, ALLOWED_SEED))
            assert await source.read_all("shards/00000.tokens", len(DATA)) == DATA
            public = HttpSource(f"{https}/public", TIMEOUT, peer=PeerTls(port.identity.peer_id, None))
            assert await public.read_all("manifest.json", len(DATA)) == DATA
        assert port.served == [("private", ALLOWED), ("public", None)]

    run(main)


def test_a_private_dataset_is_refused_like_an_absent_one_to_everyone_else():
    """A stranger, no identity, a header made for another server or certificate, an expired header, and any request
    over plain HTTP: each gets the very 404 of a dataset the node does not hold."""

    async def main():
        async with data_port() as (port, http, https), data_port(STRANGER_SEED) as (other, _, other_https):
            server = port.identity.peer_id
            stranger = HttpClient(TIMEOUT, peer=PeerTls(server, STRANGER_SEED))
            anonymous = HttpClient(TIMEOUT, peer=PeerTls(server, None))
            missing = await status_and_body(anonymous, f"{https}/absent/manifest.json")
            assert missing[0] == 404
            expected = (404, missing[1].replace(b"absent", b"private"))
            assert expected == (404, b"this node does not hold private\n")
            assert await status_and_body(stranger, f"{https}/private/manifest.json") == expected
            assert await status_and_body(anonymous, f"{https}/private/manifest.json") == expected
            # A header the allowed fetcher signed for another server (a relay) is worth nothing here.
            relayed = tlsid.make_auth(ALLOWED_SEED, other.identity.peer_id, other.identity.certificate, time.time())
            assert await status_and_body(anonymous, f"{https}/private/x", {"Authorization": relayed}) == expected
            # ...nor one for this server's peer ID but another certificate, nor an expired one.
            stale = tlsid.make_auth(ALLOWED_SEED, server, other.identity.certificate, time.time())
            assert await status_and_body(anonymous, f"{https}/private/x", {"Authorization": stale}) == expected
            expired = tlsid.make_auth(ALLOWED_SEED, server, port.identity.certificate, time.time() - 3600)
            assert await status_and_body(anonymous, f"{https}/private/x", {"Authorization": expired}) == expected
            # Plain HTTP never gets it, whatever the request carries.
            plain = HttpClient(TIMEOUT)
            genuine = tlsid.make_auth(ALLOWED_SEED, server, port.identity.certificate, time.time())
            assert await status_and_body(plain, f"{http}/private/x", {"Authorization": genuine}) == expected
            assert await status_and_body(plain, f"{http}/public/x") == (200, DATA)
            assert other_https
        assert port.served == [("public", None)]

    run(main)


def test_the_fetcher_drops_a_server_bound_to_another_peer_before_asking():
    async def main():
        async with data_port(STRANGER_SEED) as (port, _, https):
            source = HttpSource(f"{https}/private", TIMEOUT, peer=PeerTls(VECTOR_PEER, ALLOWED_SEED))
            with pytest.raises(SourceError, match=f"bound to {port.identity.peer_id}, not to {VECTOR_PEER}"):
                await source.read_all("manifest.json", 1 << 20)
            with pytest.raises(SourceError, match="https:// only"):
                await HttpSource(f"http{https[5:]}/private", TIMEOUT, peer=PeerTls(VECTOR_PEER, ALLOWED_SEED)).read_all(
                    "manifest.json", 1 << 20
                )
        assert port.requests == 0

    run(main)


def test_a_connection_that_opens_tls_and_then_talks_nonsense_is_closed_unanswered():
    async def main():
        async with data_port() as (port, http, _):
            stream = await trio.open_tcp_stream("127.0.0.1", int(http.rsplit(":", 1)[1]))
            await stream.send_all(b"\x16\x03\x01\x00\x05hello GET /public/x HTTP/1.1\r\n\r\n")
            try:
                answer = await stream.receive_some(65536)  # EOF, or a TLS alert record (0x15)
            except trio.BrokenResourceError:
                answer = b""
            assert answer[:1] in (b"", b"\x15")
            await stream.aclose()
        assert port.requests == 0

    run(main)
