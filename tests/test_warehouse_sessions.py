"""`SessionKeeper`: a loader's connection kept between loads, and given up when it should be."""

from __future__ import annotations

import threading
import time

from headwater.warehouse.engine import KeepableSession, SessionKeeper


class Session(KeepableSession):
    def __init__(self, opened_at: float | None = None) -> None:
        super().__init__(keeper=None)
        self.opened_at = time.monotonic() if opened_at is None else opened_at
        self.disconnected = threading.Event()

    def disconnect(self) -> None:
        self.disconnected.set()


def test_a_closed_session_is_taken_over_by_the_next() -> None:
    keeper = SessionKeeper(linger=60, hold_at_most=60)
    session = Session()
    keeper.keep(session)
    assert keeper.take() is session
    assert keeper.take() is None  # taken: nobody else gets it
    assert not session.disconnected.is_set()


def test_a_kept_session_is_disconnected_once_it_lingered() -> None:
    keeper = SessionKeeper(linger=0.01, hold_at_most=60)
    session = Session()
    keeper.keep(session)
    assert session.disconnected.wait(10)
    assert keeper.take() is None


def test_a_session_held_too_long_is_disconnected_and_the_next_waits_to_make_way() -> None:
    keeper = SessionKeeper(linger=60, hold_at_most=1, make_way=0.01)
    old = Session(opened_at=time.monotonic() - 2)
    keeper.keep(old)
    assert old.disconnected.is_set()
    assert keeper.reopen_at > time.monotonic() - 1
    assert keeper.take() is None
    assert time.monotonic() >= keeper.reopen_at


def test_closing_the_keeper_disconnects_what_it_keeps() -> None:
    keeper = SessionKeeper(linger=60, hold_at_most=60)
    session = Session()
    keeper.keep(session)
    keeper.close()
    assert session.disconnected.is_set()
    assert keeper.take() is None


def test_a_kept_session_that_lost_its_connection_is_not_handed_out() -> None:
    class Lost(Session):
        def connected(self) -> bool:
            return False

    keeper = SessionKeeper(linger=60, hold_at_most=60)
    lost = Lost()
    keeper.keep(lost)
    assert keeper.take() is None
    assert lost.disconnected.is_set()
