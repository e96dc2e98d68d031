"""`headwater warehouse status|sync` and `headwater sql`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx
import orjson
import typer
from rich.table import Table

from headwater.deliver.overview import overview
from headwater.deliver.router import DestinationWorker
from headwater.deliver.store import DeliveryStore
from headwater.destinations.registry import build
from headwater.log import EventLog
from headwater.settings import DestinationConfig, Settings
from headwater.terminal import console, fail, progress_bar
from headwater.warehouse.destination import WAREHOUSES, WarehouseDestination
from headwater.warehouse.dlt import DltDestination
from headwater.warehouse.engine import Result
from headwater.warehouse.loader import LOADS, META_SCHEMA, SCHEMA_CHANGES, STALE

warehouse_app = typer.Typer(help="See and drive the warehouse loads.", no_args_is_help=True)
# Warehouses Headwater loads itself and can query; dlt's are loaded, synced and shown too.
NATIVE_KINDS = frozenset(warehouse.kind for warehouse in WAREHOUSES)
WAREHOUSE_KINDS = NATIVE_KINDS | {DltDestination.kind}
RECENT_CHANGES = 10
SYNC_POLL_SECONDS = 0.25


def warehouse_configs(settings: Settings, name: str | None = None) -> list[DestinationConfig]:
    """The workspace's warehouse destinations (or the one named), failing with a hint if none."""
    found = [config for config in settings.workspace.destinations if config.type in WAREHOUSE_KINDS]
    if name is not None:
        found = [config for config in found if config.name == name]
    if not found:
        known = ", ".join(c.name for c in settings.workspace.destinations if c.type in WAREHOUSE_KINDS)
        wanted = f"named {name!r} " if name else ""
        raise fail(
            f"no warehouse destination {wanted}in {settings.config_path} (warehouses: {known or 'none'});"
            " add one with `type: duckdb`, `postgres`, `mysql` or `dlt` under `destinations:`"
        )
    return found


def open_warehouse(settings: Settings, config: DestinationConfig) -> WarehouseDestination | DltDestination:
    destination = build(config.type, config.name, config.settings, settings.data_dir)
    assert isinstance(destination, WarehouseDestination | DltDestination)
    return destination


def run_query(settings: Settings, name: str | None, sql: str) -> Result:
    """Run `sql` on a warehouse Headwater loads itself (the first one by default), read-only."""
    configs = warehouse_configs(settings, name)
    config = next((config for config in configs if config.type in NATIVE_KINDS), None)
    if config is None:
        through = open_warehouse(settings, configs[0])
        raise fail(
            f"{configs[0].name} loads through dlt ({through.describe()}): query it with that warehouse's"
            " own client; `headwater sql` reads the duckdb, postgres and mysql warehouses"
        )
    destination = open_warehouse(settings, config)
    assert isinstance(destination, WarehouseDestination)
    try:
        session = destination.engine.session(read_only=True)
    except FileNotFoundError as error:
        raise fail(f"{error}; send events to `headwater serve`, or run `headwater warehouse sync`") from None
    except Exception as error:
        raise fail(f"cannot open {destination.engine.describe()}: {error}") from None
    try:
        return session.query(sql)
    except Exception as error:
        raise fail(f"{config.name}: {error}".strip()) from None
    finally:
        session.close()


def print_result(result: Result, as_json: bool) -> None:
    if as_json:
        for row in result.rows:
            typer.echo(orjson.dumps(dict(zip(result.columns, row, strict=True)), default=str).decode())
        return
    table = Table(title_justify="left", caption=f"{len(result.rows)} row(s)", caption_justify="left")
    for column in result.columns:
        table.add_column(column)
    for row in result.rows:
        table.add_row(*("" if value is None else str(value) for value in row))
    console.print(table)


def _history(destination: WarehouseDestination | DltDestination) -> dict[str, Any]:
    """Loads and schema changes recorded in the warehouse itself, by this destination."""
    if isinstance(destination, DltDestination):
        return {"recorded_by": "dlt, in each dataset's _dlt_loads table"}
    dialect = destination.engine.dialect
    q = dialect.quote
    mine = f"WHERE destination = {dialect.placeholder}"
    loads = dialect.table(META_SCHEMA, LOADS)
    changes = dialect.table(META_SCHEMA, SCHEMA_CHANGES)
    try:
        session = destination.engine.session(read_only=True)
    except Exception as error:
        return {"error": f"cannot open {destination.engine.describe()}: {error}"}
    try:
        name = [destination.name]
        totals = session.query(
            f"SELECT count(*), sum({q('rows')}), sum(events) FROM {loads} {mine}", name
        ).rows[0]
        last = session.query(
            f"SELECT loaded_at, events, {q('rows')}, seconds FROM {loads} {mine}"
            " ORDER BY loaded_at DESC LIMIT 1",
            name,
        ).rows
        recent = session.query(
            f"SELECT changed_at, schema_name, table_name, column_name, {q('change')}, detail FROM {changes}"
            f" {mine} ORDER BY changed_at DESC LIMIT {RECENT_CHANGES}",
            name,
        ).rows
        widened = session.query(
            f"SELECT count(*) FROM {changes} {mine} AND {q('change')} = 'widened column'", name
        ).rows
    except Exception:
        session.close()
        return {"loads": 0, "rows": 0, "events": 0, "last_load": None, "schema_changes": [], "widened": 0}
    try:  # a warehouse an earlier release loaded has no such table until its next load
        waiting = session.query(
            f"SELECT count(*) FROM {dialect.table(META_SCHEMA, STALE)} {mine}", name
        ).rows[0][0]
    except Exception:
        waiting = 0
    finally:
        session.close()
    return {
        "loads": int(totals[0] or 0),
        "rows": int(totals[1] or 0),
        "events": int(totals[2] or 0),
        "last_load": None
        if not last
        else {"at": _iso(last[0][0]), "events": last[0][1], "rows": last[0][2], "seconds": last[0][3]},
        "schema_changes": [
            {
                "at": _iso(at),
                "schema": schema,
                "table": table,
                "column": column,
                "change": change,
                "detail": detail,
            }
            for at, schema, table, column, change, detail in recent
        ],
        "widened": int(widened[0][0] or 0),
        "latest_waiting": int(waiting or 0),
    }


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
    return str(value)


def status_documents(settings: Settings, name: str | None, head: int) -> list[dict[str, Any]]:
    configs = warehouse_configs(settings, name)
    path = settings.data_dir / "delivery.sqlite3"
    store = DeliveryStore(path) if path.exists() else None
    delivery = {document["name"]: document for document in (overview(store, configs, head) if store else [])}
    documents = []
    for config in configs:
        destination = open_warehouse(settings, config)
        moved = delivery.get(config.name, {})
        documents.append(
            {
                "name": config.name,
                "type": config.type,
                "where": destination.describe(),
                "delivered": moved.get("delivered", 0),
                "batch_size": destination.max_batch,
                "load_every_seconds": destination.linger_seconds,
                "lag": moved.get("lag"),
                "retrying": moved.get("retrying", 0),
                "dead_letters": moved.get("dead_letters", 0),
                "recent_errors": moved.get("recent_errors", []),
                **_history(destination),
            }
        )
    return documents


def show_status(settings: Settings, name: str | None, head: int, as_json: bool) -> None:
    documents = status_documents(settings, name, head)
    if as_json:
        for document in documents:
            typer.echo(orjson.dumps(document).decode())
        return
    table = Table(title="Warehouses", title_justify="left")
    for column in ("warehouse", "last load", "loads", "rows", "lag", "widened", "errors"):
        table.add_column(column)
    for document in documents:
        last = document.get("last_load")
        table.add_row(
            document["name"],
            "-" if not last else f"{last['at']} · {last['events']} events in {last['seconds']:.2f} s",
            str(document.get("loads", "-")),
            str(document.get("rows", "-")),
            "-" if document["lag"] is None else str(document["lag"]),
            str(document.get("widened", "-")),
            str(len(document["recent_errors"])) if not document.get("error") else document["error"],
        )
    console.print(table)
    for document in documents:
        changes = document.get("schema_changes") or []
        every = f"every {document['load_every_seconds']:g} s or {document['batch_size']} events"
        console.print(f"[bold]{document['name']}[/]: {document['where']}, loads {every}", highlight=False)
        if "recorded_by" in document:
            recorded = f"loads are recorded by {document['recorded_by']}"
            console.print(f"  {document['delivered']} events delivered; {recorded}", highlight=False)
        if document.get("latest_waiting"):
            console.print(
                f"  users / accounts: {document['latest_waiting']} ids wait for the backlog's last load",
                highlight=False,
            )
        if changes:
            console.print("  recent schema changes:")
        for change in changes:
            where = ".".join(part for part in (change["schema"], change["table"], change["column"]) if part)
            console.print(
                f"    {change['at']} {change['change']} {where}: {change['detail']}", highlight=False
            )
        for error in document["recent_errors"][:3]:
            when = datetime.fromtimestamp(error["at"], UTC).strftime("%H:%M:%S")
            console.print(f"  [red]{when}[/] {error['reason']}", highlight=False, soft_wrap=True)


def sync_through_server(url: str, names: Sequence[str]) -> bool:
    """Ask a running `headwater serve` to load now; False if none answers at `url`."""
    base = url.rstrip("/")
    try:
        before = {doc["name"]: doc for doc in httpx.get(f"{base}/api/destinations", timeout=5).json()}
    except httpx.TransportError:
        return False

    async def run(name: str) -> None:
        total = before.get(name, {}).get("lag") or 0
        async with httpx.AsyncClient(base_url=base, timeout=None) as client:
            request = asyncio.create_task(client.post(f"/api/destinations/{name}/sync"))
            with progress_bar(f"Loading {name}") as progress:
                task = progress.add_task(name, total=total)
                while not request.done():
                    await asyncio.wait({request}, timeout=SYNC_POLL_SECONDS)
                    documents = (await client.get("/api/destinations")).json()
                    lag = next((d["lag"] for d in documents if d["name"] == name), 0) or 0
                    progress.update(task, completed=max(0, total - lag))
                answer = request.result()
                if answer.status_code != 200:
                    raise fail(f"{name}: {answer.json().get('message', answer.text)}")
                progress.update(task, completed=total)
        console.print(f"{name}: loaded up to position {answer.json()['position']} (through {base}).")

    for name in names:
        asyncio.run(run(name))
    return True


def sync_here(settings: Settings, configs: Sequence[DestinationConfig], log: EventLog) -> None:
    """Load every waiting event now, in this process (no server running)."""
    store = DeliveryStore(settings.data_dir / "delivery.sqlite3")
    try:
        for config in configs:
            destination = open_warehouse(settings, config)
            worker = DestinationWorker(config, destination, log, store)
            worker.prepare()
            head = log.stats().last_position
            worker.flush_to = head
            started = time.perf_counter()
            with progress_bar(f"Loading {config.name}") as progress:
                task = progress.add_task(config.name, total=max(0, head - worker.position))
                asyncio.run(_drain(worker, head, partial(progress.update, task)))
            status = store.status(config.name)
            if worker.paused or worker.position < head or status.retrying:
                reason = status.recent_errors[0][1] if status.recent_errors else "the load did not finish"
                raise fail(
                    f"{config.name}: {reason} ({status.retrying} event(s) wait in the retry queue;"
                    " a running `headwater serve` retries them)"
                )
            console.print(
                f"{config.name}: loaded up to position {worker.position}"
                f" in {time.perf_counter() - started:.1f} s."
            )
    finally:
        store.close()


async def _drain(worker: DestinationWorker, head: int, update: Callable[..., None]) -> None:
    first = worker.position
    try:
        while worker.position < head and await worker.pull():
            update(completed=worker.position - first)
    finally:
        await worker.destination.close()
