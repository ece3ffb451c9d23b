"""Which pieces of a shard are done, being checked, or reserved for a stream: the fetcher's board, pure state (no
I/O, no clock: the caller gives the time), so that its rules are tested without a network (tests/test_piece_board.py).

Every byte a source sends that the fetcher does not keep is waste (the origin of a training job pays for it), so a
stream's request covers a `Run` of pieces reserved for that stream alone: no other stream starts inside it, and a
stream stops early only when its run is cut, which happens in two cases, both rare by design:

- its stream is slow: at the rate it has kept, it needs more than STEAL_SECONDS for the rest of its run, and an idle
  worker takes the back half of what is left (the slow stream stops at the cut and closes its request: the bytes
  in flight past the cut are lost, few at a slow stream's rate);
- its stream is stuck, while no piece is left unreserved (endgame): its source has not answered within
  STEAL_SECONDS, or has sent no byte for STALE_CLAIM_SECONDS since (a hung source), or sends so slowly that the
  piece being received takes longer than STEAL_SECONDS (a dripping one): an idle worker takes that piece and the
  rest of the run; the first verified copy of that one piece wins. A stream that is slow to answer or sends a
  piece a few bytes at a time is not stuck: its source is about to send, or sending, the run (on a loaded machine
  a py-libp2p stream takes tenths of a second to answer and to deliver a piece), and asking another source for it
  would have both send it: the first source's bytes in flight, up to the whole run on loopback's socket buffers,
  are paid for whether or not the fetcher reads them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

STALE_CLAIM_SECONDS = 0.25
"""A stream that has received no byte this long since its source answered has its run taken over (endgame): a source
that hangs mid-stream then holds up a shard by at most this long (one that never answers, STEAL_SECONDS), and
sources that keep sending never send a piece twice."""
STEAL_SECONDS = 1.0
"""A stream that, at the rate it has kept, needs longer than this for the rest of its run gives the back half of it
to an idle worker: a slow source does not hold up a shard that faster sources could finish. In the endgame, a
stream that has no answer after this long, or whose piece takes longer, has its run taken over."""


@dataclass(eq=False)
class Run:
    """The pieces [next, end) one stream has asked for and not yet received; `next` is the one it is receiving."""

    start: int
    end: int
    asked: float
    """When the stream asked for it."""
    next: int = -1
    since: float = -1.0
    """When the stream asked, or last received a piece."""
    heard: float | None = None
    """When the stream last received bytes, its answer's head included (`PieceBoard.heard`); None before."""
    received: int = 0

    def __post_init__(self) -> None:
        self.next = self.start if self.next < 0 else self.next
        self.since = self.asked if self.since < 0 else self.since

    @property
    def left(self) -> int:
        return self.end - self.next


class PieceBoard:
    """Which pieces of a shard are done or being checked, and which `Run` each open piece is reserved for.

    A piece is open when it is neither done, nor received and being checked, nor reserved. A worker asks `take` for
    a run: its share of the longest open run (split among the workers that are waiting for one, so that sources
    share a shard from the start), else the back half of a slow stream's run, else (endgame) a stuck stream's run.
    A piece that fails its check opens again, and so do the pieces of a run whose stream ends early.
    """

    def __init__(self, count: int, stale_after: float = STALE_CLAIM_SECONDS, steal_after: float = STEAL_SECONDS):
        self.done = bytearray(count)
        self.checking = bytearray(count)
        self.owner: list[Run | None] = [None] * count
        self.runs: list[Run] = []
        self.stale_after = stale_after
        self.steal_after = steal_after

    def __len__(self) -> int:
        return len(self.done)

    @property
    def complete(self) -> bool:
        return all(self.done)

    @property
    def remaining(self) -> int:
        return len(self.done) - sum(self.done)

    def is_open(self, index: int) -> bool:
        return not self.done[index] and not self.checking[index] and self.owner[index] is None

    def finish(self, index: int) -> None:
        self.done[index] = 1

    def take(self, now: float, sharers: int = 1) -> Run | None:
        """A run for a worker to request, reserved for it; None when there is none to take now (wait for progress
        or `next_change_at`). `sharers`: the workers waiting for a run now, this one included."""
        start, length = self._longest_open_run()
        if length:
            return self._reserve(start, start + -(-length // max(1, sharers)), now)
        slow = [r for r in self.runs if r.left >= 3 and self._seconds_to_finish(r, now) > self.steal_after]
        if slow:
            victim = max(slow, key=lambda r: self._seconds_to_finish(r, now))
            cut = victim.next + 1 + (victim.left - 1) // 2
            end, victim.end = victim.end, cut
            return self._reserve(cut, end, now)
        stuck = [r for r in self.runs if self._may_take_over(r) and now >= self._stuck_at(r)]
        if stuck:
            victim = min(stuck, key=self._stuck_at)
            end, victim.end = victim.end, victim.next + 1  # it may still finish the piece it is receiving
            return self._reserve(victim.next, end, now)
        return None

    def received(self, run: Run, index: int, now: float) -> bool:
        """The stream of `run` received piece `index` whole; True if this copy is the one to check. Pieces a stream
        reads outside its run (a source that cannot seek sends from byte 0) are taken when they are open."""
        if run.next <= index < run.end:
            run.next, run.since, run.heard, run.received = index + 1, now, now, run.received + 1
        elif not self.is_open(index):
            return False
        if self.owner[index] is run:
            self.owner[index] = None
        if not self._wanted(index):
            return False
        self.checking[index] = 1
        return True

    def heard(self, run: Run, now: float) -> None:
        """The stream of `run` received bytes (its answer's head, or part of a piece): its source is sending."""
        run.heard = now

    def end(self, run: Run) -> None:
        """The stream of `run` stopped: the pieces still reserved for it open again."""
        for index in range(run.next, len(self.done)):
            if self.owner[index] is run:
                self.owner[index] = None
        run.end = run.next
        if run in self.runs:
            self.runs.remove(run)

    def checked(self, index: int, ok: bool) -> None:
        self.checking[index] = 0
        if ok:
            self.done[index] = 1

    def next_change_at(self, now: float) -> float:
        """When a run may next be taken from a stream without progress (infinity when none can)."""
        times = [self._stuck_at(r) for r in self.runs if self._may_take_over(r)]
        return min(times, default=math.inf)

    def _stuck_at(self, run: Run) -> float:
        """When `run`'s stream counts as stuck: no answer after steal_after (a source asked a moment ago may be
        answering: a loaded machine takes tenths of a second); once answered, no byte for stale_after, or its piece
        not whole after steal_after."""
        if run.heard is None:
            return run.since + self.steal_after
        return min(run.heard + self.stale_after, run.since + self.steal_after)

    def _may_take_over(self, run: Run) -> bool:
        """Whether the run's piece being received is still its own and wanted (once taken over, never again)."""
        return run.left > 0 and self.owner[run.next] is run and self._wanted(run.next)

    def _wanted(self, index: int) -> bool:
        return not self.done[index] and not self.checking[index]

    def _reserve(self, start: int, end: int, now: float) -> Run:
        run = Run(start, end, asked=now)
        for index in range(start, end):
            self.owner[index] = run
        self.runs.append(run)
        return run

    def _longest_open_run(self) -> tuple[int, int]:
        best, best_len, index = 0, 0, 0
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
        return best, best_len

    def _seconds_to_finish(self, run: Run, now: float) -> float:
        """The time the stream of `run` needs for the rest of its run at the rate it has kept since it asked (as if
        the piece it is receiving arrived now: a lower bound)."""
        return (now - run.asked) / (run.received + 1) * run.left
