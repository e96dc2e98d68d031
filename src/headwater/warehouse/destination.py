"""Warehouses as destinations: the router hands over micro-batches, the loader loads them.

Settings (every warehouse):
  batch_size   load when this many events wait (default 10000)
  load_every   or when the oldest waiting event is this old (default 30s)
Per engine:
  duckdb       path: the database file (default `warehouse.duckdb` in the data directory)
  postgres     url: postgresql://user[:password]@host[:port]/database
  mysql        url: mysql://user[:password]@host[:port]/database (MySQL or MariaDB)

A load is all or nothing: it either lands whole (every event `Delivered`) or not at all
(every event `Retry`, and the router tries again with backoff).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from headwater.destinations.base import DELIVERED, Outcome, Retry, SettingsError
from headwater.units import parse_duration
from headwater.warehouse.duckdb import DuckDBEngine
from headwater.warehouse.engine import Engine
from headwater.warehouse.loader import Loader
from headwater.warehouse.mysql import MySQLEngine
from headwater.warehouse.postgres import PostgresEngine

DEFAULT_BATCH_SIZE = 10_000
DEFAULT_LOAD_EVERY = "30s"
MAX_BATCH_SIZE = 100_000
COMMON_SETTINGS = frozenset({"batch_size", "load_every"})


def _url(kind: str, name: str, settings: Mapping[str, Any], schemes: tuple[str, ...]) -> str:
    url = settings.get("url")
    if not isinstance(url, str) or not url.startswith(tuple(f"{scheme}://" for scheme in schemes)):
        raise SettingsError(f"{kind} {name!r}: `url` must look like {schemes[0]}://user@host:port/database")
    return url


class WarehouseDestination:
    """A warehouse of some engine; subclasses say which and read its own settings."""

    kind: ClassVar[str]
    engine_settings: ClassVar[frozenset[str]]
    max_lanes: int | None = 1

    def __init__(self, name: str, settings: Mapping[str, Any], data_dir: Path | None = None) -> None:
        known = COMMON_SETTINGS | self.engine_settings
        unknown = sorted(set(settings) - known)
        if unknown:
            raise SettingsError(
                f"{self.kind} {name!r}: unknown setting {unknown[0]!r}; known: {sorted(known)}"
            )
        batch_size = settings.get("batch_size", DEFAULT_BATCH_SIZE)
        if (
            not isinstance(batch_size, int)
            or isinstance(batch_size, bool)
            or not 1 <= batch_size <= MAX_BATCH_SIZE
        ):
            raise SettingsError(
                f"{self.kind} {name!r}: `batch_size` must be a whole number from 1 to {MAX_BATCH_SIZE}"
            )
        try:
            load_every = parse_duration(settings.get("load_every", DEFAULT_LOAD_EVERY))
        except ValueError as error:
            raise SettingsError(f"{self.kind} {name!r}: `load_every`: {error}") from None
        self.name = name
        self.max_batch = batch_size
        self.linger_seconds = load_every
        self.engine = self.make_engine(name, settings, data_dir)
        self.loader = Loader(self.engine)

    def make_engine(self, name: str, settings: Mapping[str, Any], data_dir: Path | None) -> Engine:
        raise NotImplementedError

    async def deliver(self, events: Sequence[Mapping[str, Any]], sources: Sequence[str]) -> list[Outcome]:
        try:
            await asyncio.to_thread(self.loader.load, list(zip(sources, events, strict=True)))
        except Exception as error:
            return [Retry(f"{self.engine.describe()}: {error.__class__.__name__}: {error}")] * len(events)
        return [DELIVERED] * len(events)

    async def close(self) -> None:
        return None


class DuckDBDestination(WarehouseDestination):
    kind: ClassVar[str] = "duckdb"
    engine_settings: ClassVar[frozenset[str]] = frozenset({"path"})

    def make_engine(self, name: str, settings: Mapping[str, Any], data_dir: Path | None) -> Engine:
        path = Path(str(settings.get("path", "warehouse.duckdb")))
        return DuckDBEngine(path if path.is_absolute() or data_dir is None else data_dir / path)


class PostgresDestination(WarehouseDestination):
    kind: ClassVar[str] = "postgres"
    engine_settings: ClassVar[frozenset[str]] = frozenset({"url"})

    def make_engine(self, name: str, settings: Mapping[str, Any], data_dir: Path | None) -> Engine:
        return PostgresEngine(_url(self.kind, name, settings, ("postgresql", "postgres")))


class MySQLDestination(WarehouseDestination):
    kind: ClassVar[str] = "mysql"
    engine_settings: ClassVar[frozenset[str]] = frozenset({"url"})

    def make_engine(self, name: str, settings: Mapping[str, Any], data_dir: Path | None) -> Engine:
        return MySQLEngine(_url(self.kind, name, settings, ("mysql", "mariadb")))


WAREHOUSES: tuple[type[WarehouseDestination], ...] = (
    DuckDBDestination,
    PostgresDestination,
    MySQLDestination,
)
