"""`headwater destinations list|status|test`, `headwater redrive` and `headwater replay`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import orjson
import typer
from rich.table import Table

from headwater.deliver.conditions import ConditionError, compile_condition
from headwater.deliver.overview import overview
from headwater.deliver.replay import ReplayFilter, ReplayReport, epoch_ms, history, replay
from headwater.deliver.routing import Routing
from headwater.deliver.store import DeliveryStore
from headwater.destinations.base import Delivered, Failed
from headwater.destinations.registry import build
from headwater.log import EventLog
from headwater.settings import DestinationConfig, Settings
from headwater.terminal import console, fail, progress_bar

destinations_app = typer.Typer(help="See and test where events go.", no_args_is_help=True)


def _destination(settings: Settings, name: str) -> DestinationConfig:
    for config in settings.workspace.destinations:
        if config.name == name:
            return config
    known = ", ".join(config.name for config in settings.workspace.destinations) or "none configured"
    raise fail(f"no destination named {name!r} in {settings.config_path} (destinations: {known})")


def _store(settings: Settings, *, create: bool = True) -> DeliveryStore:
    """The delivery state; a tool that only reads gets an empty one rather than a new file."""
    path = settings.data_dir / "delivery.sqlite3"
    return DeliveryStore(path if create or path.exists() else Path(":memory:"))


def list_destinations(settings: Settings) -> None:
    table = Table(title=f"{len(settings.workspace.destinations)} destination(s)", title_justify="left")
    for column in ("name", "type", "enabled", "sources", "filters", "mappings"):
        table.add_column(column)
    for config in settings.workspace.destinations:
        table.add_row(
            config.name,
            config.type,
            "yes" if config.enabled else "no",
            ", ".join(config.sources) or "all",
            str(len(config.filters)),
            str(len(config.mappings)),
        )
    console.print(table)


def show_status(settings: Settings, name: str | None, head: int, as_json: bool) -> None:
    configs = [_destination(settings, name)] if name else settings.workspace.destinations
    documents = overview(_store(settings, create=False), configs, head)
    if as_json:
        for document in documents:
            typer.echo(orjson.dumps(document).decode())
        return
    table = Table(title="Delivery", title_justify="left")
    columns = ("destination", "delivered", "retrying", "dead letters", "filtered", "p50 ms", "p95 ms", "lag")
    for column in columns:
        table.add_column(column)
    for document in documents:
        filtered = document["filtered"]
        table.add_row(
            document["name"],
            str(document["delivered"]),
            str(document["retrying"]),
            str(document["dead_letters"]),
            ", ".join(f"{reason} {count}" for reason, count in sorted(filtered.items())) or "0",
            "-" if document["p50_ms"] is None else f"{document['p50_ms']:.0f}",
            "-" if document["p95_ms"] is None else f"{document['p95_ms']:.0f}",
            "-" if document["lag"] is None else str(document["lag"]),
        )
    console.print(table)
    recent = [(document["name"], error) for document in documents for error in document["recent_errors"]]
    if recent:
        console.print("[bold]Recent errors[/]")
        for destination, error in sorted(recent, key=lambda row: row[1]["at"], reverse=True)[:10]:
            when = datetime.fromtimestamp(error["at"], UTC).strftime("%H:%M:%S")
            console.print(f"  {when} {destination}: {error['reason']}", highlight=False, soft_wrap=True)


def test_destination(settings: Settings, name: str) -> None:
    config = _destination(settings, name)
    destination = build(config.type, config.name, config.settings, settings.data_dir)
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    event = {
        "type": "track",
        "event": "Headwater Test Event",
        "userId": "headwater-test-user",
        "messageId": f"headwater-test-{int(datetime.now(UTC).timestamp() * 1000)}",
        "properties": {"test": True},
        "timestamp": now,
        "receivedAt": now,
    }
    slugs = config.sources or [source.slug for source in settings.workspace.sources] or ["headwater_test"]
    source = slugs[0]
    payload = Routing(config).route(source, event).payload
    if payload is None:
        raise fail(f"the test event does not pass {name}'s filters or mappings")

    async def send() -> None:
        try:
            (outcome,) = await destination.deliver([payload], [source])
        finally:
            await destination.close()
        if isinstance(outcome, Delivered):
            console.print(f"[green]Delivered[/] a test event to {name}.")
            return
        kind = (
            "refused (would go to dead letters)"
            if isinstance(outcome, Failed)
            else "failed (would be retried)"
        )
        console.print(f"[red]{name} {kind}:[/] {outcome.reason}", highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)

    asyncio.run(send())


def redrive(settings: Settings, name: str, ids: list[int], where: str | None) -> None:
    _destination(settings, name)
    try:
        condition = compile_condition(where) if where else None
    except ConditionError as error:
        raise fail(f"--where: {error}") from None
    moved = _store(settings).redrive(name, ids or None, condition)
    console.print(
        f"Redriving {moved} dead letter(s) of {name}: a running `headwater serve` delivers them now."
    )


def run_replay(settings: Settings, name: str, wanted: ReplayFilter, log: EventLog, rate: int | None) -> None:
    config = _destination(settings, name)
    total = sum(1 for _ in history(log, wanted))
    destination = build(config.type, config.name, config.settings, settings.data_dir)
    store = _store(settings)
    with progress_bar(f"Replaying to {name}") as progress:
        task = progress.add_task("replay", total=total)

        async def run() -> ReplayReport:
            try:
                return await replay(
                    config, destination, log, store, wanted, lambda n: progress.advance(task, n), rate
                )
            finally:
                await destination.close()

        report = asyncio.run(run())
    console.print(
        f"Replayed {report.matched} event(s): {report.delivered} delivered, {report.filtered} filtered,"
        f" {report.dead_lettered} dead-lettered."
    )


def parse_window(since: str | None, until: str | None) -> tuple[int | None, int | None]:
    try:
        return (epoch_ms(since) if since else None, epoch_ms(until) if until else None)
    except ValueError as error:
        raise fail(f"--since/--until take ISO-8601 times like 2026-11-29T10:00:00Z ({error})") from None
