"""Warehouses: a backlog drained into DuckDB and PostgreSQL against a raw bulk load, and freshness.

Two parts, each on fresh Headwater processes and data directories (PostgreSQL: a database
of its own on --postgres-url's server, created here and dropped afterwards):

  drain      loadgen fills a log with --events messages (a realistic mix: ~80% track events
             of five names, ~10% identify, ~10% page; /v1/batch of 100, ~770 B a message)
             into a Headwater with no destination. Then, per engine, Headwater restarts on
             a copy of that log with one warehouse destination (`start_from: beginning`,
             batch_size --batch-size, load_every default) and drains it into an empty
             warehouse: rows/s from "ready" until GET /api/destinations counts every event
             delivered; --drain-repeats drains per engine, engines taking turns, and the
             median one is reported (a shared 2-core VM moves ±10% from one to the next). Baseline,
             same run: the same rows (`schema.tables_for` of the same stored messages,
             computed untimed) bulk-loaded raw into fresh tables of the same columns —
             DuckDB from Arrow (`INSERT INTO ... SELECT FROM arrow`), PostgreSQL by COPY —
             in one transaction, and in one transaction per --batch-size events.
             Targets: Headwater / raw >= 0.5 per engine; >= 50,000 rows/s into DuckDB.
  freshness  a DuckDB destination on the default cadence (a load every 30 s or 10,000
             events); loadgen holds --rate events/s for --duration s; afterwards every
             event's uuid_ts - received_at (load time - accept time) is read from the
             warehouse. Target: p95 <= 60 s.

Prints figures and ratios; asserts nothing. Traffic goes to 127.0.0.1 only; every wait
and loop is bounded; every process and database started here is stopped or dropped here.

    .venv/bin/python bench/warehouse.py                        # both parts, ~7-10 minutes
    .venv/bin/python bench/warehouse.py --events 20000 --duration 40
    .venv/bin/python bench/warehouse.py --only drain --engines duckdb --profile
    .venv/bin/python bench/warehouse.py --only freshness --rate 100 --duration 300
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import secrets
import shutil
import signal
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import duckdb
import orjson
import psutil
import psycopg
import pyarrow as pa

from bench import harness
from bench.deliver import CpuMeters, get_json, percentiles
from bench.harness import Headwater, LoadResult, log, num, ratio, table
from bench.payloads import mixed_workload
from headwater.warehouse.columnar import parts_for
from headwater.warehouse.duckdb import DuckDBDialect
from headwater.warehouse.engine import LOADED_AT, Dialect
from headwater.warehouse.loader import LATEST, META_SCHEMA
from headwater.warehouse.postgres import PostgresDialect
from headwater.warehouse.schema import ColumnType, TableRows, coerce, tables_for

RESULTS = Path(__file__).resolve().parent / "results"  # git-ignored
SCHEMA = "bench"  # the slug of the source "Bench" (harness.Headwater's only source)
RAW_SCHEMA = "bench_raw"
DESTINATION = "warehouse"
ENGINES = ("duckdb", "postgres")
ENGINE_NAMES = {"duckdb": "DuckDB", "postgres": "PostgreSQL"}
BATCH = 100  # messages per /v1/batch request
RATIO_TARGET = 0.5
DUCKDB_ROWS_TARGET = 50_000.0
FRESHNESS_TARGET = 60.0  # seconds, p95
DEFAULT_LOAD_EVERY = 30.0  # seconds: the destination's default, for the freshness wait
# The Arrow type of each column type, as the DuckDB session stages them (timestamps as text).
ARROW: Mapping[ColumnType, pa.DataType] = {
    ColumnType.TIMESTAMP: pa.string(),
    ColumnType.BIGINT: pa.int64(),
    ColumnType.DOUBLE: pa.float64(),
    ColumnType.BOOLEAN: pa.bool_(),
    ColumnType.TEXT: pa.string(),
}
# One row per event: the tables an event lands in once (a track's event table is its second).
EVENT_TABLES = ("tracks", "identifies", "pages", "screens", "groups", "aliases")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Headwater warehouses: backlog drain against a raw bulk load, and freshness."
    )
    parser.add_argument("--only", choices=["drain", "freshness"], help="run one part (default both)")
    parser.add_argument(
        "--events", type=int, default=200_000, help="drain: backlog size, whole batches (200,000)"
    )
    parser.add_argument(
        "--ingest-rate", type=float, default=30_000.0, help="drain: events/s loadgen fills with (30,000)"
    )
    parser.add_argument(
        "--engines", default=",".join(ENGINES), help="drain: comma-separated: duckdb, postgres (both)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=10_000, help="drain: the destination's batch_size (10,000)"
    )
    parser.add_argument("--rate", type=float, default=2000.0, help="freshness: events/s (2,000)")
    parser.add_argument(
        "--duration", type=float, default=150.0, help="freshness: seconds of paced load (150)"
    )
    parser.add_argument(
        "--postgres-url",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="a PostgreSQL server to create a bench database on (the URL's own database if it cannot)",
    )
    parser.add_argument(
        "--raw-repeats", type=int, default=3, help="drain: raw loads of each kind; the median is used (3)"
    )
    parser.add_argument(
        "--drain-repeats",
        type=int,
        default=3,
        help="drain: drains per engine, each on a fresh Headwater and warehouse; the median is used (3)",
    )
    parser.add_argument(
        "--ingest-baseline",
        type=float,
        default=20.0,
        help="freshness: seconds of the same load into a Headwater without destination (20; 0: skip)",
    )
    parser.add_argument("--drain-timeout", type=float, default=900.0, help="give up on a drain (900 s)")
    parser.add_argument(
        "--poll",
        type=float,
        default=0.25,
        help="seconds between GET /api/destinations near a drain's end (0.25; 1 s before that)",
    )
    parser.add_argument("--extra-yaml", default="", help="YAML appended to every Headwater workspace file")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="cpu",
        choices=["cpu", "gil", "wall"],
        help="py-spy record Headwater during each drain",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (and bench database)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = set(args.engines) - set(ENGINES)
    if unknown or not args.engines:
        parser.error(f"--engines: unknown or none: {', '.join(sorted(unknown)) or '(empty)'}")
    if not 1_000 <= args.events <= 5_000_000:
        parser.error("--events must be between 1,000 and 5,000,000")
    if not 100 <= args.ingest_rate <= 200_000:
        parser.error("--ingest-rate must be between 100 and 200,000 events/s")
    if not 1 <= args.batch_size <= 100_000:
        parser.error("--batch-size must be between 1 and 100,000 (the destination's limit)")
    if not 1 <= args.rate <= 50_000:
        parser.error("--rate must be between 1 and 50,000 events/s")
    if not 5 <= args.duration <= 3600:
        parser.error("--duration must be between 5 and 3600 seconds")
    if not 1 <= args.raw_repeats <= 10:
        parser.error("--raw-repeats must be between 1 and 10")
    if not 1 <= args.drain_repeats <= 10:
        parser.error("--drain-repeats must be between 1 and 10")
    if not 0 <= args.ingest_baseline <= 600:
        parser.error("--ingest-baseline must be between 0 and 600 seconds")
    if not 30 <= args.drain_timeout <= 7200:
        parser.error("--drain-timeout must be between 30 and 7200 seconds")
    if not 0.05 <= args.poll <= 10:
        parser.error("--poll must be between 0.05 and 10 seconds")
    # A last batch smaller than batch_size would wait out load_every (30 s) after its first
    # event's arrival: whole batches only, so the drain measures loading, not the timer.
    unit = math.lcm(args.batch_size, BATCH)
    wanted = args.events
    args.events = max(unit, math.ceil(wanted / unit) * unit)
    if args.events != wanted:
        log(
            f"--events {wanted:,} -> {args.events:,}: whole batches of {args.batch_size:,}"
            f" (and requests of {BATCH})"
        )
    if urlsplit(args.postgres_url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the benches only talk to this machine: --postgres-url must be local")
    return args


# -- helpers -------------------------------------------------------------------------------


def destination_yaml(engine: str, settings: Mapping[str, Any], start_from: str) -> str:
    lines = [
        "destinations:",
        f"  - name: {DESTINATION}",
        f"    type: {engine}",
        f"    start_from: {start_from}",
        "    settings:",
    ]
    lines += [f"      {key}: {json.dumps(value)}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


def destination_doc(port: int, timeout: float = 30.0) -> dict[str, Any]:
    documents = get_json(port, "/api/destinations", timeout)
    found: dict[str, Any] = next(d for d in documents if d["name"] == DESTINATION)
    return found


def fill(port: int, workload_json: Path, events: int, rate: float, prefix: str) -> LoadResult:
    """loadgen sends exactly `events` messages (rounded up to whole batches) at `rate` events/s."""
    requests = math.ceil(events / BATCH)
    request_rate = rate / BATCH
    runner = harness.Loadgen(port, workload_json, rate=request_rate, duration=(requests + 0.5) / request_rate)
    runner.command += ["--prefix", prefix]
    return runner.start().wait(BATCH)


class PostgresMeter:
    """CPU of the whole PostgreSQL server: the postmaster, its live backends, and the ones
    that exited meanwhile (a loader keeps its connection between loads). Other clients of the
    server are counted too."""

    def __init__(self) -> None:
        self.postmaster: psutil.Process | None = None
        for process in psutil.process_iter(["name"]):
            with contextlib.suppress(psutil.Error):
                if process.info["name"] == "postgres" and process.parent().name() != "postgres":
                    self.postmaster = process
                    break

    def cpu_seconds(self) -> float:
        if self.postmaster is None:
            return math.nan
        try:
            own = self.postmaster.cpu_times()
            total = own.user + own.system + own.children_user + own.children_system
            children = self.postmaster.children(recursive=True)
        except psutil.Error:
            return math.nan
        for child in children:
            with contextlib.suppress(psutil.Error):
                times = child.cpu_times()
                total += times.user + times.system
        return total


class PostgresDatabase:
    """A database of our own on the bench's PostgreSQL server, dropped afterwards; if it cannot
    be created, the URL's own database, with this bench's schemas dropped before and after."""

    def __init__(self, url: str) -> None:
        self.admin_url = url
        self.name = f"headwater_bench_{secrets.token_hex(4)}"
        parts = urlsplit(url)
        self.url = urlunsplit(parts._replace(path=f"/{self.name}"))
        self.own = False
        self.keep = False
        self.note = ""

    def __enter__(self) -> PostgresDatabase:
        try:
            with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as connection:
                connection.execute(f'CREATE DATABASE "{self.name}"')
            self.own = True
        except psycopg.Error as error:
            self.url = self.admin_url
            self.note = f"could not create a database ({error}); using {self.admin_url} itself"
            log(f"[postgres] {self.note}")
            self.drop_schemas()
        return self

    def drop_schemas(self) -> None:
        """The bench's schemas, and Headwater's own records too in a database of the bench's."""
        schemas = (SCHEMA, RAW_SCHEMA, META_SCHEMA) if self.own else (SCHEMA, RAW_SCHEMA)
        with psycopg.connect(self.url, autocommit=True, connect_timeout=10) as connection:
            for schema in schemas:
                connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')

    def __exit__(self, *exc: object) -> None:
        if self.keep:
            return
        if not self.own:
            self.drop_schemas()
            return
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=10) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


# -- reading a warehouse back --------------------------------------------------------------


@dataclass
class Facts:
    """What a warehouse holds after a run: rows per table, and `_headwater.loads`."""

    table_rows: dict[str, int] = field(default_factory=dict)
    loads: list[tuple[float, int, int, float]] = field(default_factory=list)  # (epoch, events, rows, s)

    @property
    def rows(self) -> int:
        return sum(n for name, n in self.table_rows.items() if name not in LATEST)


def query(engine: str, target: str, sql: str) -> list[tuple[Any, ...]]:
    """Rows of one read-only query: `target` is a DuckDB file or a PostgreSQL URL."""
    if engine == "duckdb":
        connection = duckdb.connect(target, read_only=True)
        try:
            connection.execute("SET TimeZone = 'UTC'")
            return connection.execute(sql).fetchall()
        finally:
            connection.close()
    with psycopg.connect(target, autocommit=True, connect_timeout=10) as pg:
        return list(pg.execute(sql).fetchall())


def warehouse_facts(engine: str, target: str, schema: str, loads_since: float = 0.0) -> Facts:
    facts = Facts()
    if engine == "duckdb" and not Path(target).exists():
        return facts  # nothing was ever loaded
    names = query(
        engine,
        target,
        f"SELECT table_name FROM information_schema.tables WHERE table_schema = '{schema}'",
    )
    for (name,) in sorted(names):
        ((count,),) = query(engine, target, f'SELECT count(*) FROM "{schema}"."{name}"')
        facts.table_rows[name] = int(count)
    if schema == SCHEMA:
        rows = query(
            engine,
            target,
            'SELECT EXTRACT(EPOCH FROM loaded_at), events, "rows", seconds FROM _headwater.loads'
            f" WHERE EXTRACT(EPOCH FROM loaded_at) >= {loads_since} ORDER BY loaded_at",
        )
        facts.loads = [(float(t), int(e), int(r), float(s)) for t, e, r, s in rows]
    return facts


# -- 1. the backlog and its drains ---------------------------------------------------------


@dataclass
class Backlog:
    ingest: LoadResult
    stored: int
    data_dir: Path


def fill_backlog(args: argparse.Namespace, workdir: Path) -> Backlog:
    workload = mixed_workload(harness.WRITE_KEY, BATCH)
    workload_json = workload.write_json(workdir / "mixed.workload.json")
    headwater = Headwater(workdir / "backlog", args.extra_yaml).start()
    meter = harness.ProcessMeter(headwater.pid)
    try:
        log(f"[backlog] loadgen: {args.events:,} events at {args.ingest_rate:,.0f} events/s, no destination")
        with harness.CpuWindow(meter) as window:
            ingest = fill(headwater.port, workload_json, args.events, args.ingest_rate, secrets.token_hex(4))
        ingest.server_cpu_percent = window.percent
        deadline = time.monotonic() + 60
        while harness.stored_events(headwater.data_dir) < ingest.accepted_events:
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)  # every 200 is already durable; bounded anyway
    finally:
        headwater.stop()
    stored = harness.stored_events(headwater.data_dir)
    log(f"[backlog] {ingest.accepted_events:,} accepted, {stored:,} stored")
    return Backlog(ingest, stored, headwater.data_dir)


@dataclass
class Drain:
    engine: str
    backlog: int
    seconds: float = math.nan  # Headwater ready -> the API counts every event delivered
    delivered: int = 0
    facts: Facts = field(default_factory=Facts)
    cpu: dict[str, float] = field(default_factory=dict)
    polls: list[tuple[float, int, float]] = field(default_factory=list)  # (t, delivered, seconds)
    document: dict[str, Any] = field(default_factory=dict)
    ready_epoch: float = math.nan
    stopped: str = ""  # why it ended early, if it did
    profile: str = ""

    @property
    def rows(self) -> int:
        return self.facts.rows

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds and self.delivered >= self.backlog else math.nan

    @property
    def events_per_second(self) -> float:
        return self.delivered / self.seconds if self.seconds else math.nan

    @property
    def load_seconds(self) -> list[float]:
        return [s for _, _, _, s in self.facts.loads]


def run_drain(
    engine: str,
    backlog: Backlog,
    args: argparse.Namespace,
    workdir: Path,
    pg: PostgresDatabase | None,
    repeat: int = 0,
) -> Drain:
    """Headwater on a copy of the backlog with one warehouse destination, `start_from: beginning`,
    into an empty warehouse."""
    rundir = workdir / f"drain-{engine}-{repeat + 1}"
    if pg is not None and engine == "postgres":
        pg.drop_schemas()
    drain = Drain(engine, backlog.stored)
    settings: dict[str, Any] = {"batch_size": args.batch_size}
    if engine == "duckdb":
        settings["path"] = "warehouse.duckdb"
    else:
        assert pg is not None
        settings["url"] = pg.url
    headwater = Headwater(
        rundir / "headwater", destination_yaml(engine, settings, "beginning") + args.extra_yaml
    )
    headwater.data_dir.mkdir(parents=True, exist_ok=True)
    for path in backlog.data_dir.glob("log.sqlite3*"):
        shutil.copyfile(path, headwater.data_dir / path.name)
    spy = None
    pg_meter = PostgresMeter() if engine == "postgres" else None
    try:
        log(f"[drain] {engine}: {backlog.stored:,} events, batch_size {args.batch_size:,}")
        headwater.start()
        ready = time.monotonic()
        drain.ready_epoch = time.time()
        if args.profile:
            binary = harness.find_py_spy()
            if binary is None:
                drain.profile = "py-spy not found (pip install py-spy, or set PY_SPY)"
            else:
                raw = rundir / "py-spy.txt"
                spy = harness.PySpy(binary, headwater.pid, args.drain_timeout, raw, args.profile)
                spy.command.append("--subprocesses")  # a loader may run in a process of its own
                spy.start()
        pg_before = pg_meter.cpu_seconds() if pg_meter else math.nan
        with CpuMeters(headwater=headwater.pid) as cpu:
            deadline = ready + args.drain_timeout
            progressed = ready
            while True:
                asked = time.monotonic()
                document = destination_doc(headwater.port)
                now = time.monotonic()
                drain.polls.append((now - ready, document["delivered"], now - asked))
                if document["delivered"] > drain.delivered:
                    drain.delivered, progressed = document["delivered"], now
                if drain.delivered >= backlog.stored:
                    break
                if now >= deadline:
                    drain.stopped = f"TIMED OUT after {args.drain_timeout:g} s"
                    break
                if now - progressed > 120:
                    drain.stopped = f"STALLED: nothing delivered for 120 s ({document['recent_errors'][-1:]})"
                    break
                # Each poll takes the event loop the router runs on: every second until the end
                # is less than two batches or, at the rate so far, two seconds away; then every
                # --poll for a close end time.
                remaining = backlog.stored - drain.delivered
                rate = drain.delivered / max(now - ready, 1e-9)
                near = remaining <= max(2 * args.batch_size, 2.0 * rate)
                time.sleep(args.poll if near else max(args.poll, 1.0))  # bounded by the deadline
            drain.seconds = time.monotonic() - ready
            drain.document = document
        drain.cpu = dict(cpu.percent)
        if pg_meter is not None:
            drain.cpu["postgres"] = 100 * (pg_meter.cpu_seconds() - pg_before) / drain.seconds
        if spy is not None:
            drain.profile = stop_profile(spy, engine, drain.seconds, args)
    finally:
        if spy is not None and spy.process is not None and spy.process.poll() is None:
            spy.process.kill()
            spy.process.wait()
        headwater.stop()
    target = str(headwater.data_dir / "warehouse.duckdb") if engine == "duckdb" else settings["url"]
    since = 0.0 if engine == "duckdb" or (pg and pg.own) else drain.ready_epoch - 1
    drain.facts = warehouse_facts(engine, target, SCHEMA, since)
    log(
        f"[drain] {engine}: {drain.delivered:,} events, {drain.rows:,} rows in {drain.seconds:,.1f} s"
        f" ({len(drain.facts.loads)} loads)"
    )
    if not args.keep:
        shutil.rmtree(rundir, ignore_errors=True)
    return drain


def stop_profile(spy: harness.PySpy, engine: str, seconds: float, args: argparse.Namespace) -> str:
    assert spy.process is not None
    spy.process.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
    spy.wait()
    if not (spy.output.exists() and spy.output.stat().st_size):
        return f"py-spy recorded nothing (see {spy.output.with_suffix('.log')})"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = RESULTS / f"{stamp}-warehouse-{engine}-py-spy-{args.profile}.txt"
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_text(threads_per_process(spy.output.read_text(encoding="utf-8", errors="replace")))
    return "\n".join(
        [
            f"py-spy ({args.profile} mode, {harness.PYSPY_RATE} Hz) on Headwater during the {engine} drain "
            f"({seconds:,.1f} s); raw stacks: {kept}",
            "",
            harness.profile_tables(kept, seconds),
        ]
    )


def threads_per_process(raw: str) -> str:
    """py-spy --subprocesses stacks start `process PID:"command";` (a child's after its
    parent's), then `thread (0x..): name;`: fold the process into the thread's name
    (`name @PID server|child`) so that harness.profile_tables counts each process's
    threads apart."""
    out = []
    for line in raw.splitlines():
        frames = line.split(";")
        pids = []
        while frames and frames[0].startswith("process "):
            pids.append(frames.pop(0).removeprefix("process ").split(":", 1)[0].strip())
        if not pids:
            out.append(line)
            continue
        label = f"@{pids[-1]} {'server' if len(pids) == 1 else 'child'}"
        thread = frames.pop(0) if frames and frames[0].startswith("thread ") else "thread (?): ?"
        out.append(";".join([f"{thread} {label}", *frames]))
    return "\n".join(out) + "\n"


# -- 1b. the raw baseline ------------------------------------------------------------------


def stored_lines(data_dir: Path) -> list[tuple[str, bytes]]:
    """(source slug, stored JSON) for every event of the log, in log order."""
    connection = sqlite3.connect(f"file:{data_dir / 'log.sqlite3'}?mode=ro", uri=True, timeout=30)
    try:
        return connection.execute("SELECT source, payload FROM events ORDER BY position").fetchall()
    finally:
        connection.close()


def stored_messages(lines: Sequence[tuple[str, bytes]]) -> list[tuple[str, dict[str, Any]]]:
    """(source slug, message) for every event of the log, in log order, as the router reads them."""
    return [(source, orjson.loads(payload)) for source, payload in lines]


def event_tables(messages: Sequence[tuple[str, Mapping[str, Any]]]) -> list[TableRows]:
    """The rows the loader inserts (`users`/`accounts` it rebuilds by SQL instead), in the
    raw schema."""
    batches = [batch for batch in tables_for(messages) if batch.table not in LATEST]
    for batch in batches:
        batch.schema = RAW_SCHEMA
    return batches


@dataclass
class Raw:
    engine: str
    mode: str
    rows: int = 0
    events: int = 0
    seconds: float = 0.0  # the timed part: Python values -> the engine, committed
    build_seconds: float = 0.0  # of which: column lists and Arrow arrays (DuckDB) / COPY rows (PostgreSQL)
    transactions: int = 0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds else math.nan

    @property
    def events_per_second(self) -> float:
        return self.events / self.seconds if self.seconds else math.nan


def arrow_array(values: list[Any], column_type: ColumnType) -> pa.Array:
    try:
        return pa.array(values, type=ARROW[column_type])
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array(coerce(values, column_type), type=ARROW[column_type])


class RawTarget:
    """Fresh tables of the loader's columns (same DDL as Headwater's), then timed bulk loads."""

    def __init__(self, engine: str, target: str) -> None:
        self.engine = engine
        self.dialect: Dialect = DuckDBDialect() if engine == "duckdb" else PostgresDialect()
        self.duck: duckdb.DuckDBPyConnection | None = None
        self.pg: psycopg.Connection[Any] | None = None
        if engine == "duckdb":
            self.duck = duckdb.connect(target)
            self.duck.execute("SET TimeZone = 'UTC'")
        else:
            self.pg = psycopg.connect(target, connect_timeout=10)
            self.pg.execute("SET TIME ZONE 'UTC'")
        self.columns: dict[str, dict[str, ColumnType]] = {}

    def create(self, batches: Sequence[TableRows]) -> None:
        """Untimed: every table with every column any batch has (types widened as the loader would)."""
        statements = [self.dialect.create_schema(RAW_SCHEMA)]
        for batch in batches:
            columns = {"id": ColumnType.TEXT, **batch.columns, LOADED_AT: ColumnType.TIMESTAMP}
            self.columns[batch.table] = columns
            statements.append(self.dialect.create_table(RAW_SCHEMA, batch.table, columns, unique_id=True))
            if self.engine == "postgres":
                statements.append(
                    f"ALTER TABLE {self.dialect.table(RAW_SCHEMA, batch.table)} "
                    f"ALTER COLUMN {LOADED_AT} SET DEFAULT now()"
                )
        self._begin()
        for sql in statements:
            self._execute(sql)
        self._commit()

    def _begin(self) -> None:
        if self.duck is not None:
            self.duck.begin()  # psycopg begins one by itself

    def _execute(self, sql: str) -> None:
        if self.duck is not None:
            self.duck.execute(sql)
        else:
            assert self.pg is not None
            self.pg.execute(sql)

    def _commit(self) -> None:
        if self.duck is not None:
            self.duck.commit()
        else:
            assert self.pg is not None
            self.pg.commit()

    def load(self, batches: Sequence[TableRows], raw: Raw) -> None:
        """One transaction: every batch's rows, column-wise (tables_for's column lists), values
        as they are (timestamps as text, cast by the engine); `coerce`d into the column's type
        only where Arrow refuses one."""
        started = time.perf_counter()
        self._begin()
        for batch in batches:
            known = self.columns[batch.table]
            names = list(dict.fromkeys(("id", *batch.columns)))
            built = time.perf_counter()
            columns = getattr(batch, "values", None) or {}  # tables_for's column lists, if it makes them
            values = {
                name: columns[name] if name in columns else [row.get(name) for row in batch.rows]
                for name in names
            }
            target = self.dialect.table(RAW_SCHEMA, batch.table)
            quoted = ", ".join(self.dialect.quote(name) for name in names)
            if self.duck is not None:
                stage = pa.table({name: arrow_array(values[name], known[name]) for name in names})
                raw.build_seconds += time.perf_counter() - built
                self.duck.register("raw_stage", stage)
                self.duck.execute(
                    f"INSERT INTO {target} ({quoted}, {LOADED_AT}) SELECT *, current_timestamp FROM raw_stage"
                )
                self.duck.unregister("raw_stage")
            else:
                assert self.pg is not None
                raw.build_seconds += time.perf_counter() - built
                with self.pg.cursor() as cursor, cursor.copy(f"COPY {target} ({quoted}) FROM STDIN") as copy:
                    for row in zip(*values.values(), strict=True):
                        copy.write_row(row)
            raw.rows += len(batch.rows)
        self._commit()
        raw.transactions += 1
        raw.seconds += time.perf_counter() - started

    def drop(self) -> None:
        self._begin()
        self._execute(f"DROP SCHEMA IF EXISTS {self.dialect.quote(RAW_SCHEMA)} CASCADE")
        self._commit()

    def close(self) -> None:
        if self.duck is not None:
            self.duck.close()
        if self.pg is not None:
            self.pg.close()


def run_raw(
    engine: str,
    plans: Mapping[str, list[list[TableRows]]],
    everything: list[TableRows],
    events: int,
    workdir: Path,
    pg: PostgresDatabase | None,
    repeat: int,
) -> dict[str, Raw]:
    """The same rows, raw, once per plan (one transaction per list of batches)."""
    results: dict[str, Raw] = {}
    for mode, plan in plans.items():
        log(f"[raw] {engine}: {mode} #{repeat}")
        if engine == "duckdb":
            path = workdir / "raw.duckdb"
            path.unlink(missing_ok=True)
            target = RawTarget(engine, str(path))
        else:
            assert pg is not None
            target = RawTarget(engine, pg.url)
        raw = Raw(engine, mode, events=events)
        try:
            target.create(everything)
            for batches in plan:
                target.load(batches, raw)
        finally:
            with contextlib.suppress(Exception):
                target.drop()
            target.close()
            if engine == "duckdb":
                path.unlink(missing_ok=True)
        results[mode] = raw
    return results


def median_drain(drains: Sequence[Drain]) -> Drain:
    """The drain of median speed (the slower of the two middle ones for an even count)."""
    return sorted(drains, key=lambda drain: drain.seconds)[len(drains) // 2]


def run_drains(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    backlog = fill_backlog(args, workdir)
    out: dict[str, Any] = {"ingest": backlog.ingest, "stored": backlog.stored, "engines": {}}
    if "postgres" in args.engines:
        try:
            psycopg.connect(args.postgres_url, connect_timeout=5).close()
        except psycopg.Error as error:
            out["postgres_note"] = f"NOT MEASURED: cannot connect to {args.postgres_url} ({error})"
            log(f"[postgres] {out['postgres_note']}")
            args.engines = [engine for engine in args.engines if engine != "postgres"]
    pg_context = PostgresDatabase(args.postgres_url) if "postgres" in args.engines else None
    with pg_context or contextlib.nullcontext() as pg:
        if pg is not None:
            out["postgres_database"] = pg.name if pg.own else pg.url
            out["postgres_note"] = pg.note
        if not args.engines:
            return out
        log("[raw] reading the stored messages and computing their rows (untimed)")
        begun = time.perf_counter()
        lines = stored_lines(backlog.data_dir)
        messages = stored_messages(lines)
        out["read_seconds"] = time.perf_counter() - begun
        # The bench holds every message and row at once (Headwater holds one batch): keep the
        # garbage collector from rescanning them all during the timed parts.
        gc.collect()
        gc.freeze()
        size = args.batch_size
        per_batch: list[list[TableRows]] = []
        begun = time.perf_counter()
        for start in range(0, len(messages), size):
            per_batch.append(event_tables(messages[start : start + size]))
        out["rows_seconds"] = time.perf_counter() - begun
        begun = time.perf_counter()
        for start in range(0, len(lines), size):
            piece = lines[start : start + size]
            parts_for([source for source, _ in piece], [payload for _, payload in piece])
        out["arrow_rows_seconds"] = time.perf_counter() - begun
        everything = event_tables(messages)
        gc.freeze()
        plans = {"one load": [everything], f"per {size:,} events": per_batch}
        # Engines take turns, and each drain is followed by the raw loads of its engine, so a
        # slower spell of a shared machine falls on both engines, and on a drain and its
        # baseline, alike.
        drains: dict[str, list[Drain]] = {engine: [] for engine in args.engines}
        raws: dict[str, dict[str, list[Raw]]] = {
            engine: {mode: [] for mode in plans} for engine in args.engines
        }
        try:
            for repeat in range(max(args.drain_repeats, args.raw_repeats)):
                for engine in args.engines:
                    if repeat < args.drain_repeats:
                        drains[engine].append(run_drain(engine, backlog, args, workdir, pg, repeat))
                    if repeat < args.raw_repeats:
                        loaded = run_raw(engine, plans, everything, len(messages), workdir, pg, repeat + 1)
                        for mode, raw in loaded.items():
                            raws[engine][mode].append(raw)
        finally:
            gc.unfreeze()
        for engine in args.engines:
            out["engines"][engine] = {
                "drain": median_drain(drains[engine]),
                "drains": drains[engine],
                "raw": raws[engine],
            }
        if pg is not None and args.keep:
            pg.keep = True  # leave the database for a look (its name is printed)
            log(f"[postgres] keeping {pg.url}")
    out["raw_rows"] = sum(len(batch.rows) for batch in everything)
    out["tables"] = len(everything)
    if not args.keep:
        shutil.rmtree(backlog.data_dir.parent, ignore_errors=True)
    return out


def drains_report(result: dict[str, Any], args: argparse.Namespace) -> str:
    ingest: LoadResult = result["ingest"]
    stored: int = result["stored"]
    if not result["engines"]:
        return f"\n== 1. backlog drain: nothing measured. {result.get('postgres_note', '')}"
    lines = [
        "",
        f"== 1. backlog drain: {stored:,} events ({result['raw_rows']:,} rows in {result['tables']} "
        f"tables), batch_size {args.batch_size:,}, start_from: beginning",
        "",
    ]
    headers = ["", "rows/s", "events/s", "vs raw", "seconds", "rows", "srv CPU%", "pg CPU%", "notes"]
    rows: list[list[object]] = [
        [
            "ingest, no destination (loadgen)",
            "-",
            num(ingest.events_per_second),
            "-",
            num(ingest.seconds, 1),
            "-",
            num(ingest.server_cpu_percent),
            "-",
            f"{ingest.accepted_events:,} accepted, {stored:,} stored; asked {args.ingest_rate:,.0f}/s;"
            f" p99 {ingest.latency_ms['p99']:,.0f} ms; {harness.client_note(ingest)}",
        ]
    ]
    computing = [
        (
            f"computing the rows (tables_for per {args.batch_size:,}; untimed in raw)",
            result["rows_seconds"],
            f"in this process; reading + decoding the log before it: {result['read_seconds']:.1f} s",
        ),
        (
            f"the same in Arrow, as Headwater does (parts_for per {args.batch_size:,})",
            result["arrow_rows_seconds"],
            "in this process, from the stored JSON",
        ),
    ]
    for label, seconds, note in computing:
        rows.append(
            [
                label,
                num(result["raw_rows"] / seconds),
                num(stored / seconds),
                "-",
                num(seconds, 1),
                f"{result['raw_rows']:,}",
                "-",
                "-",
                note,
            ]
        )
    verdicts: list[str] = []
    for engine, parts in result["engines"].items():
        drain: Drain = parts["drain"]
        name = ENGINE_NAMES[engine]
        base = math.nan
        for mode, raws in parts["raw"].items():
            rates = [raw.rows_per_second for raw in raws]
            typical = sorted(raws, key=lambda raw: raw.rows_per_second)[(len(raws) - 1) // 2]
            if math.isnan(base):
                base = statistics.median(rates)
            spread = f" (median of {len(raws)}: {num(min(rates))}-{num(max(rates))})" if len(raws) > 1 else ""
            rows.append(
                [
                    f"{name}: raw, {mode}",
                    num(statistics.median(rates)),
                    num(statistics.median(raw.events_per_second for raw in raws)),
                    ratio(statistics.median(rates), base),
                    num(typical.seconds, 1),
                    f"{typical.rows:,}",
                    "-",
                    "-",
                    f"{typical.transactions} transaction(s){spread}; building the values "
                    f"{100 * typical.build_seconds / typical.seconds:.0f}% of it"
                    + (" (Arrow arrays)" if engine == "duckdb" else " (rows are made in the COPY loop)"),
                ]
            )
        rows.append(
            [
                f"{name}: through Headwater",
                num(drain.rows_per_second),
                num(drain.events_per_second),
                ratio(drain.rows_per_second, base),
                num(drain.seconds, 1),
                f"{drain.rows:,}",
                num(drain.cpu.get("headwater", math.nan)),
                num(drain.cpu.get("postgres", math.nan)),
                drain_notes(drain, result["raw_rows"], parts["drains"]),
            ]
        )
        rate = drain.rows_per_second
        line = (
            f"target {name}: {num(rate)} rows/s through Headwater = {ratio(rate, base)} of raw "
            f"({num(base)} rows/s) (≥ {RATIO_TARGET:.1f}x: {harness.verdict(rate / base >= RATIO_TARGET)})"
        )
        if engine == "duckdb":
            line += f"; ≥ 50,000 rows/s: {harness.verdict(rate >= DUCKDB_ROWS_TARGET)}"
        verdicts.append(line)
    lines.append(table(headers, rows))
    lines += [
        "",
        "Headwater: rows in the warehouse's event tables (users/accounts, rebuilt by SQL, not counted) "
        "÷ seconds from 'ready' until GET /api/destinations",
        f"counts every event delivered (polled every 1 s, then every {args.poll:g} s once the end is two "
        f"batches or two seconds away); the median of {args.drain_repeats} drain(s) into an empty warehouse. "
        "raw: the same rows (tables_for's column lists)",
        "to committed, into fresh tables of the same DDL (PostgreSQL: UNIQUE (id) like Headwater's), "
        "values as they are (no `coerce`); computing the rows",
        "(tables_for) is not timed. vs raw: rows/s ÷ the median one-load raw figure.",
        "",
        *verdicts,
    ]
    if result.get("postgres_note"):
        lines.append(f"PostgreSQL: {result['postgres_note']}")
    for parts in result["engines"].values():
        if parts["drain"].profile:
            lines += ["", parts["drain"].profile]
    return "\n".join(lines)


def drain_notes(drain: Drain, raw_rows: int, drains: Sequence[Drain]) -> str:
    notes = []
    if len(drains) > 1:
        rates = [other.rows_per_second for other in drains]
        notes.append(f"median of {len(drains)} drains: {num(min(rates))}-{num(max(rates))}")
    if drain.stopped:
        notes.append(f"{drain.stopped} at {drain.delivered:,}/{drain.backlog:,}")
    if drain.rows != raw_rows:
        notes.append(f"ROWS {drain.rows:,} ≠ raw {raw_rows:,}")
    loads = drain.load_seconds
    if loads:
        busy = sum(loads)
        quarter = max(1, len(loads) // 4)
        notes.append(
            f"{len(loads)} loads; load s first {loads[0]:.2f}, median {statistics.median(loads):.2f}, "
            f"last quarter {statistics.mean(loads[-quarter:]):.2f}"
        )
        notes.append(
            f"inside Loader.load {busy:,.1f} s = {100 * busy / drain.seconds:.0f}% of the drain "
            f"({num(drain.rows / busy)} rows/s there)"
        )
        first_at = drain.facts.loads[0][0] - drain.ready_epoch
        notes.append(f"first load began {first_at:+.1f} s after ready")
    if drain.polls:
        notes.append(f"API poll {1000 * statistics.mean(p[2] for p in drain.polls):.0f} ms")
    return "; ".join(notes)


# -- 2. freshness --------------------------------------------------------------------------


def paced(port: int, workload_json: Path, rate: float, duration: float) -> LoadResult:
    """loadgen at `rate` events/s for `duration` s, as /v1/batch requests of BATCH."""
    requests = max(1, round(rate * duration / BATCH))
    request_rate = rate / BATCH
    runner = harness.Loadgen(port, workload_json, rate=request_rate, duration=(requests + 0.5) / request_rate)
    runner.command += ["--prefix", secrets.token_hex(4)]
    return runner.start().wait(BATCH)


def run_freshness(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    workload = mixed_workload(harness.WRITE_KEY, BATCH)
    workload_json = workload.write_json(workdir / "freshness.workload.json")
    rundir = workdir / "freshness"
    out: dict[str, Any] = {}
    if args.ingest_baseline:
        bare = Headwater(rundir / "bare", args.extra_yaml).start()
        try:
            log(
                f"[freshness] baseline: {args.rate:,.0f} events/s for {args.ingest_baseline:g}s, "
                "no destination"
            )
            out["bare"] = paced(bare.port, workload_json, args.rate, args.ingest_baseline)
        finally:
            bare.stop()
    yaml = destination_yaml("duckdb", {"path": "warehouse.duckdb"}, "now")  # default cadence
    headwater = Headwater(rundir / "headwater", yaml + args.extra_yaml).start()
    try:
        log(f"[freshness] {args.rate:,.0f} events/s for {args.duration:g}s, duckdb on the default cadence")
        with CpuMeters(headwater=headwater.pid) as cpu:
            ingest = paced(headwater.port, workload_json, args.rate, args.duration)
        out["ingest"] = ingest
        out["cpu"] = cpu.percent
        accepted = ingest.accepted_events
        log(f"[freshness] {accepted:,} accepted; waiting for the last load (load_every 30 s)")
        deadline = time.monotonic() + DEFAULT_LOAD_EVERY + 120
        document = destination_doc(headwater.port)
        while document["delivered"] < accepted and time.monotonic() < deadline:
            time.sleep(0.5)  # the last micro-batch waits up to load_every; bounded
            document = destination_doc(headwater.port)
        out["document"] = document
    finally:
        headwater.stop()
    target = str(headwater.data_dir / "warehouse.duckdb")
    present = (
        {name for (name,) in query("duckdb", target, "SELECT table_name FROM information_schema.tables")}
        if Path(target).exists()
        else set()
    )
    union = " UNION ALL ".join(
        f'SELECT EXTRACT(EPOCH FROM received_at), EXTRACT(EPOCH FROM uuid_ts) FROM "{SCHEMA}"."{name}"'
        for name in EVENT_TABLES
        if name in present
    )
    pairs = query("duckdb", target, union) if union else []
    out["accepted"] = accepted
    out["rows"] = len(pairs)
    out["freshness_s"] = percentiles([loaded - received for received, loaded in pairs])
    start = min((received for received, _ in pairs), default=0.0)
    windows: dict[int, list[float]] = {}
    for received, loaded in pairs:
        windows.setdefault(int((received - start) // 30) * 30, []).append(loaded - received)
    out["windows_p95_s"] = [(at, percentiles(values)["p95"]) for at, values in sorted(windows.items())]
    out["loads"] = warehouse_facts("duckdb", target, SCHEMA).loads
    if not args.keep:
        shutil.rmtree(rundir, ignore_errors=True)
    return out


def answer(result: LoadResult) -> str:
    latency = result.latency_ms
    return " / ".join(num(latency[key], 1) for key in ("p50", "p99", "max"))


def freshness_report(result: dict[str, Any], args: argparse.Namespace) -> str:
    ingest: LoadResult = result["ingest"]
    fresh = result["freshness_s"]
    document = result["document"]
    loads = result["loads"]
    events = [e for _, e, _, _ in loads]
    seconds = [s for _, _, _, s in loads]
    lines = [
        "",
        f"== 2. freshness: {args.rate:,.0f} events/s for {args.duration:g} s (/v1/batch of {BATCH}, open "
        "loop) -> duckdb, defaults (load every 30 s or 10,000 events)",
        "",
    ]

    def row(label: str, p: Mapping[str, float], n: object, what: str) -> list[object]:
        return [label, *(num(p.get(k, math.nan), 2) for k in ("p50", "p90", "p95", "p99", "max")), n, what]

    nan = math.nan
    router = {"p50": (document.get("p50_ms") or nan) / 1000, "p95": (document.get("p95_ms") or nan) / 1000}
    rows = [
        row(
            "accept -> loaded (uuid_ts - received_at)",
            fresh,
            f"{fresh['n']:,}",
            "every event, read from the warehouse",
        ),
        row("router's own figure (API)", router, "last 2,000", "GET /api/destinations p50_ms / p95_ms"),
    ]
    lines.append(table(["freshness (s)", "p50", "p90", "p95", "p99", "max", "events", "what"], rows))
    longest = max(seconds, default=nan)
    lines += [
        "",
        "p95 per 30 s of arrivals (s): "
        + ", ".join(f"{at}s {value:,.1f}" for at, value in result["windows_p95_s"]),
        f"{len(loads)} loads; events per load min {min(events, default=0):,} / median "
        f"{statistics.median(events) if events else 0:,.0f} / max {max(events, default=0):,}; load seconds "
        f"median {statistics.median(seconds) if seconds else nan:.2f}, max {longest:.2f}",
        f"accepted {result['accepted']:,}; in the warehouse {result['rows']:,}"
        + ("" if result["rows"] >= result["accepted"] else " (MISSING some: the last load did not land?)")
        + f"; API delivered {document['delivered']:,}, lag {document['lag']}",
        f"ingest answer p50 / p99 / max {answer(ingest)} ms with the warehouse loading"
        + (
            f", {answer(result['bare'])} ms without a destination (same rate, own run)"
            if "bare" in result
            else ""
        )
        + f"; headwater CPU {num(result['cpu']['headwater'])}%; loadgen notes: {harness.client_note(ingest)}",
        "uuid_ts is the load transaction's start; its rows are queryable at its commit, at most the "
        "load's seconds later (the longest is above).",
        "",
        f"target: p95 {fresh['p95']:,.1f} s (+ longest load {longest:.1f} s = "
        f"{fresh['p95'] + longest:,.1f} s) "
        f"(≤ 60 s: {harness.verdict(fresh['p95'] + longest <= FRESHNESS_TARGET)})",
    ]
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------


def as_json(value: Any) -> Any:
    if isinstance(value, LoadResult):
        return {
            **{k: v for k, v in vars(value).items() if k != "extra"},
            "events_per_second": value.events_per_second,
        }
    if isinstance(value, Drain | Raw | Facts):
        return {k: as_json(v) for k, v in vars(value).items()} | {
            k: as_json(getattr(value, k))
            for k in ("rows_per_second", "events_per_second", "rows")
            if hasattr(type(value), k)
        }
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    available, why = harness.headwater_available()
    if not available:
        print(f"Headwater not runnable ({why}); nothing to measure")
        return
    run = harness.Run()
    workdir = Path(tempfile.mkdtemp(prefix="headwater-warehouse-bench-"))
    log(f"working in {workdir}")
    results: dict[str, Any] = {}
    try:
        if args.only in (None, "drain"):
            results["drain"] = run_drains(args, workdir)
        if args.only in (None, "freshness"):
            results["freshness"] = run_freshness(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(run.header("Headwater warehouse bench"))
    if "drain" in results:
        print(drains_report(results["drain"], args))
    if "freshness" in results:
        print(freshness_report(results["freshness"], args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(TypeError):
            args.json.write_text(json.dumps(as_json(results), indent=2) + "\n")
            print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
