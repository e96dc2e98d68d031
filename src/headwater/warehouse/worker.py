"""Loads run in a process of their own, one per warehouse destination.

Turning 10,000 messages into rows and loading them takes a few hundred milliseconds: in
the server's process it would hold the GIL the collector needs (its p99 went from 12 ms to
210 ms during loads). Here the collector only serialises the batch (orjson, ~1 µs a
message, as a `Batch` of JSON lines) and awaits the outcomes. The loader process rebuilds
the destination from its configuration, keeps its own catalog between loads, runs at a
lower CPU priority, ignores Ctrl-C (the server stops it when it stops) and exits if the
server dies. A loader process that dies answers
`Retry` for its batch and is replaced on the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import itertools
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import orjson

from headwater.destinations.base import Outcome, Retry
from headwater.gc_pause import collection_paused
from headwater.warehouse.schema import json_line

PARENT_CHECK_SECONDS = 1.0
PIPE_BYTES = 1 << 20
# Loads are throughput work and answers to SDKs are latency work: on a busy machine the
# collector gets the CPU first.
LOADER_NICENESS = 10
SWITCH_INTERVAL_SECONDS = 0.0005
# Each batch allocates a few hundred megabytes and frees them. With the allocators'
# defaults much of that went back to the system at once and was taken again for the next
# batch: in a drain the kernel's share of the loader process's CPU was a sixth to a third.
# The loader process starts with Arrow allocating from glibc, and glibc keeping what is
# freed for the next batch, up to 512 MB (GLIBC_TUNABLES; other C libraries ignore it):
# that halved its system time. Transparent huge pages (`glibc.malloc.hugetlb`) delayed a
# drain's first load by ~0.3 s, zeroing 2 MB pages.
LOADER_MEMORY = {
    "ARROW_DEFAULT_MEMORY_POOL": "system",
    "GLIBC_TUNABLES": ":".join(
        (
            f"glibc.malloc.mmap_threshold={32 << 20}",  # glibc's ceiling on 64-bit
            f"glibc.malloc.trim_threshold={512 << 20}",
            f"glibc.malloc.top_pad={64 << 20}",
        )
    ),
}


class Batch:
    """Events on their way to a loader: each one's source slug and its JSON, one per line.

    Crossing to the loader process as one block of bytes costs a copy; as 10,000 small
    objects it cost each side tens of milliseconds of pickling under the GIL."""

    def __init__(self, sources: Sequence[str], lines: Sequence[bytes]) -> None:
        self.sources = list(sources)
        self._lines: list[bytes] | None = list(lines)
        self._blob: bytes | None = None  # the lines joined, as a batch crosses processes

    @classmethod
    def of(cls, sources: Sequence[str], events: Sequence[Mapping[str, Any] | bytes]) -> Batch:
        """Events as the router hands them over: messages, or their JSON already."""
        return cls(sources, [event if isinstance(event, bytes) else json_line(event) for event in events])

    @property
    def lines(self) -> list[bytes]:
        if self._lines is None:
            self._lines = (self._blob or b"").split(b"\n") if self.sources else []
        return self._lines

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, part: slice) -> Batch:
        return Batch(self.sources[part], self.lines[part])

    @property
    def blob(self) -> bytes:
        """The lines joined by newlines."""
        if self._blob is None:
            self._blob = b"\n".join(self.lines)
        return self._blob

    def __getstate__(self) -> tuple[list[tuple[str, int]], bytes]:
        return self.runs(), self.blob

    def __setstate__(self, state: tuple[list[tuple[str, int]], bytes]) -> None:
        self._set(*state)

    def runs(self) -> list[tuple[str, int]]:
        """The sources as runs of the same one (a batch's are a few long runs)."""
        return [(source, sum(1 for _ in run)) for source, run in itertools.groupby(self.sources)]

    @classmethod
    def joined(cls, runs: list[tuple[str, int]], blob: bytes) -> Batch:
        """A batch from its sources' runs and its lines joined by newlines."""
        batch = cls.__new__(cls)
        batch._set(runs, blob)
        return batch

    def _set(self, runs: list[tuple[str, int]], blob: bytes) -> None:
        self.sources = [source for source, count in runs for _ in range(count)]
        self._blob = blob
        self._lines = None

    def messages(self) -> list[tuple[str, Any]]:
        """`(source slug, message)` pairs, parsed."""
        return [(source, orjson.loads(line)) for source, line in zip(self.sources, self.lines, strict=True)]


class LoadsHere(Protocol):
    """A warehouse destination that can load a batch in the calling process."""

    def prepare(self, batch: Batch) -> Any:
        """What loading `batch` needs that does not touch the warehouse (computed ahead)."""
        ...

    def load_here(self, batch: Batch, prepared: Any = None, *, more_follow: bool = False) -> list[Outcome]:
        """Load `batch` (`more_follow`: another batch waits to be loaded after it)."""
        ...


# The loader process's answer to a load of a batch it was told about ahead but never got.
NOT_HERE = "not prefetched"


class LoaderProcess:
    """The process that loads for one destination, started with the router (`start`), or
    by the first load if nothing started it.

    While one batch loads, the router reads the next two; `prefetch` sends each to the
    loader process on a pipe of its own, where threads prepare them (`LoadsHere.prepare`,
    two at once) while the current load waits on the warehouse, and the next of them is
    loaded as soon as the current load is done (`Loads`). When such a batch then comes to be
    loaded, only its number crosses over."""

    def __init__(
        self, kind: type[LoadsHere], name: str, settings: Mapping[str, Any], data_dir: Path | None
    ) -> None:
        self.arguments = (kind, name, dict(settings), data_dir)
        self.executor: ProcessPoolExecutor | None = None
        self.ahead_pipe: Connection | None = None
        self.ahead: dict[int, Batch] = {}  # sent ahead, by number
        self.sent_ahead = 0

    def start(self) -> ProcessPoolExecutor:
        """Start the process (in the background: this does not wait for it)."""
        if self.executor is None:
            context = multiprocessing.get_context("spawn")
            reader, self.ahead_pipe = context.Pipe(duplex=False)
            _widen(self.ahead_pipe)
            self.executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=context,
                initializer=_start_here,
                initargs=(*self.arguments, os.getpid(), reader),
            )
            with _environment(LOADER_MEMORY):  # the pool spawns its process for a first task
                self.executor.submit(_started)
        return self.executor

    async def load(self, batch: Batch) -> list[Outcome]:
        executor = self.start()
        number = next(
            (
                n
                for n, sent in self.ahead.items()
                if sent.sources == batch.sources and sent.lines == batch.lines
            ),
            None,
        )
        self.ahead = {n: sent for n, sent in self.ahead.items() if number is None or n > number}
        try:
            if number is not None:
                outcomes = await asyncio.wrap_future(executor.submit(_load_here, number))
                if isinstance(outcomes, list):
                    return outcomes
            answer = await asyncio.wrap_future(executor.submit(_load_here, batch))
            assert isinstance(answer, list), answer
            return answer
        except BrokenProcessPool as error:
            self.close()
            return [Retry(f"the loader process stopped: {error}")] * len(batch)

    async def prefetch(self, batch: Batch) -> None:
        """Send a batch likely to be loaded soon, to be prepared meanwhile."""
        if self.executor is None or self.ahead_pipe is None or not len(batch):
            return
        self.sent_ahead += 1
        self.ahead[self.sent_ahead] = batch
        self.ahead = {n: sent for n, sent in self.ahead.items() if n > self.sent_ahead - KEPT_AHEAD}
        try:
            await asyncio.to_thread(_send_ahead, self.ahead_pipe, self.sent_ahead, batch)
        except (OSError, ValueError):  # the process is gone: the next load restarts it
            self.ahead.clear()

    def close(self) -> None:
        if self.ahead_pipe is not None:
            self.ahead_pipe.close()
            self.ahead_pipe = None
        self.ahead = {}
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None


@contextlib.contextmanager
def _environment(variables: Mapping[str, str]) -> Iterator[None]:
    """For the processes started meanwhile: these environment variables, where this process
    does not set them itself."""
    added = [name for name in variables if name not in os.environ]
    os.environ.update({name: variables[name] for name in added})
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


class LoadsInItsProcess:
    """A destination whose loads run in its `LoaderProcess`: deliveries, the start, and
    batches sent ahead all go there."""

    process: LoaderProcess
    takes_json: bool = True

    async def deliver(
        self, events: Sequence[Mapping[str, Any] | bytes], sources: Sequence[str]
    ) -> list[Outcome]:
        return await self.process.load(Batch.of(sources, events))

    async def open(self) -> None:
        self.process.start()

    async def prefetch(self, events: Sequence[Mapping[str, Any] | bytes], sources: Sequence[str]) -> None:
        await self.process.prefetch(Batch.of(sources, events))


# Two batches are prepared at once, sent ahead or a load's own: much of a prepare runs in
# Arrow's C++ without the GIL, and two of them keep both cores busier than one does (a
# backlog drained ~8% faster). More would only share the same cores.
PREPARED_AT_ONCE = 2
# A load told to use a prefetched batch waits this long for it to arrive on its pipe.
AHEAD_WAIT_SECONDS = 5.0
# Batches sent ahead that either side keeps (the router reads two ahead).
KEPT_AHEAD = 2
_CONTEXT = {"library": {"name": "analytics.js", "version": "1.0"}, "page": {"url": "https://example.com/"}}
WARM_UP = Batch(
    ["warm_up"] * 3,
    [
        json_line(message)
        for message in (
            {
                "type": "track",
                "event": "Warmed Up",
                "messageId": "w-1",
                "userId": "u",
                "timestamp": "2024-01-01T00:00:00.000Z",
                "receivedAt": "2024-01-01T00:00:00.000Z",
                "properties": {"count": 1, "share": 0.5, "items": [{"sku": "a"}], "ok": True},
                "context": _CONTEXT,
            },
            {"type": "identify", "messageId": "w-2", "userId": "u", "traits": {"a": 1}, "context": _CONTEXT},
            {"type": "page", "messageId": "w-3", "anonymousId": "a", "name": "Home", "context": _CONTEXT},
        )
    ],
)


class Loads:
    """The loader process's side: batches sent ahead (`arrived`), prepared two at once, and
    loads (`load`), one after another on a thread of their own.

    The batch sent ahead that comes next — the one after the last the router asked for —
    is loaded as soon as the load before it is done, without waiting to be asked: the round
    trip to the router and back (~40 ms) would leave the warehouse idle between the loads
    of a backlog. Loads are idempotent (rows keyed by message id, `users` ordered by
    timestamp), so a batch loaded and then not asked for (the router read past it, or
    stopped) costs only the work, and one asked for again answers what its load did.

    A batch allocates millions of objects and frees them by reference counting: prepares
    and loads run with cyclic collection paused, whose passes found nothing and cost a
    quarter of a load."""

    def __init__(self, destination: LoadsHere) -> None:
        self.destination = destination
        self.ahead: dict[int, tuple[Batch, Future[Any]]] = {}  # sent ahead, by number
        self.begun: dict[int, Future[list[Outcome]]] = {}  # loads begun before being asked for
        self.asked = 0  # the number of the last batch sent ahead that was asked for
        # Nothing loads early before the router's first load: at the start, its own first
        # batch goes first.
        self.requested = False
        self.urgent = 0  # prepares a load waits for: the batches sent ahead wait for them
        self.queued = 0  # loads handed to the load thread that have not begun
        self.changed = threading.Condition()
        self.preparing = threading.BoundedSemaphore(PREPARED_AT_ONCE)
        self.preparers = ThreadPoolExecutor(PREPARED_AT_ONCE, thread_name_prefix="prepare")
        self.loads = ThreadPoolExecutor(1, thread_name_prefix="load")

    def arrived(self, number: int, batch: Batch) -> None:
        """A batch sent ahead: have it prepared, and loaded if it comes next."""
        prepared: Future[Any] = Future()
        with self.changed:
            for older in [n for n in self.ahead if n <= number - KEPT_AHEAD]:
                del self.ahead[older]
            self.ahead[number] = (batch, prepared)
            if self.requested:
                self._begin_next()
            self.changed.notify_all()
        self.preparers.submit(self._prepare_into, batch, prepared)

    def load(self, request: Batch | int) -> list[Outcome] | str:
        """Load a batch, or answer for the batch sent ahead with this number (`NOT_HERE` if
        it never came)."""
        if not isinstance(request, int):
            prepared: Future[Any] = Future()
            with self.changed:
                self.requested = True
                self.queued += 1
                loading = self.loads.submit(self._load, request, prepared)  # before any begun after it
                self._begin_next()
            self._prepare_into(request, prepared, urgent=True)  # here, beside what the load thread does
            return loading.result()
        with self.changed:
            self.requested = True
            self.asked = max(self.asked, request)
            self.changed.wait_for(
                lambda: (
                    request in self.ahead
                    or request in self.begun
                    or max([*self.ahead, *self.begun], default=0) > request
                ),
                AHEAD_WAIT_SECONDS,
            )
            if request in self.ahead:
                self._begin(request)
            begun = self.begun.pop(request, None)
            for passed in [n for n in self.begun if n < request]:
                del self.begun[passed]
            self._begin_next()
        return NOT_HERE if begun is None else begun.result()

    def _begin_next(self) -> None:
        following = self.asked + 1
        if following in self.ahead:
            self._begin(following)

    def _begin(self, number: int) -> None:
        batch, prepared = self.ahead.pop(number)
        self.queued += 1
        self.begun[number] = self.loads.submit(self._load, batch, prepared)

    def _prepare_into(self, batch: Batch, future: Future[Any], *, urgent: bool = False) -> None:
        with self.changed:
            if urgent:
                self.urgent += 1
            else:
                self.changed.wait_for(lambda: not self.urgent)
        try:
            with self.preparing, collection_paused():
                future.set_result(self.destination.prepare(batch))
        except Exception as error:  # the load prepares it again, and reports what fails
            future.set_exception(error)
        finally:
            if urgent:
                with self.changed:
                    self.urgent -= 1
                    self.changed.notify_all()

    def _load(self, batch: Batch, prepared: Future[Any]) -> list[Outcome]:
        with self.changed:
            self.queued -= 1
        with collection_paused():
            rows = None
            with contextlib.suppress(Exception):  # the load prepares again, and reports what fails
                rows = prepared.result()
            with self.changed:  # a batch sent ahead arrives while this one is prepared
                more_follow = bool(self.queued or self.ahead)
            return self.destination.load_here(batch, rows, more_follow=more_follow)


_here: Loads | None = None


def _start_here(
    kind: type[LoadsHere],
    name: str,
    settings: Mapping[str, Any],
    data_dir: Path | None,
    parent: int,
    ahead_pipe: Connection,
) -> None:
    global _here
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(LOADER_NICENESS)
    destination = kind(name, settings, data_dir)  # type: ignore[call-arg]
    # A first batch costs twice what the next ones do (imports, first uses): pay that on
    # a few messages now, while the router reads the first batch.
    with contextlib.suppress(Exception):
        destination.prepare(WARM_UP)
    _here = Loads(destination)
    gc.freeze()  # what the process holds from here on is never garbage to look at
    # The load waits on the warehouse statement by statement while the next batch is
    # prepared in Python: hand the GIL back to it within a fraction of a millisecond.
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="exit-with-server").start()
    threading.Thread(target=_prepare_ahead, args=(ahead_pipe,), daemon=True, name="prepare-ahead").start()


def _exit_with(parent: int) -> None:
    """Never outlive the server (after a kill -9 nothing else would stop this process)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _send_ahead(pipe: Connection, number: int, batch: Batch) -> None:
    """A batch's number and sources, then its lines as they are: pickling them would copy
    them once more on either side."""
    pipe.send((number, batch.runs()))
    pipe.send_bytes(batch.blob)


def _prepare_ahead(pipe: Connection) -> None:
    """Receive the batches sent ahead."""
    assert _here is not None
    while True:
        try:
            number, runs = pipe.recv()
            blob = pipe.recv_bytes()
        except (EOFError, OSError):
            return
        _here.arrived(number, Batch.joined(runs, blob))


def _widen(pipe: Connection) -> None:
    """Give the pipe batches cross on the most room an unprivileged process may (Linux: 1 MB
    instead of 64 kB): a batch then crosses in a few writes, not a hundred and fifty."""
    with contextlib.suppress(OSError, AttributeError):  # elsewhere, or a lower limit: as it is
        size = int(Path("/proc/sys/fs/pipe-max-size").read_text())
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, min(size, PIPE_BYTES))


def _started() -> None:
    """Nothing: the task that has the pool start its process."""


def _load_here(request: Batch | int) -> list[Outcome] | str:
    """`Loads.load` in the loader process."""
    assert _here is not None, "the loader process was not started"
    return _here.load(request)
