"""Which pieces of a shard are done, being checked, or being streamed: the fetcher's board, pure state (no I/O, no
clock: the caller gives the time), so that its rules are tested without a network (tests/test_piece_board.py)."""

from __future__ import annotations

import math

STALE_CLAIM_SECONDS = 0.25
"""A piece claimed this long ago and still not received whole may be streamed from a second source too (endgame):
a hung or slow source then holds up a shard by at most this long, and sources that keep up never send a piece twice."""


class PieceBoard:
    """Which pieces of a shard are done or being checked, and which streams are reading each one (pure state; the
    caller gives the time).

    A piece is open when it is neither done, nor received and being checked, nor claimed. Workers start at the
    longest run of open pieces (in its middle when a stream is already flowing into it). A piece whose latest claim
    is `stale_after` seconds old may be claimed again: when nothing is open, idle workers take those (endgame), and
    the first verified copy wins. A piece that fails its check opens again.
    """

    def __init__(self, count: int, stale_after: float = STALE_CLAIM_SECONDS) -> None:
        self.done = bytearray(count)
        self.checking = bytearray(count)
        self.claims = [0] * count
        self.claimed_at = [0.0] * count
        self.stale_after = stale_after

    def __len__(self) -> int:
        return len(self.done)

    @property
    def complete(self) -> bool:
        return all(self.done)

    @property
    def remaining(self) -> int:
        return len(self.done) - sum(self.done)

    def is_open(self, index: int) -> bool:
        return not self.done[index] and not self.checking[index] and not self.claims[index]

    def claimable(self, index: int, now: float) -> bool:
        """Open, or claimed `stale_after` seconds ago and still not received."""
        return (
            index < len(self.done)
            and not self.done[index]
            and not self.checking[index]
            and (not self.claims[index] or now - self.claimed_at[index] >= self.stale_after)
        )

    def claim(self, index: int, now: float) -> bool:
        if not self.claimable(index, now):
            return False
        self.claims[index] += 1
        self.claimed_at[index] = now
        return True

    def release(self, index: int) -> None:
        self.claims[index] -= 1

    def hand_over(self, index: int) -> bool:
        """A stream received piece `index` whole: release its claim; True if it is the copy to check."""
        self.claims[index] -= 1
        if self.done[index] or self.checking[index]:
            return False
        self.checking[index] = 1
        return True

    def checked(self, index: int, ok: bool) -> None:
        self.checking[index] = 0
        if ok:
            self.done[index] = 1

    def finish(self, index: int) -> None:
        self.done[index] = 1

    def any_claimable_from(self, index: int, now: float) -> bool:
        """Whether a stream that cannot seek should read on from `index`: a piece ahead is claimable."""
        return any(self.claimable(i, now) for i in range(index, len(self.done)))

    def pick_start(self, now: float) -> int | None:
        """The first piece to stream: in the longest open run, else the first stale claim; None when there is none
        (every piece done, checking, or claimed by a stream that keeps up)."""
        best, best_len, index = None, 0, 0
        while index < len(self.done):
            if self.is_open(index):
                end = index
                while end < len(self.done) and self.is_open(end):
                    end += 1
                if end - index > best_len:
                    best, best_len = index, end - index
                index = end
            else:
                index += 1
        if best is not None:
            if best > 0 and self.claims[best - 1]:
                best += best_len // 2
            return best
        return next((i for i in range(len(self.done)) if self.claimable(i, now)), None)

    def run_end(self, start: int) -> int:
        """The end (exclusive) of the run of open pieces after `start`: where a stream from `start` should stop,
        since the next piece is done, being checked or already streaming from another source."""
        end = start + 1
        while end < len(self.done) and self.is_open(end):
            end += 1
        return end

    def next_stale_at(self) -> float:
        """When the oldest claim of a piece not yet received turns stale (infinity when there is none)."""
        return min(
            (
                self.claimed_at[i] + self.stale_after
                for i in range(len(self.done))
                if self.claims[i] and not self.done[i] and not self.checking[i]
            ),
            default=math.inf,
        )
