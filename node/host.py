"""The libp2p host: TCP + Noise + Yamux only, with a persistent Ed25519 identity.

py-libp2p's default `new_host()` also accepts plaintext and secio; Kogitune passes Noise as the only security
transport, so a plaintext dialer is refused at negotiation. The identity is a 32-byte Ed25519 seed in
`<home>/identity.key` (mode 0600), so the peer ID survives restarts.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

IDENTITY_FILE = "identity.key"


def load_identity_seed(home: Path) -> bytes:
    """The node's Ed25519 seed, created (owner-only, atomically) on first use."""
    path = Path(home) / IDENTITY_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{IDENTITY_FILE}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(os.urandom(32))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    seed = path.read_bytes()
    if len(seed) != 32:
        from .errors import NodeError

        raise NodeError(f"{path} is not a Kogitune identity (32 bytes); move it away to create a new one")
    return seed


def new_kogitune_host(seed: bytes):
    """A libp2p host that speaks only Noise (security) and Yamux (multiplexing)."""
    from libp2p import new_host
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.crypto.x25519 import create_new_key_pair as new_x25519_pair
    from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
    from libp2p.security.noise.transport import Transport as NoiseTransport

    logging.getLogger("libp2p").addHandler(logging.NullHandler())  # after importing libp2p, which resets it
    key_pair = create_new_key_pair(seed)
    noise = NoiseTransport(key_pair, noise_privkey=new_x25519_pair().private_key)
    return new_host(key_pair=key_pair, sec_opt={NOISE_PROTOCOL_ID: noise}, muxer_preference="YAMUX")
