"""Warehouses through dlt: Snowflake, BigQuery, Redshift, ClickHouse, Databricks, files on a
local path or object storage, and the other table destinations dlt (dlthub.com) loads.

The rows are Segment's layout, computed by `schema.tables_for` as for the native loaders:
dlt gets them flat, one Arrow table per warehouse table, typed by our column types (also
given as dlt column hints), and keeps our names as they are (dlt's `direct` naming). Each
source slug is a dataset (schema), loaded by a dlt pipeline of its own, so a load has a
result per source: its events are `Delivered`, or all `Retry` if anything in it failed. The
router then sends them again, and what the failed load left in dlt's working directory is
dropped first, so it never lands in place of the events at hand.

Settings:
  destination    dlt's name of the destination: duckdb, postgres, snowflake, bigquery,
                 redshift, clickhouse, databricks, motherduck, mssql, filesystem, ...
  credentials    what dlt takes as that destination's credentials: a connection string or a
                 mapping of its fields. A relative DuckDB path is in the data directory
                 (default `<name>.duckdb` there). May be left out and given the dlt way
                 instead, e.g. DESTINATION__SNOWFLAKE__CREDENTIALS__PASSWORD in the environment.
  bucket_url     filesystem only: where the files go (a path, relative ones in the data
                 directory, or s3://, gs://, az://, ...); required
  file_format    filesystem only: parquet (default), jsonl or csv
  pipelines_dir  dlt's working directory (default `dlt` in the data directory)
  batch_size     load when this many events wait (default 10000)
  load_every     or when the oldest waiting event is this old (default 30s)

    destinations:
      - name: snowflake
        type: dlt
        settings:
          destination: snowflake
          credentials: snowflake://loader:secret@account_id/analytics?warehouse=load&role=loader
      - name: lake
        type: dlt
        settings: {destination: filesystem, bucket_url: "s3://acme-events/segment"}
      - name: local
        type: dlt
        settings: {destination: duckdb, credentials: events.duckdb, load_every: 1m}

`pip install 'headwater[dlt]'` brings dlt with DuckDB, PostgreSQL and the filesystem (local,
S3); another warehouse needs its dlt extra too, e.g. `pip install 'dlt[snowflake]'`. dlt's
postgres credentials need a password field: with trust or peer authentication write an
empty one, `postgresql://user:@host:5432/database`.

What a load guarantees:
- Event tables: a destination that merges (dlt's SQL warehouses) keeps one row per `id`
  (messageId); dlt's delete-insert merge replaces a row loaded again, so a retried load
  adds nothing. dlt does not change a column's type (the native loaders widen it): a later
  batch's values go into the column converted when it holds them (BIGINT into DOUBLE,
  anything into TEXT), otherwise into a dlt-style variant column beside it (`price__v_text`).
- `users` / `accounts`: one row per id holding each trait's latest non-null value by
  `timestamp` (then `received_at`). Within a load that is exact. Across loads the stored row
  is read back (one query per load that touches the table) and folded in as one message
  of its own `timestamp`: in order, that is exact too, and a late message never overwrites
  a newer value, only fills traits the row lacks. What dlt cannot keep is a time per trait,
  so a late message also loses to a value the stored row took from a message older than
  itself. (The native loaders rebuild these tables from `identifies` / `groups` and have
  no such gap.)
- filesystem: dlt cannot merge plain Parquet, JSONL or CSV files (the latter two gzipped),
  so every load appends files: a retried load may repeat rows, read events distinct on
  `id`; and `users` / `accounts` get a row per id and load with that load's latest traits,
  read each trait's latest non-null value per `id` by `timestamp`.
- Every table has `uuid_ts`, the load's time. dlt keeps its own `_dlt_loads`,
  `_dlt_version` and `_dlt_pipeline_state` tables in each dataset, merges through a
  `<slug>_staging` dataset, and its pipeline state under `pipelines_dir`.

dlt is imported on the first load only, so the CLI does not pay for it. Its anonymous
telemetry is off unless RUNTIME__DLTHUB_TELEMETRY says otherwise.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
import pyarrow.compute as pc

from headwater.destinations.base import DELIVERED, Outcome, Retry, SettingsError
from headwater.warehouse.columnar import ARROW_TYPES, TIMESTAMP
from headwater.warehouse.destination import micro_batch_settings
from headwater.warehouse.engine import LOADED_AT
from headwater.warehouse.loader import LATEST
from headwater.warehouse.schema import (
    ColumnType,
    TableRows,
    coerce,
    column_type,
    is_timestamp,
    parse_timestamp,
    tables_for,
    widen,
)
from headwater.warehouse.worker import Batch, LoaderProcess, LoadsInItsProcess

if TYPE_CHECKING:
    from dlt.common.data_types.typing import TDataType
    from dlt.common.destination import AnyDestination
    from dlt.common.schema.typing import TColumnSchema, TWriteDispositionConfig
    from dlt.common.typing import TLoaderFileFormat
    from dlt.extract.resource import DltResource
    from dlt.pipeline.pipeline import Pipeline

DLT_SETTINGS = frozenset({"destination", "credentials", "bucket_url", "file_format", "pipelines_dir"})
FILESYSTEM_SETTINGS = frozenset({"bucket_url", "file_format"})
FILE_FORMATS = ("parquet", "jsonl", "csv")
# dlt destinations that are not tables: vector stores, the custom sink, the no-op one.
NOT_WAREHOUSES = frozenset({"destination", "dummy", "lance", "lancedb", "qdrant", "weaviate"})
SCHEMA_NAME = "headwater"
IDS_PER_QUERY = 1000
MAX_REASON = 1000
DLT_TYPES: Mapping[ColumnType, TDataType] = {
    ColumnType.TIMESTAMP: "timestamp",
    ColumnType.BIGINT: "bigint",
    ColumnType.DOUBLE: "double",
    ColumnType.BOOLEAN: "bool",
    ColumnType.TEXT: "text",
}
COLUMN_TYPES: Mapping[str, ColumnType] = {name: kind for kind, name in DLT_TYPES.items()}
_EARLIEST = datetime.min.replace(tzinfo=UTC)
_EXCEPTION_LINE = re.compile(r"^[\w.]*(?:Error|Exception): .*$", re.MULTILINE)
# No anonymous usage reports to dlthub unless asked for; set before dlt reads its settings.
os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")

Columns = dict[str, ColumnType]


class DltDestination(LoadsInItsProcess):
    """Loads micro-batches in Segment's layout into any table destination dlt has."""

    kind: ClassVar[str] = "dlt"
    max_lanes: int | None = 1

    def __init__(self, name: str, settings: Mapping[str, Any], data_dir: Path | None = None) -> None:
        self.name = name
        self.max_batch, self.linger_seconds = micro_batch_settings(self.kind, name, settings, DLT_SETTINGS)
        self.destination = _destination_name(name, settings.get("destination"))
        self.credentials = _credentials(name, self.destination, settings.get("credentials"), data_dir)
        self.bucket_url: str | None = None
        self.file_format: TLoaderFileFormat | None = None
        if self.destination == "filesystem":
            self.bucket_url = _bucket_url(name, settings.get("bucket_url"), data_dir)
            file_format = settings.get("file_format", "parquet")
            if file_format not in FILE_FORMATS:
                raise SettingsError(f"dlt {name!r}: `file_format` must be one of {', '.join(FILE_FORMATS)}")
            self.file_format = file_format
        elif misplaced := sorted(FILESYSTEM_SETTINGS & set(settings)):
            raise SettingsError(f"dlt {name!r}: `{misplaced[0]}` is for `destination: filesystem` only")
        self.pipelines_dir = _directory(name, "pipelines_dir", settings.get("pipelines_dir", "dlt"), data_dir)
        self.pipeline_prefix = "headwater_" + re.sub(r"[^A-Za-z0-9_]+", "_", name)
        self._factory: AnyDestination | None = None
        self._merges = False
        self._pipelines: dict[str, Pipeline] = {}
        self.process = LoaderProcess(type(self), name, settings, data_dir)

    def describe(self) -> str:
        where = self.bucket_url or (self.credentials if self.destination == "duckdb" else None)
        return f"dlt {self.destination}" + (f" {where}" if where else "")

    async def prefetch(self, events: Sequence[Mapping[str, Any] | bytes], sources: Sequence[str]) -> None:
        """Nothing to prepare ahead: dlt normalises and loads in one go."""

    def prepare(self, batch: Batch) -> Any:
        return None

    def load_here(self, batch: Batch, prepared: Any = None, *, more_follow: bool = False) -> list[Outcome]:
        """Load in this process (the loader process calls this): an outcome per event (dlt
        merges `users` itself, batch by batch)."""
        failures = self._load(batch.messages())
        retries = {source: Retry(reason) for source, reason in failures.items()}
        return [retries.get(source, DELIVERED) for source in batch.sources]

    async def close(self) -> None:
        await asyncio.to_thread(self.process.close)
        self._pipelines.clear()

    def _load(self, messages: Sequence[tuple[str, Mapping[str, Any]]]) -> dict[str, str]:
        """Load each source's rows with its own pipeline; the failure reason by source slug."""
        loaded_at = datetime.now(UTC)
        by_source: dict[str, list[TableRows]] = {}
        for table in tables_for(messages):
            by_source.setdefault(table.schema, []).append(table)
        failures: dict[str, str] = {}
        for slug, tables in by_source.items():
            try:
                self._load_source(slug, tables, loaded_at)
            except Exception as error:
                failures[slug] = f"{self.describe()}: {_reason(error)}"
        return failures

    def _load_source(self, slug: str, tables: Sequence[TableRows], loaded_at: datetime) -> None:
        from dlt.common.schema import Schema

        pipeline = self._pipeline(slug)
        if pipeline.has_pending_data:  # what a failed load left: its events come again
            pipeline.abort_packages()
        known = _known_columns(pipeline)
        resources = [
            self._resource(pipeline, table, known.get(table.table, {}), loaded_at) for table in tables
        ]
        info = pipeline.run(resources, schema=Schema(SCHEMA_NAME, normalizers={"names": "direct"}))
        info.raise_on_failed_jobs()

    def _pipeline(self, slug: str) -> Pipeline:
        pipeline = self._pipelines.get(slug)
        if pipeline is None:
            import dlt

            pipeline = dlt.pipeline(
                pipeline_name=f"{self.pipeline_prefix}_{slug}",
                destination=self._destination(),
                dataset_name=slug,
                pipelines_dir=str(self.pipelines_dir),
            )
            pipeline.sync_destination()  # the schema as loaded, should the working directory be new
            self._pipelines[slug] = pipeline
        return pipeline

    def _destination(self) -> AnyDestination:
        if self._factory is None:
            from dlt.common.destination import Destination

            options: dict[str, Any] = {}
            if self.bucket_url:
                # Our table names are a-z, 0-9 and _ only: no `/` for a file layout to trip on.
                options = {"bucket_url": self.bucket_url, "warn_unsafe_layout_separators": False}
            factory = Destination.from_reference(self.destination, credentials=self.credentials, **options)
            assert factory is not None
            self._merges = "delete-insert" in (factory.capabilities().supported_merge_strategies or ())
            self._factory = factory
        return self._factory

    def _resource(
        self, pipeline: Pipeline, table: TableRows, known: Columns, loaded_at: datetime
    ) -> DltResource:
        import dlt

        count, columns, values = len(table.rows), table.columns, table.values
        if table.table in LATEST:
            stored = self._stored_rows(pipeline, table, known) if self._merges and known else []
            rows = _latest(stored, table.rows)
            count, values = len(rows), _by_column(rows)
            typed = {name: column_type(column_values) for name, column_values in values.items()}
            columns = {name: kind for name, kind in typed.items() if kind is not None}
            columns["id"] = ColumnType.TEXT  # a user id may look like a date
        placed = _place(columns, known)
        hints: dict[str, TColumnSchema] = {
            target: {"data_type": DLT_TYPES[kind], "nullable": target != "id"} for _, target, kind in placed
        }
        hints["id"]["primary_key"] = True
        hints[LOADED_AT] = {"data_type": "timestamp", "nullable": True}
        disposition: TWriteDispositionConfig = (
            {"disposition": "merge", "strategy": "delete-insert"} if self._merges else "append"
        )
        resource: DltResource = dlt.resource(
            [_arrow_table(count, values, placed, loaded_at)],
            name=table.table,
            columns=hints,
            primary_key="id",
            write_disposition=disposition,
        )
        if self.file_format:
            resource.apply_hints(file_format=self.file_format)
        return resource

    def _stored_rows(self, pipeline: Pipeline, table: TableRows, known: Columns) -> list[dict[str, Any]]:
        """The rows `table` holds for the batch's ids, in the form `rows_for` gives."""
        ids = sorted({row["id"] for row in table.rows})
        found: list[dict[str, Any]] = []
        with pipeline.sql_client() as client:
            qualified = client.make_qualified_table_name(table.table)
            id_column = client.escape_column_name("id")
            for start in range(0, len(ids), IDS_PER_QUERY):
                chunk = ids[start : start + IDS_PER_QUERY]
                marks = ", ".join(["%s"] * len(chunk))
                sql = f"SELECT * FROM {qualified} WHERE {id_column} IN ({marks})"
                with client.execute_query(sql, *chunk) as cursor:
                    names = [column[0] for column in cursor.description]
                    for values in cursor.fetchall():
                        found.append(
                            {
                                name: _from_warehouse(value, known.get(name))
                                for name, value in zip(names, values, strict=True)
                                if value is not None and name != LOADED_AT and not name.startswith("_dlt_")
                            }
                        )
        return found


@cache
def _dlt_destinations() -> frozenset[str] | None:
    """The destinations of the installed dlt, found without importing it; None if dlt is not
    installed, empty if its layout is not the one known here (then any name goes)."""
    spec = importlib.util.find_spec("dlt")
    if spec is None or not spec.submodule_search_locations:
        return None
    impl = Path(next(iter(spec.submodule_search_locations))) / "destinations" / "impl"
    return (
        frozenset(path.name for path in impl.iterdir() if (path / "__init__.py").exists())
        if impl.is_dir()
        else frozenset()
    )


def _reason(error: Exception) -> str:
    """What went wrong, in a line: dlt wraps the cause in its step's exception, and a failed
    job's message is the job's whole traceback, whose first exception line is the cause."""
    cause = getattr(error, "exception", None) or error
    text = str(cause)
    root = _EXCEPTION_LINE.search(text) if "Traceback (most recent call last)" in text else None
    detail = root.group(0) if root else text
    return f"{cause.__class__.__name__}: {detail}"[:MAX_REASON]


def _destination_name(name: str, destination: Any) -> str:
    installed = _dlt_destinations()
    if installed is None:
        raise SettingsError(f"dlt {name!r}: dlt is not installed; pip install 'headwater[dlt]'")
    if not isinstance(destination, str) or not destination:
        raise SettingsError(f"dlt {name!r}: `destination` must name a dlt destination, e.g. snowflake")
    usable = installed - NOT_WAREHOUSES
    if destination in NOT_WAREHOUSES or (usable and destination not in usable):
        raise SettingsError(
            f"dlt {name!r}: `destination`: {destination!r} is not a dlt warehouse;"
            f" known: {', '.join(sorted(usable))}"
        )
    return destination


def _credentials(name: str, destination: str, credentials: Any, data_dir: Path | None) -> Any:
    if credentials is not None and not isinstance(credentials, str | Mapping):
        raise SettingsError(f"dlt {name!r}: `credentials` must be a connection string or a mapping")
    if destination != "duckdb" or isinstance(credentials, Mapping):
        return dict(credentials) if isinstance(credentials, Mapping) else credentials
    if credentials is None:
        credentials = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) + ".duckdb"
    if "://" in credentials or credentials.startswith(":"):  # duckdb:///path, :memory:
        return credentials
    return str(_directory(name, "credentials", credentials, data_dir))


def _bucket_url(name: str, bucket_url: Any, data_dir: Path | None) -> str:
    if not isinstance(bucket_url, str) or not bucket_url:
        raise SettingsError(
            f"dlt {name!r}: `bucket_url` (where the files go: a path, s3://bucket/prefix, ...) is required"
        )
    return bucket_url if "://" in bucket_url else str(_directory(name, "bucket_url", bucket_url, data_dir))


def _directory(name: str, setting: str, value: Any, data_dir: Path | None) -> Path:
    if not isinstance(value, str) or not value:
        raise SettingsError(f"dlt {name!r}: `{setting}` must be a path")
    path = Path(value).expanduser()
    return path if path.is_absolute() or data_dir is None else data_dir / path


def _known_columns(pipeline: Pipeline) -> dict[str, Columns]:
    """The column types of the tables loaded so far, as dlt's schema has them."""
    if not pipeline.default_schema_name:
        return {}
    return {
        table: {
            column: COLUMN_TYPES[hints["data_type"]]
            for column, hints in schema["columns"].items()
            if hints.get("data_type") in COLUMN_TYPES
        }
        for table, schema in pipeline.default_schema.tables.items()
    }


def _place(columns: Mapping[str, ColumnType], known: Columns) -> list[tuple[str, str, ColumnType]]:
    """`(column, target column, type)` for each column of a batch: its own column, in that
    column's type if it holds the batch's values, else a variant column of the batch's type."""
    placed = []
    for column, kind in columns.items():
        current = known.get(column)
        if current is None or widen(current, kind) is current:
            placed.append((column, column, current or kind))
        else:
            placed.append((column, f"{column}__v_{kind.value}", kind))
    return placed


def _arrow_table(
    count: int,
    values: Mapping[str, list[Any]],
    placed: Iterable[tuple[str, str, ColumnType]],
    loaded_at: datetime,
) -> pa.Table:
    """`count` rows given column by column (`values`), each placed and typed as `_place` says."""
    fields, arrays = [], []
    for column, target, kind in placed:
        fields.append(pa.field(target, ARROW_TYPES[kind], nullable=target != "id"))
        arrays.append(_array(coerce(values[column], kind), kind))
    fields.append(pa.field(LOADED_AT, TIMESTAMP))
    arrays.append(pa.array([loaded_at] * count, type=TIMESTAMP))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def _array(values: list[Any], kind: ColumnType) -> pa.Array:
    if kind is ColumnType.TIMESTAMP:  # `coerce` spelled them ISO-8601 in UTC, which Arrow parses
        return pc.cast(pa.array(values, type=pa.string()), TIMESTAMP)
    return pa.array(values, type=ARROW_TYPES[kind])


def _instant(value: Any) -> datetime:
    """A timestamp as an aware datetime (no offset means UTC); anything else comes first."""
    if not isinstance(value, str) or not is_timestamp(value):
        return _EARLIEST
    return parse_timestamp(value)


def _recency(row: Mapping[str, Any]) -> tuple[datetime, datetime]:
    return _instant(row.get("timestamp")), _instant(row.get("received_at"))


def _latest(stored: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per id: each column's latest non-null value, oldest row first (stored rows
    before the batch's at equal times, so the batch wins a tie)."""
    latest: dict[Any, dict[str, Any]] = {}
    for row in sorted([*stored, *rows], key=_recency):
        latest.setdefault(row["id"], {}).update(row)
    return list(latest.values())


def _by_column(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Any]]:
    names = dict.fromkeys(column for row in rows for column in row)
    return {name: [row.get(name) for row in rows] for name in names}


def _from_warehouse(value: Any, kind: ColumnType | None) -> Any:
    """A stored value as `rows_for` would give it (timestamps as ISO-8601 text)."""
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).isoformat()
    if isinstance(value, Decimal):
        return int(value) if kind is ColumnType.BIGINT else float(value)
    if kind is ColumnType.BOOLEAN and isinstance(value, int):
        return bool(value)
    return value
