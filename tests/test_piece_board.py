"""The fetcher's piece scheduling, as pure state: no sockets, and the time given by the test."""

import math

from kogitune.node.piece_board import PieceBoard

STALE = 0.25


def test_first_worker_starts_at_zero_second_in_the_middle_of_the_open_run():
    board = PieceBoard(8, STALE)
    assert board.pick_start(0.0) == 0
    assert board.claim(0, 0.0)
    assert board.pick_start(0.0) == 4


def test_a_stream_asks_for_the_open_run_after_its_start_only():
    board = PieceBoard(8, STALE)
    assert board.run_end(0) == 8
    board.claim(0, 0.0)
    board.claim(5, 0.0)
    assert board.run_end(0) == 5 and board.run_end(5) == 8
    board.finish(7)
    assert board.run_end(5) == 7 and board.run_end(6) == 7


def test_a_claimed_piece_is_claimed_again_only_once_its_claim_is_stale():
    board = PieceBoard(2, STALE)
    assert board.claim(1, 10.0)
    assert not board.claim(1, 10.2)
    assert board.claim(1, 10.25)
    assert not board.claim(1, 10.3), "the second claim is fresh"
    board.finish(1)
    assert not board.claim(1, 99.0)


def test_endgame_waits_for_a_stale_claim_then_duplicates_the_first_one():
    """Streams that keep up are never duplicated; a claim older than stale_after is."""
    board = PieceBoard(3, STALE)
    for index in range(3):
        board.claim(index, 1.0 + index / 10)
    board.finish(0)
    assert board.pick_start(1.2) is None
    assert board.next_stale_at() == 1.1 + STALE
    assert board.pick_start(1.1 + STALE) == 1
    board.finish(1)
    board.finish(2)
    assert board.complete and board.pick_start(99.0) is None and board.next_stale_at() == math.inf


def test_released_pieces_open_again():
    board = PieceBoard(4, STALE)
    board.claim(2, 0.0)
    board.release(2)
    assert board.is_open(2) and board.remaining == 4
    assert board.any_claimable_from(3, 0.0)
    board.finish(3)
    assert not board.any_claimable_from(3, 0.0)


def test_a_received_piece_is_checked_once_and_not_streamed_again_meanwhile():
    board = PieceBoard(2, STALE)
    assert board.claim(0, 0.0) and board.claim(0, STALE)
    assert board.hand_over(0)
    assert not board.hand_over(0)
    assert board.claims[0] == 0 and not board.is_open(0)
    assert not board.claim(0, 99.0)
    board.claim(1, 0.0)
    board.finish(1)
    assert board.pick_start(99.0) is None and not board.complete
    board.checked(0, ok=True)
    assert board.complete


def test_a_piece_that_fails_its_check_opens_again():
    board = PieceBoard(3, STALE)
    board.claim(1, 0.0)
    board.hand_over(1)
    board.checked(1, ok=False)
    assert board.is_open(1) and board.remaining == 3
    assert board.pick_start(0.0) == 0


def test_a_stream_that_cannot_seek_reads_on_to_stale_pieces_only():
    """A source without Range support streams from piece 0: it reads on while a piece ahead is open or stale, and
    stops (instead of reading the rest of the file) when the pieces ahead are claimed by streams that keep up."""
    board = PieceBoard(3, STALE)
    board.finish(0)
    board.claim(1, 1.0)
    board.claim(2, 1.0)
    assert not board.any_claimable_from(1, 1.1)
    assert board.any_claimable_from(1, 1.0 + STALE)
    board.hand_over(2)
    board.finish(1)
    assert not board.any_claimable_from(1, 99.0)
