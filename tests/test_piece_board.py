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
