"""Errors of the networked side; children of kogitune.protocol's KogituneError."""

from kogitune.protocol.errors import KogituneError


class FetchError(KogituneError):
    """A dataset, shard or file could not be fetched from any of its sources."""


class SourceError(FetchError):
    """One source failed one request (refused, timed out, broke off, sent too much); others may still work."""


class SourceBusy(SourceError):
    """A source answered "busy" (its serving slots are taken) again and again (kogitune.node.peers asks again after
    short pauses first): alive and honest, but full for now."""


class NodeError(KogituneError):
    """The node cannot start, is not running, or refused a command."""
