"""When a peer's have-map is asked again (node/havemaps.py): pure rules, no network."""

from types import SimpleNamespace

from kogitune.node.havemaps import HAVE_REFRESH_SECONDS, _due


def peer(job_peer: bool, asked_at: float = 0.0, failures: int = 0) -> SimpleNamespace:
    backoff = HAVE_REFRESH_SECONDS * 2**failures
    return SimpleNamespace(job_peer=job_peer, have_due=asked_at + backoff, have_failures=failures)


def test_a_job_peer_is_asked_at_every_shard_fetch_another_peer_once_its_map_is_due():
    """A job peer may have finished the very shard a moment ago (a map a quarter second old sent a host's fetch to
    the origin: 1.13 to 1.39 copies in tests/test_swarm_job.py); other peers are asked at most every
    HAVE_REFRESH_SECONDS."""
    assert _due(peer(job_peer=True), 0.01)
    assert not _due(peer(job_peer=False), 0.01)
    assert _due(peer(job_peer=False), HAVE_REFRESH_SECONDS)


def test_a_job_peer_that_does_not_answer_backs_off_like_any_peer():
    silent = peer(job_peer=True, failures=3)
    assert not _due(silent, 1.0)
    assert _due(silent, 8 * HAVE_REFRESH_SECONDS)
