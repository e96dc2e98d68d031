"""Warehouses as destinations: the router hands over micro-batches, the loader loads them.

Settings (every warehouse):
  batch_size   load when this many events wait (default 10000)
  load_every   or when the oldest waiting event is this old (default 30s)
Per engine:
  duckdb       path: the database file (default `warehouse.duckdb` in the data directory)
  postgres     url: postgresql://user[:password]@host[:port]/database
  mysql        url: mysql://user[:password]@host[:port]/database (MySQL or MariaDB)

A load is all or nothing. When one fails and the warehouse still answers, the failure is
taken for the data's: the batch is split in halves, each loaded alone, and so on down, so
the good events land and an event that fails by itself is `Failed` (a dead letter, to
replay once fixed) instead of holding back every batch it is in. When the warehouse does
not answer, or no event of the batch loads even alone (a read-only warehouse, say), every
event not yet loaded is `Retry` and the router tries again with backoff.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

from headwater.destinations.base import DELIVERED, Delivered, Failed, Outcome, Retry, SettingsError
from headwater.units import parse_duration
from headwater.warehouse.engine import Engine
from headwater.warehouse.loader import Loader
from headwater.warehouse.worker import Batch, LoaderProcess, LoadsInItsProcess

DEFAULT_BATCH_SIZE = 10_000
DEFAULT_LOAD_EVERY = "30s"
MAX_BATCH_SIZE = 100_000
# A load that fails is halved to find the events that fail alone; past this many, the
# failure is taken for the warehouse's and the rest of the batch is retried instead.
MAX_FAILED_ALONE = 8
COMMON_SETTINGS = frozenset({"batch_size", "load_every"})
# How long a DuckDB loader keeps its file open after a load, for the next one of a backlog
# (readers wait meanwhile), and how long a PostgreSQL loader keeps its connection.
KEEP_OPEN_SECONDS = 0.3
KEEP_CONNECTED_SECONDS = 60.0


def _url(kind: str, name: str, settings: Mapping[str, Any], schemes: tuple[str, ...]) -> str:
    url = settings.get("url")
    if not isinstance(url, str) or not url.startswith(tuple(f"{scheme}://" for scheme in schemes)):
        raise SettingsError(f"{kind} {name!r}: `url` must look like {schemes[0]}://user@host:port/database")
    return url


def micro_batch_settings(
    kind: str, name: str, settings: Mapping[str, Any], own_settings: frozenset[str]
) -> tuple[int, float]:
    """`(batch_size, load_every in seconds)` of a warehouse's settings, after checking that
    every setting is one of the common ones or of `own_settings`."""
    known = COMMON_SETTINGS | own_settings
    unknown = sorted(set(settings) - known)
    if unknown:
        raise SettingsError(f"{kind} {name!r}: unknown setting {unknown[0]!r}; known: {sorted(known)}")
    batch_size = settings.get("batch_size", DEFAULT_BATCH_SIZE)
    if (
        not isinstance(batch_size, int)
        or isinstance(batch_size, bool)
        or not 1 <= batch_size <= MAX_BATCH_SIZE
    ):
        raise SettingsError(
            f"{kind} {name!r}: `batch_size` must be a whole number from 1 to {MAX_BATCH_SIZE}"
        )
    try:
        load_every = parse_duration(settings.get("load_every", DEFAULT_LOAD_EVERY))
    except ValueError as error:
        raise SettingsError(f"{kind} {name!r}: `load_every`: {error}") from None
    return batch_size, load_every


class WarehouseDestination(LoadsInItsProcess):
    """A warehouse of some engine; subclasses say which and read its own settings."""

    kind: ClassVar[str]
    engine_settings: ClassVar[frozenset[str]]
    max_lanes: int | None = 1

    def __init__(self, name: str, settings: Mapping[str, Any], data_dir: Path | None = None) -> None:
        self.name = name
        self.max_batch, self.linger_seconds = micro_batch_settings(
            self.kind, name, settings, self.engine_settings
        )
        self.engine = self.make_engine(name, settings, data_dir)
        self.loader = Loader(self.engine, name)
        self.process = LoaderProcess(type(self), name, settings, data_dir)

    def make_engine(self, name: str, settings: Mapping[str, Any], data_dir: Path | None) -> Engine:
        raise NotImplementedError

    def describe(self) -> str:
        """Where the data goes, without secrets."""
        return self.engine.describe()

    def prepare(self, batch: Batch) -> Any:
        """The batch's rows (the loader process computes them while the previous batch loads)."""
        return self.loader.prepare(batch.sources, batch.lines, batch.blob)

    def load_here(self, batch: Batch, prepared: Any = None, *, more_follow: bool = False) -> list[Outcome]:
        """Load in this process (the loader process calls this): an outcome per event."""
        outcomes = self._load(batch, [MAX_FAILED_ALONE], prepared, more_follow)
        if len(outcomes) > 1 and not any(isinstance(outcome, Delivered) for outcome in outcomes):
            # Every event failed even alone: more likely a warehouse that answers but cannot
            # write (read-only, permissions, full disk) than a whole batch of bad data.
            return [Retry(outcome.reason) if isinstance(outcome, Failed) else outcome for outcome in outcomes]
        return outcomes

    def _load(
        self, batch: Batch, budget: list[int], prepared: Any = None, more_follow: bool = False
    ) -> list[Outcome]:
        """Load `batch`; on failure, halve it until the events that fail alone are found —
        at most `budget[0]` of them, after which the rest is retried rather than searched."""
        try:
            self.loader.load_batch(batch.sources, batch.lines, prepared, more_follow=more_follow)
        except Exception as error:
            reason = f"{self.engine.describe()}: {error.__class__.__name__}: {error}"
            if budget[0] <= 0 or not self._answers():
                return [Retry(reason)] * len(batch)
            if len(batch) == 1:
                budget[0] -= 1
                return [Failed(reason)]
            half = len(batch) // 2
            return self._load(batch[:half], budget) + self._load(batch[half:], budget)
        return [DELIVERED] * len(batch)

    def _answers(self) -> bool:
        """Whether the warehouse opens a session as a load does and runs a trivial query."""
        try:
            session = self.engine.session()
            try:
                session.query("SELECT 1")
            finally:
                session.close()
        except Exception:
            return False
        return True

    async def close(self) -> None:
        await asyncio.to_thread(self.process.close)


class DuckDBDestination(WarehouseDestination):
    kind: ClassVar[str] = "duckdb"
    engine_settings: ClassVar[frozenset[str]] = frozenset({"path"})

    def make_engine(self, name: str, settings: Mapping[str, Any], data_dir: Path | None) -> Engine:
        from headwater.warehouse.duckdb import DuckDBEngine  # a loader process imports its engine only

        path = Path(str(settings.get("path", "warehouse.duckdb")))
        return DuckDBEngine(
            path if path.is_absolute() or data_dir is None else data_dir / path, linger=KEEP_OPEN_SECONDS
        )


class PostgresDestination(WarehouseDestination):
    kind: ClassVar[str] = "postgres"
    engine_settings: ClassVar[frozenset[str]] = frozenset({"url"})

    def make_engine(self, name: str, settings: Mapping[str, Any], data_dir: Path | None) -> Engine:
        from headwater.warehouse.postgres import PostgresEngine

        url = _url(self.kind, name, settings, ("postgresql", "postgres"))
        return PostgresEngine(url, linger=KEEP_CONNECTED_SECONDS)


class MySQLDestination(WarehouseDestination):
    kind: ClassVar[str] = "mysql"
    engine_settings: ClassVar[frozenset[str]] = frozenset({"url"})

    def make_engine(self, name: str, settings: Mapping[str, Any], data_dir: Path | None) -> Engine:
        from headwater.warehouse.mysql import MySQLEngine

        return MySQLEngine(_url(self.kind, name, settings, ("mysql", "mariadb")))


WAREHOUSES: tuple[type[WarehouseDestination], ...] = (
    DuckDBDestination,
    PostgresDestination,
    MySQLDestination,
)
