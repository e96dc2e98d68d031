"""Load a batch of messages into a warehouse in Segment's layout, whatever the engine.

One load: compute the rows (`columnar.parts_for`: `schema.tables_for`, in Arrow) and encode
them for the engine's bulk path (`prepare`, which runs ahead of the load when it can), evolve
the tables — create, add columns, widen types — and commit them with their records in
`_headwater.schema_changes` (MySQL commits DDL by itself anyway); then, in one
transaction, insert the rows whose `id` is new, rebuild `users` / `accounts` for the ids
the batch touched, and record the load in `_headwater.loads`. A crash at any point leaves
either the whole load or none of it (schema changes aside, which are harmless to repeat),
and the redelivery that follows finds every id already there: no duplicates, no gaps.
(PostgreSQL inserts over two connections, `Session.insert_all`, committed one after the
other: a crash between the two commits leaves some tables loaded, and the redelivery adds
only the ids that are missing.)

Names longer than the engine takes (`Dialect.max_name`: 63 bytes in PostgreSQL, 64
characters in MySQL) are fitted by `Dialect.fit`: their first bytes, `_` and a hash of the
whole name. Two long names sharing a prefix stay two tables or columns, and a name fits
the same way in every load. A track's `event` column names its table, fitted alike.

`users` and `accounts` hold each trait's latest non-null value by `timestamp` however late
a message arrives. A stored row whose messages in the batch are all newer than it takes
their latest values (what a rebuild would give, without reading the id's history); a new
id, or one with a message arriving late, is rebuilt from `identifies` / `groups`.

In a backlog (`load_batch(more_follow=True)`: another batch waits already) a load leaves
`users` / `accounts` to a later one: it records the ids it touched in
`_headwater.stale_latest`, in its own transaction, and the loader keeps the batch's
`identifies` / `groups` rows. The next load that settles — the last of the backlog, or the
first after `SETTLE_AT_LEAST_EVERY` seconds, or a loader's first — merges them all with its
own, as if they were one batch. Refreshing `users` took a quarter of each load of a
backlog. Ids recorded by a loader that stopped before settling (a crash) are rebuilt.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from headwater.units import epoch_micros
from headwater.warehouse.columnar import ARROW_TYPES, Part, parts_for
from headwater.warehouse.engine import LOADED_AT, Columns, Dialect, Engine, Insert, Rows, Session
from headwater.warehouse.schema import COMMON_FIELDS, STANDARD_TABLES, ColumnType, json_line, widen

META_SCHEMA = "_headwater"
LOADS = "loads"
SCHEMA_CHANGES = "schema_changes"
STALE = "stale_latest"
META_TABLES: Mapping[str, Columns] = {
    LOADS: {
        "destination": ColumnType.TEXT,
        "loaded_at": ColumnType.TIMESTAMP,
        "events": ColumnType.BIGINT,
        "rows": ColumnType.BIGINT,
        "tables": ColumnType.BIGINT,
        "seconds": ColumnType.DOUBLE,
    },
    SCHEMA_CHANGES: {
        "destination": ColumnType.TEXT,
        "changed_at": ColumnType.TIMESTAMP,
        "schema_name": ColumnType.TEXT,
        "table_name": ColumnType.TEXT,
        "column_name": ColumnType.TEXT,
        "change": ColumnType.TEXT,
        "detail": ColumnType.TEXT,
    },
    STALE: {
        "destination": ColumnType.TEXT,
        "schema_name": ColumnType.TEXT,
        "table_name": ColumnType.TEXT,
        "latest_id": ColumnType.TEXT,
        "marked_at": ColumnType.TIMESTAMP,
    },
}
# Loads that more batches follow leave `users` / `accounts` stale at most this long.
SETTLE_AT_LEAST_EVERY = 30.0
# The latest-state tables, each rebuilt from an event table keyed by one of its columns.
LATEST: Mapping[str, tuple[str, str]] = {
    "users": ("identifies", "user_id"),
    "accounts": ("groups", "group_id"),
}
_LOOKED_UP = dict(LATEST.values())
_NOT_TRAITS = frozenset(column for _, column in COMMON_FIELDS) | {LOADED_AT, "group_id"}
_LATEST_FIXED: Columns = {
    "id": ColumnType.TEXT,
    "received_at": ColumnType.TIMESTAMP,
    "timestamp": ColumnType.TIMESTAMP,
    LOADED_AT: ColumnType.TIMESTAMP,
}


@dataclass(frozen=True)
class SchemaChange:
    schema: str
    table: str
    column: str | None
    change: str  # "created table", "added column", "widened column"
    detail: str


@dataclass
class Prepared:
    """A batch's rows, ahead of its load: its parts, each table's columns as the batch types
    them, and each part's rows encoded for the columns its table was to have then (a load
    that finds the table changed since encodes again)."""

    parts: list[Part]
    tables: dict[tuple[str, str], dict[str, ColumnType]]
    encoded: list[tuple[dict[str, ColumnType], Rows]]


@dataclass
class LoadReport:
    events: int = 0
    rows: int = 0
    tables: int = 0
    seconds: float = 0.0
    changes: list[SchemaChange] = field(default_factory=list)


class Loader:
    """Loads batches into one warehouse; remembers its tables' columns between loads. Its
    loads and schema changes are recorded under `destination` (several Headwater
    destinations may share one database)."""

    def __init__(self, engine: Engine, destination: str = "") -> None:
        self.engine = engine
        self.destination = destination
        self.dialect = engine.dialect
        self.catalog: dict[tuple[str, str], dict[str, ColumnType]] = {}
        self.schemas: set[str] = set()
        self.settled_at: float | None = None  # None: not yet, and the first load settles
        # The `identifies` / `groups` rows of the loads since the last settle.
        self.deferred: list[Part] = []

    def load(
        self, messages: Sequence[tuple[str, Mapping[str, Any]]], *, more_follow: bool = False
    ) -> LoadReport:
        """Load `(source slug, message)` pairs."""
        return self.load_batch(
            [source for source, _ in messages],
            [json_line(message) for _, message in messages],
            more_follow=more_follow,
        )

    def prepare(
        self, sources: Sequence[str], lines: Sequence[bytes], joined: bytes | None = None
    ) -> Prepared:
        """The rows of messages given as JSON lines, as this warehouse names and takes them
        (`joined`: the lines joined by newlines, if the batch came so)."""
        parts = [self._fitted(part) for part in parts_for(sources, lines, joined) if part.table not in LATEST]
        tables: dict[tuple[str, str], dict[str, ColumnType]] = {}
        for part in parts:
            types = tables.setdefault((part.schema, part.table), {})
            for column, kind in part.columns.items():
                types[column] = evolved(types, column, kind)
        encoded = []
        for part in parts:
            known = dict(self.catalog.get((part.schema, part.table), {}))  # a copy: loads change it
            batch = tables[(part.schema, part.table)]
            columns = {column: evolved(known, column, batch[column]) for column in part.columns}
            encoded.append((columns, self._encoded(part, columns)))
        return Prepared(parts, tables, encoded)

    def _encoded(self, part: Part, columns: Columns) -> Rows:
        arrays = part.arrays_as(columns, text_timestamps=self.dialect.text_timestamps)
        return self.dialect.encode(columns, arrays)

    def load_batch(
        self,
        sources: Sequence[str],
        lines: Sequence[bytes],
        prepared: Prepared | None = None,
        *,
        more_follow: bool = False,
    ) -> LoadReport:
        """Load messages given as JSON lines, each with its source's slug (`prepared`: their
        rows, if `prepare` computed them already; `more_follow`: another batch waits, which
        may settle `users` / `accounts` instead, see the module's docstring)."""
        started = time.perf_counter()
        if prepared is None:
            prepared = self.prepare(sources, lines)
        parts, tables = prepared.parts, prepared.tables
        settle = (
            not more_follow
            or self.settled_at is None
            or time.monotonic() - self.settled_at >= SETTLE_AT_LEAST_EVERY
        )
        session = self.engine.session()
        try:
            report = LoadReport(events=len(lines))
            self._prepare(session, {schema for schema, _ in tables})
            for (schema, table), types in tables.items():
                report.changes += self._evolve(session, schema, table, types)
            touched = self._touched(parts)
            stale = self._stale(session) if settle else {}
            if unknown := sorted({schema for schema, _ in stale} - self.schemas):
                self._read_catalog(session, unknown)  # a schema dropped since is not made again
            latest = [
                (schema, table, self._latest_columns(schema, table))
                for schema, table in sorted(touched.keys() | stale.keys())
                if (schema, LATEST[table][0]) in self.catalog  # else nothing to rebuild from
            ]
            for schema, table, columns in latest:
                report.changes += self._evolve(session, schema, table, columns)
            self._record_changes(session, report.changes)
            session.commit()
            inserts = []
            for part, (expected, rows) in zip(parts, prepared.encoded, strict=True):
                known = self.catalog[(part.schema, part.table)]
                columns = {column: known[column] for column in part.columns}
                if columns != expected:
                    rows = self._encoded(part, columns)
                read_later = part.table in _LOOKED_UP
                inserts.append(Insert(part.schema, part.table, columns, rows, read_later))
            report.rows += session.insert_all(inserts)
            kept = self._touched(self.deferred) if settle else {}
            merged = [*self.deferred, *parts]
            for schema, table, columns in latest:
                ids = touched.get((schema, table), set())
                if not settle:
                    self._mark_stale(session, schema, table, sorted(ids))
                    continue
                stale_ids = stale.get((schema, table), set())
                lost = stale_ids - kept.get((schema, table), set())  # their rows are not here
                self._refresh(session, schema, table, columns, sorted(ids | stale_ids), merged, lost)
            if stale:
                self._forget_stale(session)
            report.tables = len(tables)
            report.seconds = time.perf_counter() - started
            self._record_load(session, report)
            session.commit()
            if settle:
                self.deferred, self.settled_at = [], time.monotonic()
            else:
                self.deferred += [part.detached() for part in parts if part.table in _LOOKED_UP]
        except BaseException:
            session.rollback()
            self.catalog.clear()
            self.schemas.clear()
            raise
        finally:
            session.close()
        return report

    def _fitted(self, part: Part) -> Part:
        """The part with every name as the engine takes it (see the module's docstring)."""
        fit = self.dialect.fit
        names = {column: fit(column) for column in part.columns}
        holds_tracks = part.table == "tracks" or part.table not in STANDARD_TABLES
        events = part.column_values("event") if holds_tracks and "event" in part.columns else []
        long_events = {event for event in set(events) if isinstance(event, str) and fit(event) != event}
        renamed = any(column != name for column, name in names.items())
        part = dataclasses.replace(part, schema=fit(part.schema), table=fit(part.table))
        if not long_events and not renamed:
            return part
        if long_events:
            part = part.with_values("event", [fit(e) if e in long_events else e for e in events])
        return part.renamed(names)

    def _prepare(self, session: Session, schemas: set[str]) -> None:
        """Know the existing columns of every schema this load touches; create what is missing."""
        wanted = sorted((schemas | {META_SCHEMA}) - self.schemas)
        if not wanted:
            return
        self._read_catalog(session, wanted)
        for schema in wanted:
            session.execute(self.dialect.create_schema(schema))
        for statement in self.dialect.adopt_tables(wanted):
            session.execute(statement)
        for table, columns in META_TABLES.items():
            known = self.catalog.get((META_SCHEMA, table))
            if known is None:
                session.execute(self.dialect.create_table(META_SCHEMA, table, columns, unique_id=False))
                self.catalog[(META_SCHEMA, table)] = dict(columns)
                continue
            for column, kind in columns.items():  # a table made by an earlier release
                if column not in known:
                    session.execute(self.dialect.add_column(META_SCHEMA, table, column, kind))
                    known[column] = kind
        self.schemas.update(wanted)

    def _read_catalog(self, session: Session, schemas: Sequence[str]) -> None:
        sql, params = self.dialect.columns_query(schemas)
        for schema, table, column, data_type in session.query(sql, params).rows:
            self.catalog.setdefault((schema, table), {})[column] = self.dialect.column_type(data_type)

    def _evolve(self, session: Session, schema: str, table: str, columns: Columns) -> list[SchemaChange]:
        """Make `table` hold `columns`: create it, add what is missing, widen what conflicts."""
        known = self.catalog.get((schema, table))
        if known is None:
            wanted = {"id": ColumnType.TEXT, **columns, LOADED_AT: ColumnType.TIMESTAMP}
            session.execute(self.dialect.create_table(schema, table, wanted, unique_id=True))
            # `users` / `accounts` are rebuilt by looking ids up in their source tables.
            key = _LOOKED_UP.get(table)
            index = self.dialect.create_index(schema, table, key) if key else None
            if index:
                session.execute(index)
            self.catalog[(schema, table)] = dict(wanted)
            return [SchemaChange(schema, table, None, "created table", f"{len(wanted)} columns")]
        changes = []
        for column, seen in columns.items():
            current, wider = known.get(column), evolved(known, column, seen)
            if current is None:
                session.execute(self.dialect.add_column(schema, table, column, seen))
                known[column] = seen
                changes.append(SchemaChange(schema, table, column, "added column", seen.value))
            elif wider is not current:
                session.execute(self.dialect.widen_column(schema, table, column, wider))
                for statement in self.dialect.after_widening(schema, table, column, current, wider):
                    session.execute(statement)
                known[column] = wider
                changes.append(
                    SchemaChange(
                        schema,
                        table,
                        column,
                        "widened column",
                        f"{current.value} → {wider.value}: a {seen.value} value arrived; earlier values kept",
                    )
                )
        return changes

    @staticmethod
    def _touched(parts: Iterable[Part]) -> dict[tuple[str, str], set[str]]:
        """The ids of each `users` / `accounts` (by schema and table) that a batch touches."""
        touched: dict[tuple[str, str], set[str]] = {}
        latest_of = {source: table for table, (source, _key) in LATEST.items()}
        for part in parts:
            key = _LOOKED_UP.get(part.table)
            if key is None or key not in part.columns:
                continue
            ids = pc.unique(part.arrays_as({key: ColumnType.TEXT})[key].drop_null()).to_pylist()
            if ids:
                touched.setdefault((part.schema, latest_of[part.table]), set()).update(ids)
        return touched

    def _latest_columns(self, schema: str, table: str) -> dict[str, ColumnType]:
        """The columns of a `users` / `accounts`: the traits of its event table, typed alike."""
        source, _key = LATEST[table]
        traits = {
            column: kind
            for column, kind in self.catalog.get((schema, source), {}).items()
            if column not in _NOT_TRAITS and not column.startswith("context_")
        }
        return {**_LATEST_FIXED, **traits}

    def _stale(self, session: Session) -> dict[tuple[str, str], set[str]]:
        """The ids that loads before this one left stale, by schema and table."""
        q, mark = self.dialect.quote, self.dialect.placeholder
        found = session.query(
            f"SELECT DISTINCT {q('schema_name')}, {q('table_name')}, {q('latest_id')}"
            f" FROM {self.dialect.table(META_SCHEMA, STALE)} WHERE {q('destination')} = {mark}",
            [self.destination],
        )
        stale: dict[tuple[str, str], set[str]] = {}
        for schema, table, id_ in found.rows:
            if table in LATEST:
                stale.setdefault((schema, table), set()).add(id_)
        return stale

    def _mark_stale(self, session: Session, schema: str, table: str, ids: Sequence[str]) -> None:
        q, mark = self.dialect.quote, self.dialect.placeholder
        names = ", ".join(q(column) for column in META_TABLES[STALE])
        for chunk in self._chunks(ids):
            each, params = self.dialect.each("latest_id", chunk)
            session.execute(
                f"INSERT INTO {self.dialect.table(META_SCHEMA, STALE)} ({names})"
                f" SELECT {mark}, {mark}, {mark}, {q('latest_id')}, {self.dialect.now} FROM ({each}) ids",
                [self.destination, schema, table, *params],
            )

    def _forget_stale(self, session: Session) -> None:
        """Settled: every id recorded (only this loader loads for its destination)."""
        session.execute(
            f"DELETE FROM {self.dialect.table(META_SCHEMA, STALE)}"
            f" WHERE {self.dialect.quote('destination')} = {self.dialect.placeholder}",
            [self.destination],
        )

    def _refresh(
        self,
        session: Session,
        schema: str,
        table: str,
        columns: Columns,
        ids: Sequence[str],
        parts: Sequence[Part],
        rebuild: set[str],
    ) -> None:
        """Bring `users` / `accounts` up to date for `ids`. A stored row whose messages in
        this batch are all newer than it (the usual case) takes the batch's latest non-null
        values and keeps the rest — the same result as a rebuild, without reading the id's
        whole history; any other id (new, with a message arriving late, or in `rebuild`) is
        rebuilt."""
        source, key = LATEST[table]
        wanted = {column: kind for column, kind in columns.items() if column != LOADED_AT}
        try:
            batch = _batch_rows(parts, schema, source, key, wanted)
            latest = None if batch is None else _latest(batch, wanted)
        except (ValueError, pa.ArrowException):  # a column the rebuild reads in its own way
            batch = latest = None
        merging: set[str] = set()
        stored: dict[str, dict[str, Any]] = {}
        if batch is not None and latest is not None:
            # What deciding needs (the stored row's newest moments) and what a merge keeps:
            # the columns that some id's rows in the batch leave null.
            kept = {
                column: kind
                for column, kind in wanted.items()
                if column in _LATEST_FIXED or latest[column].null_count
            }
            fresh = [id_ for id_ in ids if id_ not in rebuild]
            stored = self._stored_rows(session, schema, table, kept, fresh) if fresh else {}
            merging = _all_newer(batch, stored)
        rebuilt = [id_ for id_ in ids if id_ not in merging]
        for chunk in self._chunks(rebuilt):
            self._rebuild(session, schema, table, columns, chunk)
        if merging and latest is not None:
            among, params = self.dialect.among("id", sorted(merging))
            session.execute(f"DELETE FROM {self.dialect.table(schema, table)} WHERE {among}", params)
            arrays = {
                column: _encodable(values, wanted[column], self.dialect)
                for column, values in _merged(latest, stored, merging, wanted).items()
            }
            session.insert_new(schema, table, wanted, self.dialect.encode(wanted, arrays))

    def _chunks(self, ids: Sequence[str]) -> Iterable[Sequence[str]]:
        """`ids` as many at a time as one statement that records or rebuilds them takes."""
        size = self.dialect.ids_at_once
        return (ids[start : start + size] for start in range(0, len(ids), size))

    def _stored_rows(
        self, session: Session, schema: str, table: str, columns: Columns, ids: Sequence[str]
    ) -> dict[str, dict[str, Any]]:
        """The stored rows of `ids`, values as Python has them (timestamps aware, in UTC)."""
        among, params = self.dialect.among("id", ids)
        names = ", ".join(self.dialect.quote(column) for column in columns)
        found = session.query(
            f"SELECT {names} FROM {self.dialect.table(schema, table)} WHERE {among}", params
        )
        return {
            row[0]: dict(zip(columns, map(_python, row, columns.values()), strict=True)) for row in found.rows
        }

    def _rebuild(
        self, session: Session, schema: str, table: str, columns: Columns, ids: Sequence[str]
    ) -> None:
        """Each id's row: every column's latest non-null value by timestamp in the source table."""
        source, key = LATEST[table]
        q = self.dialect.quote
        among_target, target_params = self.dialect.among("id", ids)
        among_source, source_params = self.dialect.among(key, ids)
        session.execute(
            f"DELETE FROM {self.dialect.table(schema, table)} WHERE {among_target}", target_params
        )
        newest = ", ".join(
            f"CASE WHEN {q(column)} IS NULL THEN 1 ELSE 0 END, {q(column)} DESC"
            for column in ("timestamp", "received_at")
        )
        picks = []
        for column in columns:
            if column == "id":
                picks.append(q(key))
            elif column == LOADED_AT:
                picks.append(self.dialect.now)
            else:
                order = f"CASE WHEN {q(column)} IS NULL THEN 1 ELSE 0 END, {newest}"
                picks.append(f"FIRST_VALUE({q(column)}) OVER (PARTITION BY {q(key)} ORDER BY {order})")
        session.execute(
            f"INSERT INTO {self.dialect.table(schema, table)} ({', '.join(q(c) for c in columns)})"
            f" SELECT DISTINCT {', '.join(picks)} FROM {self.dialect.table(schema, source)}"
            f" WHERE {among_source}",
            source_params,
        )

    def _record_load(self, session: Session, report: LoadReport) -> None:
        mark = self.dialect.placeholder
        names = ", ".join(self.dialect.quote(c) for c in META_TABLES[LOADS])
        session.execute(
            f"INSERT INTO {self.dialect.table(META_SCHEMA, LOADS)} ({names})"
            f" VALUES ({mark}, {self.dialect.now}, {mark}, {mark}, {mark}, {mark})",
            [self.destination, report.events, report.rows, report.tables, report.seconds],
        )

    def _record_changes(self, session: Session, changes: Sequence[SchemaChange]) -> None:
        mark = self.dialect.placeholder
        names = ", ".join(self.dialect.quote(c) for c in META_TABLES[SCHEMA_CHANGES])
        for change in changes:
            session.execute(
                f"INSERT INTO {self.dialect.table(META_SCHEMA, SCHEMA_CHANGES)} ({names})"
                f" VALUES ({mark}, {self.dialect.now}, {mark}, {mark}, {mark}, {mark}, {mark})",
                [self.destination, change.schema, change.table, change.column, change.change, change.detail],
            )


def evolved(known: Mapping[str, ColumnType], column: str, seen: ColumnType) -> ColumnType:
    """A column's type once values of type `seen` are loaded into it (as seen, if new): the
    one rule both a load's schema changes and rows encoded ahead of the load follow."""
    current = known.get(column)
    return seen if current is None else widen(current, seen)


def _batch_rows(
    parts: Sequence[Part], schema: str, source: str, key: str, columns: Columns
) -> pa.Table | None:
    """The batch's rows of `source` that have a `key`, as a table of `columns` (`id` being the
    key) in their types; None if it has none."""
    tables = []
    for part in parts:
        if part.schema != schema or part.table != source or key not in part.columns:
            continue
        present = {
            column: kind for column, kind in columns.items() if column in part.columns and column != "id"
        }
        arrays = part.arrays_as({**present, key: ColumnType.TEXT})
        size = len(arrays[key])
        tables.append(
            pa.table(
                {
                    "id": arrays[key],
                    **{
                        column: arrays[column] if column in present else pa.nulls(size, ARROW_TYPES[kind])
                        for column, kind in columns.items()
                        if column != "id"
                    },
                }
            )
        )
    if not tables:
        return None
    rows = pa.concat_tables(tables)
    return rows.filter(pc.is_valid(rows["id"]))


def _all_newer(rows: pa.Table, stored: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """The ids whose stored row each of their `rows` is newer than: a later timestamp, or the
    same and a later `received_at` (the rebuild's order, in which the stored row's are the
    newest so far)."""
    since = {id_: (_micros(row["timestamp"]), _micros(row["received_at"])) for id_, row in stored.items()}
    older: set[str] = set()
    moments = rows["timestamp"].cast(pa.int64()).to_pylist()
    receipts = rows["received_at"].cast(pa.int64()).to_pylist()
    for id_, moment, received in zip(rows["id"].to_pylist(), moments, receipts, strict=True):
        newest = since.get(id_)
        if newest is None or not _later((moment, received), newest):
            older.add(id_)
    return set(since) - older


def _later(row: tuple[int | None, int | None], newest: tuple[int | None, int | None]) -> bool:
    moment, received = row
    newest_moment, newest_received = newest
    if moment is None or newest_moment is None:
        return False
    if moment != newest_moment:
        return moment > newest_moment
    return received is not None and newest_received is not None and received > newest_received


def _micros(value: Any) -> int | None:
    return None if value is None else epoch_micros(value)


def _latest(rows: pa.Table, columns: Columns) -> pa.Table:
    """Per id of `rows`, each column's latest non-null value, ordered as the rebuild orders
    them (by timestamp, then `received_at`, either missing being the oldest)."""
    oldest = pa.scalar(-(2**63), pa.int64())
    ordered = (
        rows.append_column("_moment", pc.fill_null(rows["timestamp"].cast(pa.int64()), oldest))
        .append_column("_received", pc.fill_null(rows["received_at"].cast(pa.int64()), oldest))
        .sort_by([("_moment", "ascending"), ("_received", "ascending")])
    )
    traits = [column for column in columns if column != "id"]
    latest = ordered.group_by("id", use_threads=False).aggregate([(column, "last") for column in traits])
    return pa.table(
        {
            "id": latest["id"].combine_chunks(),
            **{column: latest[f"{column}_last"].combine_chunks() for column in traits},
        }
    )


def _merged(
    latest: pa.Table, stored: Mapping[str, Mapping[str, Any]], ids: set[str], columns: Columns
) -> dict[str, pa.Array]:
    """The rows of `ids` in `latest` (their values in a batch all newer than the stored
    rows), each null filled with the stored row's value."""
    latest = latest.filter(pc.is_in(latest["id"], pa.array(sorted(ids), pa.string())))
    found = latest["id"].to_pylist()
    merged: dict[str, pa.Array] = {}
    for column, kind in columns.items():
        values = latest[column].combine_chunks()
        if column != "id" and values.null_count:
            kept = pa.array([stored[id_].get(column) for id_ in found], ARROW_TYPES[kind])
            values = pc.coalesce(values, kept)
        merged[column] = values
    return merged


def _python(value: Any, kind: ColumnType) -> Any:
    """A value read back from any engine as Python has it in a batch."""
    if value is None:
        return None
    if kind is ColumnType.TIMESTAMP and isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if kind is ColumnType.BOOLEAN:
        return bool(value)
    if kind is ColumnType.DOUBLE:
        return float(value)
    return value


def _encodable(values: pa.Array, kind: ColumnType, dialect: Dialect) -> pa.Array:
    """A column as `insert_new` takes it: timestamps as ISO text where the dialect says so."""
    if kind is ColumnType.TIMESTAMP and dialect.text_timestamps:
        return pa.array(
            [None if value is None else value.isoformat() for value in values.to_pylist()], pa.string()
        )
    return values
