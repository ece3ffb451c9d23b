"""TLS on the data port: certificates bound to a node's libp2p key, and the fetcher's signed authorization.

A node serves private datasets on its data port only over TLS, and only to the peers of their allow-lists. Both
ends prove their libp2p identity (the Ed25519 key behind their peer ID) without any certificate authority:

- **The server's certificate** is libp2p's own (github.com/libp2p/specs, tls/tls.md): self-signed, for an ephemeral
  ECDSA P-256 key, with the extension 1.3.6.1.4.1.53594.1.1 holding SignedKey {the node's protobuf public key,
  its Ed25519 signature of "libp2p-tls-handshake:" ‖ the certificate's SubjectPublicKeyInfo}. A fetcher that dialed
  peer P accepts the connection only if `certificate_peer(der, now) == P`; the TLS handshake itself proves that
  the server holds the certificate's key.
- **The fetcher's authorization** travels in each request (`Authorization: KogituneData <token>`): its Ed25519
  public key, an expiry time, and its signature over (AUTH_CONTEXT, the server's peer ID, the SHA-256 of the
  server's certificate, its own peer ID, the expiry). Python's ssl cannot accept a self-signed client certificate
  (OpenSSL refuses it as an unknown CA before any callback could look at it), so the fetcher signs instead; the
  binding to the server's certificate makes a token useless anywhere but on the TLS connection it was made for.

Pure functions, bytes in and bytes out; every parse is bounded. docs/protocol.md is the specification.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import os

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from .errors import IdentityError
from .ids import ED25519_KEY_BYTES, ED25519_PROTOBUF_PREFIX, ED25519_SIGNATURE_BYTES
from .signing import peer_id_from_public_key

LIBP2P_EXTENSION_OID = x509.ObjectIdentifier("1.3.6.1.4.1.53594.1.1")
CERT_CONTEXT = b"libp2p-tls-handshake:"
CERT_LIFETIME = datetime.timedelta(days=365 * 100)
"""A certificate is valid from an hour before it was made (clock skew) for this long, as go-libp2p's: its key lives
in one process's memory only, so the validity window adds no protection that the binding does not."""
MAX_CERT_BYTES = 4096
"""A certificate is refused unparsed beyond this size (Kogitune's are about 450 bytes)."""
MAX_EXTENSION_BYTES = 512

AUTH_SCHEME = "KogituneData"
AUTH_CONTEXT = b"kogitune-data-auth/1\x00"
AUTH_LIFETIME = 300
"""Seconds for which a fetcher makes a token valid."""
MAX_CLOCK_SKEW = 300
"""Seconds that a server tolerates between its clock and a fetcher's: a token expired by the server's clock is
refused, and so is one that expires more than AUTH_LIFETIME + MAX_CLOCK_SKEW seconds from now."""
_TOKEN_BYTES = (
    ED25519_KEY_BYTES + 8 + ED25519_SIGNATURE_BYTES
)  # public key, expiry (unsigned 64-bit big-endian Unix seconds), signature
_TOKEN_CHARS = (_TOKEN_BYTES * 4 + 2) // 3  # base64url without padding


def make_certificate(
    seed: bytes, now: float, key: ec.EllipticCurvePrivateKey | None = None
) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """(DER certificate, its private key): a self-signed certificate for `key` (a fresh P-256 key if None), bound
    to the libp2p identity of the 32-byte Ed25519 `seed`, valid from an hour before `now` (Unix seconds)."""
    identity = Ed25519PrivateKey.from_private_bytes(seed)
    key = key or ec.generate_private_key(ec.SECP256R1())
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    public = identity.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    signed_key = _signed_key_der(ED25519_PROTOBUF_PREFIX + public, identity.sign(CERT_CONTEXT + spki))
    start = datetime.datetime.fromtimestamp(now, datetime.timezone.utc) - datetime.timedelta(hours=1)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "libp2p")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(int.from_bytes(os.urandom(8), "big") >> 1 or 1)
        .not_valid_before(start)
        .not_valid_after(start + CERT_LIFETIME)
        .add_extension(x509.UnrecognizedExtension(LIBP2P_EXTENSION_OID, signed_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(Encoding.DER), key


def certificate_peer(der: bytes, now: float) -> str:
    """The peer ID that the certificate `der` is bound to, after every check of libp2p's TLS spec: one valid
    self-signed X.509 certificate, within its validity at `now` (Unix seconds), no critical extension but
    libp2p's, and exactly one libp2p extension whose Ed25519 key signed the certificate's public key. IdentityError
    otherwise."""
    if not isinstance(der, bytes) or not der or len(der) > MAX_CERT_BYTES:
        raise IdentityError(f"a data port certificate is 1 to {MAX_CERT_BYTES} bytes of DER")
    try:
        certificate = x509.load_der_x509_certificate(der)
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise IdentityError(f"the data port certificate is not a valid self-signed X.509 certificate: {exc}") from None
    moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    if not certificate.not_valid_before_utc <= moment <= certificate.not_valid_after_utc:
        raise IdentityError(
            f"the data port certificate is valid from {certificate.not_valid_before_utc} to "
            f"{certificate.not_valid_after_utc}, not now ({moment})"
        )
    try:
        extensions = list(certificate.extensions)
    except ValueError as exc:
        raise IdentityError(f"the data port certificate has a malformed extension: {exc}") from None
    ours = [e for e in extensions if e.oid == LIBP2P_EXTENSION_OID]
    if len(ours) != 1 or not isinstance(ours[0].value, x509.UnrecognizedExtension):
        raise IdentityError("the data port certificate does not hold exactly one libp2p key extension")
    critical = [e.oid.dotted_string for e in extensions if e.critical and e.oid != LIBP2P_EXTENSION_OID]
    if critical:
        raise IdentityError(f"the data port certificate has critical extensions Kogitune does not know: {critical}")
    public_key, signature = _parse_signed_key(ours[0].value.value)
    spki = certificate.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, CERT_CONTEXT + spki)
    except (InvalidSignature, ValueError):
        raise IdentityError(
            "the libp2p key in the data port certificate did not sign the certificate's key: not bound to it"
        ) from None
    return peer_id_from_public_key(public_key)


def check_certificate(der: bytes, peer_id: str, now: float) -> None:
    """Return if the certificate `der` is bound to `peer_id` (certificate_peer); IdentityError otherwise."""
    bound = certificate_peer(der, now)
    if bound != peer_id:
        raise IdentityError(f"the data port's certificate is bound to {bound}, not to {peer_id} that was dialed")


def auth_payload(server_peer_id: str, certificate_sha256: bytes, fetcher_peer_id: str, expires: int) -> bytes:
    """What a fetcher signs: AUTH_CONTEXT ‖ server peer ID (ASCII) ‖ 0x00 ‖ the 32-byte SHA-256 of the server's
    certificate (DER) ‖ fetcher peer ID (ASCII) ‖ 0x00 ‖ expiry (8 bytes, big-endian Unix seconds)."""
    return (
        AUTH_CONTEXT
        + server_peer_id.encode("ascii")
        + b"\x00"
        + certificate_sha256
        + fetcher_peer_id.encode("ascii")
        + b"\x00"
        + expires.to_bytes(8, "big")
    )


def make_auth(seed: bytes, server_peer_id: str, certificate_der: bytes, now: float) -> str:
    """The `Authorization` header value by which the fetcher of Ed25519 `seed` asks the server `server_peer_id`, on
    the TLS connection whose server certificate is `certificate_der`, for its private datasets; valid AUTH_LIFETIME
    seconds from `now`."""
    key = Ed25519PrivateKey.from_private_bytes(seed)
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    expires = int(now) + AUTH_LIFETIME
    payload = auth_payload(
        server_peer_id, hashlib.sha256(certificate_der).digest(), peer_id_from_public_key(public), expires
    )
    token = public + expires.to_bytes(8, "big") + key.sign(payload)
    return f"{AUTH_SCHEME} {base64.urlsafe_b64encode(token).rstrip(b'=').decode('ascii')}"


def check_auth(value: str, server_peer_id: str, certificate_sha256: bytes, now: float) -> str:
    """The peer ID of the fetcher that signed the `Authorization` header `value` for this server (its peer ID and
    the SHA-256 of the certificate it serves this connection with), unexpired at `now`; IdentityError otherwise."""
    scheme, _, token = value.partition(" ") if isinstance(value, str) else ("", "", "")
    if scheme != AUTH_SCHEME or len(token) != _TOKEN_CHARS:
        raise IdentityError(
            f"a data port authorization is {AUTH_SCHEME!r}, a space and {_TOKEN_CHARS} base64url characters"
        )
    try:
        data = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except ValueError:
        raise IdentityError("the data port authorization is not base64url") from None
    public, rest = data[:ED25519_KEY_BYTES], data[ED25519_KEY_BYTES:]
    expires, signature = int.from_bytes(rest[:8], "big"), rest[8:]
    if expires < now:
        raise IdentityError(f"the data port authorization expired {now - expires:.0f} s ago")
    if expires > now + AUTH_LIFETIME + MAX_CLOCK_SKEW:
        raise IdentityError(f"the data port authorization is valid for more than {AUTH_LIFETIME + MAX_CLOCK_SKEW} s")
    fetcher = peer_id_from_public_key(public)
    try:
        Ed25519PublicKey.from_public_bytes(public).verify(
            signature, auth_payload(server_peer_id, certificate_sha256, fetcher, expires)
        )
    except (InvalidSignature, ValueError):
        raise IdentityError(
            f"the data port authorization of {fetcher} is not signed for this server's peer ID and certificate"
        ) from None
    return fetcher


def _signed_key_der(public_key: bytes, signature: bytes) -> bytes:
    """SignedKey ::= SEQUENCE { publicKey OCTET STRING, signature OCTET STRING } in DER (each part < 128 bytes)."""
    content = bytes([0x04, len(public_key)]) + public_key + bytes([0x04, len(signature)]) + signature
    return bytes([0x30, len(content)]) + content


def _parse_signed_key(der: bytes) -> tuple[bytes, bytes]:
    """(32-byte Ed25519 public key, 64-byte signature) of a SignedKey, strictly in DER; IdentityError otherwise."""
    if len(der) > MAX_EXTENSION_BYTES:
        raise IdentityError(f"the libp2p key extension is over {MAX_EXTENSION_BYTES} bytes")
    parts = []
    content, rest = _der_element(der, 0x30)
    if rest:
        raise IdentityError("the libp2p key extension has bytes after its SignedKey")
    for _ in range(2):
        part, content = _der_element(content, 0x04)
        parts.append(part)
    if content:
        raise IdentityError("the libp2p key extension's SignedKey has more than two fields")
    public_key, signature = parts
    prefix = ED25519_PROTOBUF_PREFIX
    if len(public_key) != len(prefix) + ED25519_KEY_BYTES or not public_key.startswith(prefix):
        raise IdentityError("the libp2p key extension does not hold an Ed25519 key and signature")
    if len(signature) != ED25519_SIGNATURE_BYTES:
        raise IdentityError("the libp2p key extension does not hold an Ed25519 key and signature")
    return public_key[len(prefix) :], signature


def _der_element(data: bytes, tag: int) -> tuple[bytes, bytes]:
    """(content, what follows) of the DER element of `tag` at the start of `data`, whose length is in short form or
    one long-form byte (a SignedKey is never longer)."""
    if len(data) < 2 or data[0] != tag:
        raise IdentityError(f"the libp2p key extension is not DER: expected tag {tag:#04x}")
    length, start = data[1], 2
    if length == 0x81 and len(data) > 2 and data[2] >= 0x80:
        length, start = data[2], 3
    elif length >= 0x80:
        raise IdentityError("the libp2p key extension is not DER: unsupported length")
    if start + length > len(data):
        raise IdentityError("the libp2p key extension is truncated")
    return data[start : start + length], data[start + length :]
