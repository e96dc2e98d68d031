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
import gc
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Protocol

import orjson

from headwater.destinations.base import Outcome, Retry

PARENT_CHECK_SECONDS = 1.0
# Loads are throughput work and answers to SDKs are latency work: on a busy machine the
# collector gets the CPU first.
LOADER_NICENESS = 10


class Batch:
    """Events on their way to a loader: each one's source slug and its JSON, one per line.

    Crossing to the loader process as one block of bytes costs a copy; as 10,000 small
    objects it cost each side tens of milliseconds of pickling under the GIL."""

    def __init__(self, sources: Sequence[str], lines: Sequence[bytes]) -> None:
        self.sources = list(sources)
        self._lines: list[bytes] | None = list(lines)
        self._blob: bytes | None = None

    @classmethod
    def of(cls, sources: Sequence[str], events: Sequence[Mapping[str, Any] | bytes]) -> Batch:
        """Events as the router hands them over: messages, or their JSON already."""
        dumps, option = orjson.dumps, orjson.OPT_NON_STR_KEYS
        return cls(
            sources,
            [
                event if isinstance(event, bytes) else dumps(event, default=str, option=option)
                for event in events
            ],
        )

    @property
    def lines(self) -> list[bytes]:
        if self._lines is None:
            self._lines = (self._blob or b"").split(b"\n") if self.sources else []
        return self._lines

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, part: slice) -> Batch:
        return Batch(self.sources[part], self.lines[part])

    def __getstate__(self) -> tuple[list[str], bytes]:
        return self.sources, b"\n".join(self.lines)

    def __setstate__(self, state: tuple[list[str], bytes]) -> None:
        self.sources, self._blob = state
        self._lines = None

    def messages(self) -> list[tuple[str, Any]]:
        """`(source slug, message)` pairs, parsed."""
        return [(source, orjson.loads(line)) for source, line in zip(self.sources, self.lines, strict=True)]


class LoadsHere(Protocol):
    """A warehouse destination that can load a batch in the calling process."""

    def load_here(self, batch: Batch) -> list[Outcome]: ...


class LoaderProcess:
    """The process that loads for one destination, started on first use."""

    def __init__(
        self, kind: type[LoadsHere], name: str, settings: Mapping[str, Any], data_dir: Path | None
    ) -> None:
        self.arguments = (kind, name, dict(settings), data_dir)
        self.executor: ProcessPoolExecutor | None = None

    async def load(self, batch: Batch) -> list[Outcome]:
        if self.executor is None:
            self.executor = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_start_here,
                initargs=(*self.arguments, os.getpid()),
            )
        try:
            return await asyncio.wrap_future(self.executor.submit(_load_here, batch))
        except BrokenProcessPool as error:
            self.close()
            return [Retry(f"the loader process stopped: {error}")] * len(batch)

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.executor = None


_destination: LoadsHere | None = None


def _start_here(
    kind: type[LoadsHere], name: str, settings: Mapping[str, Any], data_dir: Path | None, parent: int
) -> None:
    global _destination
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.nice(LOADER_NICENESS)
    _destination = kind(name, settings, data_dir)  # type: ignore[call-arg]
    gc.freeze()  # what the process holds from here on is never garbage to look at
    threading.Thread(target=_exit_with, args=(parent,), daemon=True, name="exit-with-server").start()


def _exit_with(parent: int) -> None:
    """Never outlive the server (after a kill -9 nothing else would stop this process)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _load_here(batch: Batch) -> list[Outcome]:
    assert _destination is not None, "the loader process was not started"
    # A batch allocates millions of objects and frees them by reference counting; cyclic
    # collection passes in between found nothing and cost a quarter of the load.
    gc.disable()
    try:
        return _destination.load_here(batch)
    finally:
        gc.enable()
