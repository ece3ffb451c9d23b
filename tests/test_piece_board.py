"""The fetcher's piece scheduling, as pure state: no sockets."""

from kogitune.node.fetch import PieceBoard


def test_first_worker_starts_at_zero_second_in_the_middle_of_the_open_run():
    board = PieceBoard(8)
    assert board.pick_start() == (0, False)
    assert board.claim(0)
    assert board.pick_start() == (4, False)


def test_a_claimed_piece_is_not_claimed_twice_unless_duplicating():
    board = PieceBoard(2)
    assert board.claim(1)
    assert not board.claim(1)
    assert board.claim(1, duplicate=True)
    board.finish(1)
    assert not board.claim(1, duplicate=True)


def test_endgame_duplicates_the_first_piece_still_in_flight():
    board = PieceBoard(3)
    for index in range(3):
        board.claim(index)
    board.finish(0)
    assert board.pick_start() == (1, True)
    board.finish(1)
    board.finish(2)
    assert board.complete and board.pick_start() is None


def test_released_pieces_open_again():
    board = PieceBoard(4)
    board.claim(2)
    board.release(2)
    assert board.is_open(2) and board.remaining == 4
    assert board.any_open_from(3)
    board.finish(3)
    assert not board.any_open_from(3)


def test_a_received_piece_is_checked_once_and_not_streamed_again_meanwhile():
    board = PieceBoard(2)
    assert board.claim(0) and board.claim(0, duplicate=True)
    assert board.hand_over(0)
    assert not board.hand_over(0)
    assert board.claims[0] == 0 and not board.is_open(0)
    assert not board.claim(0, duplicate=True)
    board.claim(1)
    board.finish(1)
    assert board.pick_start() is None and not board.complete
    board.checked(0, ok=True)
    assert board.complete


def test_a_piece_that_fails_its_check_opens_again():
    board = PieceBoard(3)
    board.claim(1)
    board.hand_over(1)
    board.checked(1, ok=False)
    assert board.is_open(1) and board.remaining == 3
    assert board.pick_start() == (0, False)


def test_in_the_endgame_a_duplicating_stream_still_wants_pieces_in_flight():
    """A source that cannot seek streams from piece 0; in the endgame it must read on to the pieces still in flight
    elsewhere, not stop after the first done piece and start again (a request storm)."""
    board = PieceBoard(3)
    board.finish(0)
    board.claim(1)
    board.claim(2)
    assert not board.any_open_from(1)
    assert board.any_open_from(1, duplicate=True)
    board.hand_over(2)
    board.finish(1)
    assert not board.any_open_from(1, duplicate=True)
