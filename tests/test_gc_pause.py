"""Cyclic collection paused while batches are made, across threads."""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator

import pytest

from headwater.gc_pause import collection_paused


@pytest.fixture
def collection_on() -> Iterator[None]:
    was = gc.isenabled()
    gc.enable()
    yield
    if not was:
        gc.disable()


def test_collection_is_off_inside_and_back_on_after(collection_on: None) -> None:
    with collection_paused():
        assert not gc.isenabled()
    assert gc.isenabled()


def test_collection_stays_off_until_the_last_holder_leaves(collection_on: None) -> None:
    first_inside, second_left = threading.Event(), threading.Event()
    seen: dict[str, bool] = {}

    def other_thread() -> None:
        with collection_paused():
            first_inside.set()
            second_left.wait(10)
            seen["after the second left"] = gc.isenabled()

    thread = threading.Thread(target=other_thread)
    thread.start()
    assert first_inside.wait(10)
    with collection_paused():
        pass
    second_left.set()
    thread.join(10)
    assert seen == {"after the second left": False}
    assert gc.isenabled()


def test_collection_turned_off_before_stays_off(collection_on: None) -> None:
    gc.disable()
    with collection_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_an_exception_inside_still_turns_it_back_on(collection_on: None) -> None:
    with pytest.raises(RuntimeError), collection_paused():
        raise RuntimeError("a failed read")
    assert gc.isenabled()
