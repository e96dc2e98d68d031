"""The loader process's side of loading (`worker.Loads`), run here with a destination that
records what it prepares and loads: batches sent ahead, and the next one loaded before the
router asks for it."""

from __future__ import annotations

import threading
from typing import Any

from headwater.destinations.base import DELIVERED, Outcome
from headwater.warehouse.worker import NOT_HERE, Batch, Loads

WAIT_SECONDS = 10.0  # a bound on waiting for another thread, never a pause


class Recorder:
    """A destination whose loads are the first line of each batch, in the order they ran."""

    def __init__(self) -> None:
        self.loaded: list[str] = []
        self.followed: dict[str, bool] = {}  # each load's `more_follow`
        self.prepared: list[str] = []
        self.lock = threading.Lock()
        self.done: dict[str, threading.Event] = {}

    def prepare(self, batch: Batch) -> Any:
        with self.lock:
            self.prepared.append(batch.lines[0].decode())
        return len(batch)

    def load_here(self, batch: Batch, prepared: Any = None, *, more_follow: bool = False) -> list[Outcome]:
        assert prepared == len(batch)
        first = batch.lines[0].decode()
        with self.lock:
            self.loaded.append(first)
            self.followed[first] = more_follow
        self.event(first).set()
        return [DELIVERED] * len(batch)

    def event(self, first: str) -> threading.Event:
        with self.lock:
            return self.done.setdefault(first, threading.Event())

    def wait_loaded(self, first: str) -> bool:
        return self.event(first).wait(WAIT_SECONDS)


def batch(*lines: str) -> Batch:
    return Batch(["source"] * len(lines), [line.encode() for line in lines])


def test_the_batch_after_the_last_asked_for_loads_before_it_is_asked_for() -> None:
    recorder = Recorder()
    loads = Loads(recorder)
    assert loads.load(batch("a")) == [DELIVERED]
    loads.arrived(1, batch("b", "b2"))
    loads.arrived(2, batch("c"))

    assert recorder.wait_loaded("b")  # nobody asked for it yet
    assert recorder.loaded == ["a", "b"]  # the one after it waits for 1 to be asked for
    assert loads.load(1) == [DELIVERED, DELIVERED]  # answered from the load already done
    assert recorder.wait_loaded("c")
    assert loads.load(2) == [DELIVERED]
    assert recorder.loaded == ["a", "b", "c"]  # each loaded once
    assert sorted(recorder.prepared) == ["a", "b", "c"]


def test_a_batch_sent_ahead_out_of_turn_waits_until_the_one_before_it_is_asked_for() -> None:
    recorder = Recorder()
    loads = Loads(recorder)
    loads.arrived(2, batch("b"))  # the next is 1
    assert loads.load(batch("a")) == [DELIVERED]
    assert recorder.loaded == ["a"]
    assert loads.load(1) == NOT_HERE  # never came: the router sends that batch itself
    assert recorder.wait_loaded("b")  # and 2 comes after it
    assert loads.load(2) == [DELIVERED]
    assert recorder.loaded == ["a", "b"]


def test_a_batch_loaded_ahead_and_passed_over_leaves_the_next_one_asked_for_to_load() -> None:
    """The router read past a batch it had sent ahead (a flush or a redrive moved its
    position): that batch's early load did no harm, and later numbers load as asked."""
    recorder = Recorder()
    loads = Loads(recorder)
    assert loads.load(batch("first")) == [DELIVERED]
    loads.arrived(1, batch("a"))
    assert recorder.wait_loaded("a")
    loads.arrived(2, batch("b"))
    loads.arrived(3, batch("c"))
    assert loads.load(3) == [DELIVERED]
    assert loads.load(batch("d")) == [DELIVERED]
    assert recorder.loaded == ["first", "a", "c", "d"]


def test_nothing_loads_early_before_the_first_load_is_asked_for() -> None:
    """At the start the router's own first batch loads first, then the one sent ahead."""
    recorder = Recorder()
    loads = Loads(recorder)
    loads.arrived(1, batch("b"))
    assert loads.load(batch("a")) == [DELIVERED]
    assert recorder.wait_loaded("b")
    assert recorder.loaded == ["a", "b"]
    assert loads.load(1) == [DELIVERED]


class GatedRecorder(Recorder):
    """A recorder whose prepare of the batch `gated` holds until `gate` is set, and which
    signals each prepare as it starts."""

    def __init__(self, gated: str) -> None:
        super().__init__()
        self.gated = gated
        self.gate = threading.Event()
        self.started: dict[str, threading.Event] = {}

    def began(self, first: str) -> threading.Event:
        with self.lock:
            return self.started.setdefault(first, threading.Event())

    def prepare(self, batch: Batch) -> Any:
        first = batch.lines[0].decode()
        self.began(first).set()
        if first == self.gated:
            assert self.gate.wait(WAIT_SECONDS)
        return super().prepare(batch)


def test_batches_sent_ahead_wait_while_a_load_waits_for_its_own_batch_to_be_prepared() -> None:
    """At the start, the first load's batch is prepared alone: the ones sent ahead meanwhile
    would share its CPU and delay the first load."""
    recorder = GatedRecorder("a")
    loads = Loads(recorder)
    answers: list[Any] = []
    first = threading.Thread(target=lambda: answers.append(loads.load(batch("a"))))
    first.start()
    assert recorder.began("a").wait(WAIT_SECONDS)
    loads.arrived(1, batch("b"))
    assert not recorder.began("b").wait(0.5)  # a bounded look for what must not happen
    recorder.gate.set()
    first.join(WAIT_SECONDS)
    assert answers == [[DELIVERED]]
    assert recorder.began("b").wait(WAIT_SECONDS)
    assert loads.load(1) == [DELIVERED]
    assert recorder.prepared == ["a", "b"]
    assert recorder.loaded == ["a", "b"]


def test_a_load_is_told_whether_another_batch_waits_behind_it() -> None:
    """What lets a backlog's loads leave `users` to the last of them."""
    recorder = GatedRecorder("b")
    loads = Loads(recorder)
    assert loads.load(batch("a")) == [DELIVERED]
    loads.arrived(1, batch("b"))
    assert recorder.began("b").wait(WAIT_SECONDS)  # its load waits for this prepare
    loads.arrived(2, batch("c"))
    recorder.gate.set()
    assert loads.load(1) == [DELIVERED]
    assert loads.load(2) == [DELIVERED]
    assert recorder.followed == {"a": False, "b": True, "c": False}
