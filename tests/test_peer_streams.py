"""Opening a stream of the data protocol (node/peers.py): its multistream-select proposal travels with the request.

The peer is a scripted stream: what the fetcher writes and reads, in order, is the thing under test (the real
negotiation against py-libp2p's listener runs in every network test, and against an older node in
test_network_providers.py).
"""

import pytest
import trio

from kogitune.errors import SourceError
from kogitune.node.peers import PROPOSAL, _open
from kogitune.protocol import wire

REQUEST = wire.HaveRequest(bytes(32))
ANSWER = wire.encode_response(wire.HaveResponse(wire.have_bitmap([True, False, True]), 4012))


class ScriptedStream:
    """Answers each read with the next of `replies` (then the end of the stream); logs writes and reads."""

    def __init__(self, replies: list[bytes]) -> None:
        self.replies, self.log, self.protocol = list(replies), [], None

    async def write(self, data: bytes) -> None:
        self.log.append(("write", bytes(data)))

    async def read(self, size: int) -> bytes:
        from libp2p.network.stream.exceptions import StreamEOF

        self.log.append(("read", size))
        if not self.replies:
            raise StreamEOF()
        reply, rest = self.replies[0][:size], self.replies[0][size:]
        self.replies[0:1] = [rest] if rest else []
        return reply

    def set_protocol(self, protocol) -> None:
        self.protocol = protocol

    async def reset(self) -> None:
        self.log.append(("reset",))


class ScriptedHost:
    def __init__(self, stream: ScriptedStream) -> None:
        self.stream = stream

    def get_network(self):
        return self

    async def new_stream(self, peer_id, protocols=None):
        if protocols is not None:  # py-libp2p's negotiating host.new_stream: only the older-protocol check uses it
            raise ConnectionError("no older protocol either")
        return self.stream


def open_with(replies: list[bytes]):
    stream = ScriptedStream(replies)

    async def main():
        return await _open(ScriptedHost(stream), "peer", REQUEST, 5)

    return stream, trio.run(main)


@pytest.mark.parametrize("split", [False, True])
def test_the_proposal_and_the_request_leave_in_one_write_before_any_read(split):
    """One round trip: py-libp2p's host.new_stream waits for each echo before it writes the next line (two round
    trips through both peers' Noise and Yamux before the request left). The echo and the response may arrive
    together or apart."""
    replies = [PROPOSAL[:5], PROPOSAL[5:] + ANSWER[:3], ANSWER[3:]] if split else [PROPOSAL + ANSWER]
    stream, (_, response, unused) = open_with(replies)
    assert stream.log[0] == ("write", PROPOSAL + wire.encode_request(REQUEST))
    assert all(event[0] == "read" for event in stream.log[1:])
    assert response == wire.HaveResponse(wire.have_bitmap([True, False, True]), 4012) and unused == b""
    assert stream.protocol == wire.PROTOCOL_ID


@pytest.mark.parametrize(
    "reply",
    [
        PROPOSAL[:20] + b"\x03na\n",  # the handshake echoed, the protocol refused (a node without it)
        b"\x13/multistream/2.0.0\n",  # another multistream version
        PROPOSAL[:10],  # the stream ends inside the echo
    ],
)
def test_a_peer_that_does_not_echo_the_proposal_is_refused_at_once(reply):
    """What differs from the echo ends the open as soon as it arrives, naming the protocol (no wait for a timeout:
    the peer would read the request as a protocol line)."""
    stream = ScriptedStream([reply])

    async def main():
        with trio.fail_after(1):
            await _open(ScriptedHost(stream), "peer", REQUEST, 30)

    with pytest.raises(SourceError, match=f"peer: does not speak {wire.PROTOCOL_ID}"):
        trio.run(main)
    assert ("reset",) in stream.log
