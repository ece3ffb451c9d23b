"""The root of Kogitune's exception hierarchy; every error Kogitune raises is a KogituneError."""


class KogituneError(Exception):
    """Something went wrong; the message says what happened and what to do."""


class ManifestError(KogituneError):
    """A manifest does not follow the schema of docs/format.md."""


class IntegrityError(KogituneError):
    """Bytes do not match the hash that the manifest commits to."""


class IdentityError(KogituneError):
    """A TLS certificate or a data-port authorization does not prove the libp2p identity it claims (docs/protocol.md,
    "Private datasets on the data port")."""
