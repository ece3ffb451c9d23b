"""The fetcher's piece scheduling, as pure state: no sockets, and the time given by the test. Every rule here is
about over-fetch: a source should send only bytes the fetcher keeps (node/piece_board.py)."""

import math

from kogitune.node.piece_board import PieceBoard

STALE = 0.25
STEAL = 1.0


def board_of(count: int) -> PieceBoard:
    return PieceBoard(count, STALE, STEAL)


def test_waiting_workers_share_the_open_run_and_no_run_overlaps_another():
    board = board_of(8)
    first = board.take(0.0, sharers=2)
    second = board.take(0.0, sharers=1)
    assert (first.start, first.end) == (0, 4) and (second.start, second.end) == (4, 8)
    assert board.take(0.0) is None, "every piece is reserved by a stream that keeps up"


def test_a_stream_that_keeps_up_is_never_cut_and_sends_nothing_twice():
    board = board_of(4)
    run = board.take(0.0)
    for index in range(4):
        assert board.take(0.1 * index + 0.05) is None
        assert board.received(run, index, 0.1 * index + 0.1)
        board.checked(index, ok=True)
    assert run.end == 4 and board.complete and board.take(9.0) is None


def test_a_slow_stream_gives_the_back_half_of_its_run_to_an_idle_worker():
    board = board_of(8)
    slow = board.take(0.0)
    assert board.received(slow, 0, 0.5)  # 0.5 s a piece: 7 more take 3.5 s > STEAL
    thief = board.take(0.6)
    assert (thief.start, thief.end) == (5, 8) and slow.end == 5
    assert not board.received(slow, 5, 9.0), "past its cut, a piece is not its own (the stream stops at its end)"


def test_a_stuck_stream_is_taken_over_in_the_endgame_only_and_once():
    board = board_of(3)
    stuck = board.take(1.0)
    board.heard(stuck, 1.0)  # its source answered, then sent nothing
    assert board.take(1.1) is None
    assert board.next_change_at(1.1) == 1.0 + STALE
    thief = board.take(1.0 + STALE)
    assert (thief.start, thief.end) == (0, 3) and stuck.end == 1
    board.heard(thief, 1.0 + STALE)
    assert board.take(1.0 + STALE) is None and board.next_change_at(1.3) == 1.0 + 2 * STALE
    assert board.received(stuck, 0, 1.3), "the first copy of the piece both were receiving is checked"
    assert not board.received(thief, 0, 1.4)
    board.checked(0, ok=True)
    board.end(stuck)
    assert board.received(thief, 1, 1.5) and board.received(thief, 2, 1.6)
    board.checked(1, ok=True)
    board.checked(2, ok=True)
    assert board.complete and board.next_change_at(9.0) == math.inf


def test_an_ended_run_opens_what_it_did_not_receive():
    board = board_of(4)
    run = board.take(0.0)
    assert board.received(run, 0, 0.1)
    board.end(run)
    assert [board.is_open(i) for i in range(4)] == [False, True, True, True]
    again = board.take(0.2)
    assert (again.start, again.end) == (1, 4)


def test_a_piece_that_fails_its_check_opens_again():
    board = board_of(3)
    run = board.take(0.0)
    assert board.received(run, 1, 0.1)
    board.checked(1, ok=False)
    assert board.is_open(1) and board.remaining == 3


def test_a_stream_that_cannot_seek_takes_open_pieces_before_its_run_only():
    """A source without Range support streams from piece 0: pieces before its run are taken when open, never when
    another stream holds them."""
    board = board_of(4)
    other = board.take(0.0, sharers=2)
    mine = board.take(0.0)
    assert (other.start, mine.start) == (0, 2)
    assert not board.received(mine, 0, 0.1)
    board.end(other)
    assert board.received(mine, 1, 0.2) and board.received(mine, 2, 0.3)


def test_a_stream_whose_bytes_still_come_is_not_stuck_until_its_piece_takes_steal_seconds():
    """A source sending a piece slowly (py-libp2p on a loaded machine: tenths of a second a piece) is sending the
    run: taken over at STALE, the run would be sent twice, its bytes in flight paid for by that source. A dripping
    one is taken over once its piece has taken STEAL."""
    board = board_of(2)
    slow = board.take(0.0)
    for heard in (0.0, 0.2, 0.4, 0.6, 0.75):
        board.heard(slow, heard)
        assert board.take(heard + 0.2) is None, "bytes are coming: not stuck"
    assert board.next_change_at(0.96) == STEAL
    thief = board.take(STEAL)
    assert (thief.start, thief.end) == (0, 2) and slow.end == 1


def test_a_stream_that_goes_silent_mid_piece_is_taken_over_after_stale():
    board = board_of(2)
    hung = board.take(0.0)
    board.heard(hung, 0.1)
    assert board.take(0.1 + STALE - 0.01) is None and board.next_change_at(0.2) == 0.1 + STALE
    thief = board.take(0.1 + STALE)
    assert (thief.start, thief.end) == (0, 2) and hung.end == 1


def test_a_source_that_does_not_answer_is_taken_over_after_steal_seconds_not_stale():
    """Asked a moment ago, a source may be about to answer (a loaded machine: tenths of a second): taking its run
    over at STALE had the origin send the run twice in tests/test_swarm_job.py; one that never answers costs STEAL."""
    board = board_of(2)
    silent = board.take(0.0)
    assert board.take(STALE) is None and board.next_change_at(STALE) == STEAL
    thief = board.take(STEAL)
    assert (thief.start, thief.end) == (0, 2) and silent.end == 1
