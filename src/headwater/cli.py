"""The `headwater` command: serve, and look at what arrived (events, tail)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import orjson
import typer
from rich.table import Table

from headwater.deliver import commands
from headwater.deliver.replay import ReplayFilter
from headwater.log import EventLog, EventQuery, StoredEvent, StoredQuarantine, open_log
from headwater.settings import (
    ConfigError,
    Settings,
    Workspace,
    load_workspace,
    write_default_workspace,
)
from headwater.terminal import console, errors, fail
from headwater.warehouse import commands as warehouse_commands

app = typer.Typer(
    help="Headwater: a Segment-compatible event API on a durable log.",
    no_args_is_help=True,
    add_completion=False,
)

DEFAULT_CONFIG = Path("headwater.yaml")
DEFAULT_DATA_DIR = Path("headwater-data")

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Workspace file. Default: ./headwater.yaml if present, else DATA_DIR/headwater.yaml.",
    ),
]
DataDirOption = Annotated[Path, typer.Option("--data-dir", "-d", help="Where the log and all state live.")]
SourceOption = Annotated[str | None, typer.Option("--source", help="Only this source (slug).")]
TypeOption = Annotated[
    str | None, typer.Option("--type", "-t", help="Only this type: track, identify, page, ...")
]
UserOption = Annotated[str | None, typer.Option("--user", "-u", help="Only this userId or anonymousId.")]
JsonOption = Annotated[bool, typer.Option("--json", help="One JSON object per line, exactly as stored.")]


def main() -> None:
    app()


def _resolve_config(config: Path | None, data_dir: Path) -> tuple[Path, bool]:
    """(the workspace file to use, whether this call created it)."""
    if config is not None:
        if not config.exists():
            raise fail(f"{config}: no such workspace file (omit --config to create one)")
        return config, False
    if DEFAULT_CONFIG.exists():
        return DEFAULT_CONFIG, False
    generated = data_dir / "headwater.yaml"
    if generated.exists():
        return generated, False
    write_default_workspace(generated)
    return generated, True


def load_settings(
    config: Path | None, data_dir: Path, *, host: str = "127.0.0.1", port: int = 8080
) -> tuple[Settings, bool]:
    path, created = _resolve_config(config, data_dir)
    try:
        workspace = load_workspace(path)
    except ConfigError as error:
        raise fail(str(error)) from None
    settings = Settings(data_dir=data_dir, host=host, port=port, config_path=path, workspace=workspace)
    return settings, created


def _reading_settings(config: Path | None, data_dir: Path) -> Settings:
    """Settings for tools that only read: never create a workspace or a log."""
    path = config or (DEFAULT_CONFIG if DEFAULT_CONFIG.exists() else data_dir / "headwater.yaml")
    workspace = Workspace()
    if path.exists():
        try:
            workspace = load_workspace(path)
        except ConfigError as error:
            raise fail(str(error)) from None
    return Settings(data_dir=data_dir, config_path=path, workspace=workspace)


@app.command()
def serve(
    config: ConfigOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", help="Port to listen on.")] = 8080,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Run Headwater: collector, log and operations endpoints in one process."""
    import uvicorn

    from headwater import logs
    from headwater.app import Headwater
    from headwater.snippets import print_welcome

    data_dir.mkdir(parents=True, exist_ok=True)
    settings, created = load_settings(config, data_dir, host=host, port=port)
    print_welcome(console, settings, first_start=created)
    logs.configure(log_level)
    uvicorn.run(
        Headwater(settings),
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_config=None,
        lifespan="on",
        server_header=False,
    )


def _open_existing_log(config: Path | None, data_dir: Path) -> EventLog:
    log = open_log(_reading_settings(config, data_dir))
    if not log.exists():
        raise fail(f"no event log at {log.describe()}; start `headwater serve --data-dir {data_dir}` first")
    return log


@app.command()
def events(
    config: ConfigOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    source: SourceOption = None,
    type: TypeOption = None,
    user: UserOption = None,
    quarantined: Annotated[
        bool, typer.Option("--quarantined", "-q", help="Show quarantined messages instead.")
    ] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", help="How many, newest last.")] = 20,
    as_json: JsonOption = False,
) -> None:
    """Print stored messages, enriched, as the log holds them."""
    log = _open_existing_log(config, data_dir)
    query = EventQuery(source=source, type=type, user=user, limit=limit)
    if quarantined:
        held = log.query_quarantine(query)
        if as_json:
            for item in held:
                typer.echo(_quarantine_json(item))
        else:
            console.print(_quarantine_table(held))
        return
    found = log.query(query)
    if as_json:
        for event in found:
            typer.echo(event.payload.decode())
    else:
        console.print(_events_table(found))


@app.command()
def tail(
    config: ConfigOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    source: SourceOption = None,
    type: TypeOption = None,
    user: UserOption = None,
    as_json: JsonOption = False,
    interval: Annotated[float, typer.Option(help="Seconds between looks at the log.")] = 0.25,
) -> None:
    """Stream new messages as they arrive, like Segment's debugger. Ctrl-C stops."""
    log = _open_existing_log(config, data_dir)
    position = log.stats().last_position
    if not as_json:
        errors.print(f"Watching {log.describe()} for new messages (Ctrl-C to stop)")
    try:
        while True:
            batch = log.query(
                EventQuery(
                    source=source,
                    type=type,
                    user=user,
                    after_position=position,
                    limit=1000,
                    oldest_first=True,
                )
            )
            if not batch:
                time.sleep(interval)
                continue
            for event in batch:
                if as_json:
                    typer.echo(event.payload.decode())
                else:
                    console.print(_event_line(event), highlight=False)
            position = batch[-1].position
    except KeyboardInterrupt:
        return


app.add_typer(commands.destinations_app, name="destinations")
NameArgument = Annotated[str, typer.Argument(help="The destination's name in headwater.yaml.")]


def _head(settings: Settings) -> int:
    log = open_log(settings)
    return log.stats().last_position if log.exists() else 0


@commands.destinations_app.command("list")
def destinations_list(config: ConfigOption = None, data_dir: DataDirOption = DEFAULT_DATA_DIR) -> None:
    """The destinations in the workspace file."""
    commands.list_destinations(_reading_settings(config, data_dir))


@commands.destinations_app.command("status")
def destinations_status(
    name: Annotated[str | None, typer.Argument(help="One destination; all when omitted.")] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    as_json: JsonOption = False,
) -> None:
    """Delivered, retrying, dead-lettered and filtered events, latency and recent errors."""
    settings = _reading_settings(config, data_dir)
    commands.show_status(settings, name, _head(settings), as_json)


@commands.destinations_app.command("test")
def destinations_test(
    name: NameArgument, config: ConfigOption = None, data_dir: DataDirOption = DEFAULT_DATA_DIR
) -> None:
    """Send one test event and show the destination's answer."""
    commands.test_destination(_reading_settings(config, data_dir), name)


@app.command("redrive")
def redrive(
    name: NameArgument,
    ids: Annotated[list[int] | None, typer.Option("--id", help="Only these dead letters.")] = None,
    where: Annotated[
        str | None, typer.Option(help="Only messages matching a condition: 'event = \"Order Completed\"'.")
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """Send a destination's dead letters again (all, --id ones, or --where), each exactly once more."""
    commands.redrive(_reading_settings(config, data_dir), name, ids or [], where)


@app.command("replay")
def replay(
    name: NameArgument,
    source: SourceOption = None,
    event: Annotated[str | None, typer.Option(help="Only track events with this name.")] = None,
    since: Annotated[str | None, typer.Option(help="From this time (ISO-8601, UTC if no offset).")] = None,
    until: Annotated[str | None, typer.Option(help="Up to this time (exclusive).")] = None,
    rate: Annotated[int | None, typer.Option(help="At most this many events per second.")] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """Send history from the log to a destination, in order, with original timestamps."""
    settings = _reading_settings(config, data_dir)
    since_ms, until_ms = commands.parse_window(since, until)
    wanted = ReplayFilter(source=source, event=event, since_ms=since_ms, until_ms=until_ms)
    commands.run_replay(settings, name, wanted, _open_existing_log(config, data_dir), rate)


def _when(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _label(payload: dict[str, object]) -> str:
    for key in ("event", "name", "groupId", "previousId"):
        value = payload.get(key)
        if value:
            return str(value)
    return ""


def _event_line(event: StoredEvent) -> str:
    payload = orjson.loads(event.payload)
    who = event.user_id or event.anonymous_id or ""
    return (
        f"[dim]{_when(event.received_at_ms)}[/] [cyan]{event.source}[/] "
        f"[bold]{event.type:<8}[/] {_label(payload):<30} [green]{who}[/] [dim]{event.message_id}[/]"
    )


def _events_table(found: list[StoredEvent]) -> Table:
    table = Table(title=f"{len(found)} message(s), oldest first", title_justify="left")
    for column in (
        "position",
        "received (UTC)",
        "source",
        "type",
        "event / name",
        "user",
        "messageId",
    ):
        table.add_column(column, overflow="fold")
    for event in found:
        payload = orjson.loads(event.payload)
        table.add_row(
            str(event.position),
            _when(event.received_at_ms),
            event.source,
            event.type,
            _label(payload),
            event.user_id or event.anonymous_id or "",
            event.message_id,
        )
    return table


def _quarantine_json(item: StoredQuarantine) -> str:
    return orjson.dumps(
        {
            "id": item.id,
            "source": item.source,
            "receivedAt": _when(item.received_at_ms).replace(" ", "T") + "Z",
            "reason": item.reason,
            "message": orjson.Fragment(item.payload),
        }
    ).decode()


def _quarantine_table(held: list[StoredQuarantine]) -> Table:
    table = Table(title=f"{len(held)} quarantined message(s)", title_justify="left")
    for column in ("id", "received (UTC)", "source", "reason", "message"):
        table.add_column(column, overflow="fold")
    for item in held:
        table.add_row(
            str(item.id),
            _when(item.received_at_ms),
            item.source,
            item.reason,
            item.payload.decode()[:200],
        )
    return table


app.add_typer(warehouse_commands.warehouse_app, name="warehouse")
WarehouseArgument = Annotated[str | None, typer.Argument(help="One warehouse destination; all when omitted.")]


@warehouse_commands.warehouse_app.command("status")
def warehouse_status(
    name: WarehouseArgument = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    as_json: JsonOption = False,
) -> None:
    """Per warehouse: last load, loads and rows, lag, schema changes, errors."""
    settings = _reading_settings(config, data_dir)
    warehouse_commands.show_status(settings, name, _head(settings), as_json)


@warehouse_commands.warehouse_app.command("sync")
def warehouse_sync(
    name: WarehouseArgument = None,
    url: Annotated[
        str, typer.Option(help="A running `headwater serve` to ask first; without one, load here.")
    ] = "http://127.0.0.1:8080",
    config: ConfigOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
) -> None:
    """Load every waiting event now, whatever the cadence (a backfill shows a progress bar)."""
    settings = _reading_settings(config, data_dir)
    configs = warehouse_commands.warehouse_configs(settings, name)
    if warehouse_commands.sync_through_server(url, [c.name for c in configs]):
        return
    warehouse_commands.sync_here(settings, configs, _open_existing_log(config, data_dir))


@app.command("sql")
def sql(
    query: Annotated[
        str, typer.Argument(help='SQL, e.g. "SELECT event, count(*) FROM my_source.tracks GROUP BY 1"')
    ],
    warehouse: Annotated[
        str | None,
        typer.Option("--warehouse", "-w", help="Which warehouse destination (default: the first)."),
    ] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = DEFAULT_DATA_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per row.")] = False,
) -> None:
    """Query a warehouse (by default the embedded DuckDB one), read-only."""
    settings = _reading_settings(config, data_dir)
    warehouse_commands.print_result(warehouse_commands.run_query(settings, warehouse, query), as_json)
