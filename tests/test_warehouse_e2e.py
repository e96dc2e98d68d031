"""Warehouses end to end: real Segment SDKs → `headwater serve` → DuckDB, PostgreSQL and
MariaDB, in Segment's tables; crash safety; backfill by replay and by sync; the CLI."""

from __future__ import annotations

import json
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import httpx
import psycopg
from segment.analytics import Client
from segment.analytics.version import VERSION

from headwater.warehouse.loader import Loader
from headwater.warehouse.schema import ColumnType
from tests.e2e.test_node_sdk import send_with_node
from tests.support import HEADWATER, HeadwaterServer, free_port, stop_process
from tests.warehouses import POSTGRES_URL, Warehouse, make_warehouse

WAREHOUSE = "wh"


def destination_yaml(warehouse: Warehouse, start_from: str = "beginning", **settings: Any) -> str:
    """A warehouse destination; by default it loads only when asked (sync), never on its own."""
    merged = {"load_every": "1h", **warehouse.settings, **settings}
    return (
        "destinations:\n"
        f"  - name: {WAREHOUSE}\n"
        f"    type: {warehouse.kind}\n"
        f"    start_from: {start_from}\n"
        f"    settings: {json.dumps(merged)}\n"
    )


def sync(server: HeadwaterServer) -> int:
    answer = httpx.post(f"{server.url}/api/destinations/{WAREHOUSE}/sync", timeout=120)
    assert answer.status_code == 200, answer.text
    position: int = answer.json()["position"]
    return position


def as_utc(value: Any) -> datetime:
    """A timestamp read back from any engine (MariaDB's DATETIME has no zone: it is UTC)."""
    assert isinstance(value, datetime), f"not a timestamp: {value!r}"
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def stored_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def by_id(warehouse: Warehouse, schema: str, table: str) -> dict[str, dict[str, Any]]:
    rows = warehouse.rows(f"SELECT * FROM {warehouse.table(schema, table)}")
    return {row["id"]: row for row in rows}


def kinds(warehouse: Warehouse, schema: str, table: str) -> dict[str, ColumnType]:
    dialect = warehouse.engine.dialect
    return {name: dialect.column_type(kind) for name, kind in warehouse.columns(schema, table).items()}


def send_python(server: HeadwaterServer) -> list[dict[str, Any]]:
    """Every call of segment-analytics-python, synchronously; the messages as it built them."""
    client = Client(server.write_key, host=server.url, sync_mode=True, max_retries=0)
    results = [
        client.identify("py-user-1", {"email": "ada@example.com", "plan": "pro", "logins": 3}),
        client.track(
            anonymous_id="py-anon-1",
            event="Order Completed",
            properties={
                "total": 42.5,
                "currency": "EUR",
                "items": [{"sku": "A-1", "qty": 2}],
                "note": "café ✓",
                "gift": None,
                "shipping": {"method": "express", "days": 2},
                "event": "shadows the event column",
            },
        ),
        client.page(
            "py-user-1", "Docs", "Getting Started", {"url": "https://example.com/docs", "path": "/docs"}
        ),
        client.screen("py-user-1", "Onboarding", "Welcome", {"step": 1}),
        client.group("py-user-1", "py-group-1", {"name": "Acme", "seats": 12}),
        client.alias("py-anon-1", "py-user-1"),
    ]
    assert all(ok for ok, _ in results), results
    return [message for _, message in results]


def test_real_sdks_land_in_segment_tables(warehouse: Warehouse, tmp_path: Path) -> None:
    slug = warehouse.slug("shop")
    with HeadwaterServer(tmp_path, {slug: "shop-key"}, destination_yaml(warehouse)) as server:
        python_sent = send_python(server)
        node_sent = send_with_node(server)
        stored = {m["messageId"]: m for m in server.wait_for_events(len(python_sent) + len(node_sent))}
        sync(server)

    assert {"tracks", "order_completed", "identifies", "users", "pages", "screens", "groups"} | {
        "accounts",
        "aliases",
    } <= warehouse.tables(slug)
    identify, track, page, screen, group, alias = (m["messageId"] for m in python_sent)

    identifies = by_id(warehouse, slug, "identifies")
    row = identifies[identify]
    assert (row["user_id"], row["email"], row["plan"], row["logins"]) == (
        "py-user-1",
        "ada@example.com",
        "pro",
        3,
    )
    assert row["context_library_name"] == "analytics-python"
    assert row["context_library_version"] == VERSION
    assert as_utc(row["timestamp"]) == stored_time(stored[identify]["timestamp"])
    assert as_utc(row["received_at"]) == stored_time(stored[identify]["receivedAt"])
    assert as_utc(row["original_timestamp"]) == stored_time(stored[identify]["originalTimestamp"])
    assert as_utc(row["uuid_ts"]) >= as_utc(row["received_at"])
    types = kinds(warehouse, slug, "identifies")
    assert types["logins"] is ColumnType.BIGINT
    assert types["timestamp"] is ColumnType.TIMESTAMP
    assert types["email"] is ColumnType.TEXT

    tracks = by_id(warehouse, slug, "tracks")
    assert (tracks[track]["event"], tracks[track]["event_text"]) == ("order_completed", "Order Completed")
    assert tracks[track]["anonymous_id"] == "py-anon-1"
    assert tracks[track]["user_id"] is None
    order = by_id(warehouse, slug, "order_completed")[track]
    assert order["total"] == 42.5
    assert order["currency"] == "EUR"
    assert json.loads(order["items"]) == [{"sku": "A-1", "qty": 2}]
    assert order["note"] == "café ✓"
    assert (order["shipping_method"], order["shipping_days"]) == ("express", 2)
    assert order["event"] == "order_completed"
    assert json.loads(order["reserved_properties"]) == {"event": "shadows the event column"}
    assert "gift" not in warehouse.columns(slug, "order_completed")
    types = kinds(warehouse, slug, "order_completed")
    assert (types["total"], types["items"], types["shipping_days"]) == (
        ColumnType.DOUBLE,
        ColumnType.TEXT,
        ColumnType.BIGINT,
    )

    pages = by_id(warehouse, slug, "pages")
    assert (pages[page]["name"], pages[page]["category"]) == ("Getting Started", "Docs")
    assert (pages[page]["url"], pages[page]["path"]) == ("https://example.com/docs", "/docs")
    screens = by_id(warehouse, slug, "screens")
    assert (screens[screen]["name"], screens[screen]["step"]) == ("Welcome", 1)
    groups = by_id(warehouse, slug, "groups")
    assert (groups[group]["group_id"], groups[group]["name"], groups[group]["seats"]) == (
        "py-group-1",
        "Acme",
        12,
    )
    aliases = by_id(warehouse, slug, "aliases")
    assert (aliases[alias]["previous_id"], aliases[alias]["user_id"]) == ("py-anon-1", "py-user-1")

    users = by_id(warehouse, slug, "users")
    assert (users["py-user-1"]["email"], users["py-user-1"]["logins"]) == ("ada@example.com", 3)
    assert (users["node-user-1"]["email"], users["node-user-1"]["plan"]) == ("grace@example.com", "team")
    accounts = by_id(warehouse, slug, "accounts")
    assert (accounts["py-group-1"]["name"], accounts["py-group-1"]["seats"]) == ("Acme", 12)
    assert (accounts["node-group-1"]["name"], accounts["node-group-1"]["seats"]) == ("Initech", 40)

    node_track = next(m["messageId"] for m in node_sent if m["type"] == "track")
    assert tracks[node_track]["context_library_name"] == "@segment/analytics-node"
    node_order = by_id(warehouse, slug, "order_completed")[node_track]
    assert (node_order["total"], node_order["items"]) == (42.5, "2")  # `items` widened: text here

    assert set(tracks) == {m["messageId"] for m in (*python_sent, *node_sent) if m["type"] == "track"}


def test_micro_batches_load_on_their_own_cadence(warehouse: Warehouse, tmp_path: Path) -> None:
    slug = warehouse.slug("cadence")
    extra = destination_yaml(warehouse, load_every="200ms", batch_size=50)
    with HeadwaterServer(tmp_path, {slug: "key"}, extra) as server:
        client = Client(server.write_key, host=server.url, sync_mode=True, max_retries=0)
        sent = [client.track(f"user-{n % 7}", "Signed Up", {"n": n})[1]["messageId"] for n in range(120)]
        deadline = time.monotonic() + 60
        loaded: set[str] = set()
        while time.monotonic() < deadline and loaded != set(sent):
            loaded = {row["id"] for row in _rows_if_table(warehouse, slug, "signed_up")}
            time.sleep(0.2)  # polling the warehouse for a condition, bounded by the deadline
    assert loaded == set(sent)
    loads = warehouse.rows(f"SELECT events FROM {warehouse.table('_headwater', 'loads')}")
    assert loads, "no load recorded"


def _rows_if_table(warehouse: Warehouse, schema: str, table: str) -> list[dict[str, Any]]:
    try:
        if table not in warehouse.tables(schema):
            return []
    except FileNotFoundError:  # DuckDB, before its first load
        return []
    return warehouse.rows(f"SELECT id FROM {warehouse.table(schema, table)}")


def post_batch(server: HeadwaterServer, messages: list[dict[str, Any]]) -> None:
    for start in range(0, len(messages), 100):
        answer = httpx.post(
            f"{server.url}/v1/batch",
            json={"batch": messages[start : start + 100]},
            auth=(server.write_key, ""),
            timeout=30,
        )
        assert answer.status_code == 200, answer.text


def tracks(count: int, prefix: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "track",
            "event": "Item Viewed",
            "userId": f"user-{n % 13}",
            "messageId": f"{prefix}-{n}",
            "properties": {"n": n, "sku": f"SKU-{n % 50}"},
        }
        for n in range(count)
    ]


def assert_exactly_once(warehouse: Warehouse, schema: str, expected: set[str]) -> None:
    for table in ("tracks", "item_viewed"):
        rows = warehouse.rows(f"SELECT id FROM {warehouse.table(schema, table)}")
        ids = [row["id"] for row in rows]
        assert len(ids) == len(set(ids)), f"duplicates in {table}"
        assert set(ids) == expected, f"{table}: {len(expected - set(ids))} missing"


def test_kill_9_in_the_middle_of_a_postgres_load(tmp_path: Path) -> None:
    """Deterministic: the test holds a lock that stops the load inside its transaction."""
    warehouse = make_warehouse("postgres", tmp_path)
    slug = warehouse.slug("crash")
    extra = destination_yaml(warehouse, batch_size=2000, load_every="0s")
    server = HeadwaterServer(tmp_path, {slug: "key"}, extra).start()
    try:
        first = tracks(1, "warmup")
        post_batch(server, first)
        sync(server)  # the tables exist now, so a test transaction can lock one
        with psycopg.connect(POSTGRES_URL) as blocker:
            blocker.execute(f"LOCK TABLE {warehouse.table(slug, 'tracks')} IN ACCESS EXCLUSIVE MODE")
            events = tracks(5000, "crash")
            post_batch(server, events)
            _wait_for_blocked_insert(slug)
            server.kill()  # mid-transaction: other tables are loaded, the COPY into tracks waits
            blocker.rollback()
        server.start()
        sync(server)
        assert_exactly_once(warehouse, slug, {m["messageId"] for m in first + events})
    finally:
        server.stop()
        warehouse.drop()


def _wait_for_blocked_insert(schema: str) -> None:
    """Until the server's load is inside its transaction, its write to `tracks` waiting for
    the test's lock."""
    deadline = time.monotonic() + 60
    with psycopg.connect(POSTGRES_URL, autocommit=True) as watcher:
        while time.monotonic() < deadline:
            waiting = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND (query LIKE %s OR query LIKE %s)",
                (f'COPY "{schema}"."tracks"%', f'INSERT INTO "{schema}"."tracks"%'),
            ).fetchone()
            if waiting and waiting[0]:
                return
            time.sleep(0.05)  # polling PostgreSQL for a condition, bounded by the deadline
    raise AssertionError("the load never reached its write to tracks")


def identifies(count: int, prefix: str) -> list[dict[str, Any]]:
    """Identifies of 13 users, each trait `n` newer than the one before."""
    start = datetime(2024, 5, 1, 12, tzinfo=UTC)
    return [
        {
            "type": "identify",
            "userId": f"user-{n % 13}",
            "messageId": f"{prefix}-{n}",
            "timestamp": (start + timedelta(seconds=n)).isoformat().replace("+00:00", "Z"),
            "traits": {"n": n},
        }
        for n in range(count)
    ]


def test_kill_9_while_loading(tmp_path: Path, warehouse: Warehouse) -> None:
    """kill -9 at whatever point back-to-back small loads of a backlog have reached (which
    leave `users` to the backlog's last load), then restart."""
    slug = warehouse.slug("crash")
    events = tracks(6000, "crash")
    traits = identifies(600, "who")
    backlog = [*events]
    for n, identify in enumerate(traits):
        backlog.insert(n * 11, identify)  # one before every ten tracks
    with HeadwaterServer(tmp_path, {slug: "key"}) as server:
        post_batch(server, backlog)
    with server.config.open("a", encoding="utf-8") as config:
        config.write(destination_yaml(warehouse, batch_size=50, load_every="0s"))
    server.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            (status,) = httpx.get(f"{server.url}/api/destinations", timeout=5).json()
            if status["delivered"] > 0:
                break
        assert 0 < status["delivered"] < len(backlog), status
        server.kill()
        server.start()
        sync(server)
        assert_exactly_once(warehouse, slug, {m["messageId"] for m in events})
        latest = {m["userId"]: m["traits"]["n"] for m in traits}  # in order of time
        assert {user: row["n"] for user, row in by_id(warehouse, slug, "users").items()} == latest
    finally:
        server.stop()


def server_files(server: HeadwaterServer) -> tuple[str, ...]:
    return ("--config", str(server.config), "--data-dir", str(server.data_dir))


def run_cli(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*HEADWATER, *args], cwd=cwd, capture_output=True, text=True, check=check, timeout=120
    )


def test_replay_backfills_a_new_warehouse(tmp_path: Path, warehouse: Warehouse) -> None:
    slug = warehouse.slug("history")
    events = tracks(2500, "old")
    with HeadwaterServer(tmp_path, {slug: "key"}) as server:
        post_batch(server, events)
    # The warehouse arrives later; `start_from: now` means only replay can bring the history.
    with server.config.open("a", encoding="utf-8") as config:
        config.write(destination_yaml(warehouse, start_from="now"))
    replayed = run_cli(tmp_path, "replay", WAREHOUSE, *server_files(server))
    assert "Replayed 2500 event(s): 2500 delivered" in replayed.stdout, replayed.stdout
    assert_exactly_once(warehouse, slug, {m["messageId"] for m in events})


def test_sync_without_a_server_backfills_with_progress(tmp_path: Path, warehouse: Warehouse) -> None:
    slug = warehouse.slug("backfill")
    events = tracks(1200, "sync")
    with HeadwaterServer(tmp_path, {slug: "key"}) as server:
        post_batch(server, events)
    with server.config.open("a", encoding="utf-8") as config:
        config.write(destination_yaml(warehouse))
    nobody = f"http://127.0.0.1:{free_port()}"
    synced = run_cli(
        tmp_path,
        "warehouse",
        "sync",
        "--url",
        nobody,
        "--config",
        str(server.config),
        "--data-dir",
        str(server.data_dir),
    )
    assert "Loading wh" in synced.stdout and "1200/1200" in synced.stdout, synced.stdout
    assert_exactly_once(warehouse, slug, {m["messageId"] for m in events})
    status = json.loads(
        run_cli(
            tmp_path,
            "warehouse",
            "status",
            "--json",
            "--config",
            str(server.config),
            "--data-dir",
            str(server.data_dir),
        ).stdout
    )
    assert status["lag"] == 0
    assert status["events"] >= 1200
    assert any(change["table"] == "item_viewed" for change in status["schema_changes"])
    assert status["latest_waiting"] == 0

    loader = Loader(warehouse.engine, WAREHOUSE)  # a backlog's load, cut short before its last
    received = {"receivedAt": "2024-05-01T12:00:05.000Z"}  # as the collector adds it
    loader.load([(slug, {**event, **received}) for event in identifies(1, "settled")])
    loader.load([(slug, {**event, **received}) for event in identifies(2, "waiting")[1:]], more_follow=True)
    status = json.loads(run_cli(tmp_path, "warehouse", "status", "--json", *server_files(server)).stdout)
    shown = run_cli(tmp_path, "warehouse", "status", *server_files(server)).stdout
    assert status["latest_waiting"] == 1
    assert "users / accounts: 1 ids wait for the backlog's last load" in shown, shown


def test_a_dlt_warehouse_syncs_shows_in_status_and_sql_says_where_to_query_it(tmp_path: Path) -> None:
    events = tracks(300, "dlt")
    with HeadwaterServer(tmp_path, {"shop": "key"}) as server:
        post_batch(server, events)
    with server.config.open("a", encoding="utf-8") as config:
        config.write(
            "destinations:\n  - name: lake\n    type: dlt\n    start_from: beginning\n"
            "    settings: {destination: duckdb, credentials: lake.duckdb, load_every: 1h}\n"
        )
    files = server_files(server)

    nobody = f"http://127.0.0.1:{free_port()}"
    synced = run_cli(tmp_path, "warehouse", "sync", "--url", nobody, *files)
    status = json.loads(run_cli(tmp_path, "warehouse", "status", "--json", *files).stdout)
    refused = run_cli(tmp_path, "sql", "SELECT 1", *files, check=False)

    assert "Loading lake" in synced.stdout and "300/300" in synced.stdout, synced.stdout
    with duckdb.connect(str(server.data_dir / "lake.duckdb"), read_only=True) as loaded:
        ids = {row[0] for row in loaded.execute("SELECT id FROM shop.item_viewed").fetchall()}
    assert ids == {m["messageId"] for m in events}
    assert (status["type"], status["lag"], status["delivered"]) == ("dlt", 0, 300)
    assert status["where"].startswith("dlt duckdb") and "_dlt_loads" in status["recorded_by"]
    assert refused.returncode != 0
    assert "lake loads through dlt" in refused.stderr + refused.stdout, refused


def test_bare_serve_loads_into_the_embedded_duckdb(tmp_path: Path) -> None:
    data_dir = tmp_path / "headwater-data"
    port = free_port()
    process = subprocess.Popen(
        [*HEADWATER, "serve", "--port", str(port)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)  # polling for the port to open, bounded by the deadline
        workspace = (data_dir / "headwater.yaml").read_text(encoding="utf-8")
        assert "type: duckdb" in workspace
        write_key = next(
            line.split(":", 1)[1].strip() for line in workspace.splitlines() if "write_key" in line
        )
        too_early = run_cli(tmp_path, "sql", "SELECT 1", check=False)
        assert too_early.returncode == 2
        assert "does not exist yet" in too_early.stderr and "headwater warehouse sync" in too_early.stderr
        client = Client(write_key, host=url, sync_mode=True, max_retries=0)
        client.track("first-user", "Hello Headwater", {"answer": 42})
        synced = run_cli(tmp_path, "warehouse", "sync", "--url", url)
        assert "loaded up to position 1" in synced.stdout, synced.stdout
    finally:
        stop_process(process)
    assert (data_dir / "warehouse.duckdb").is_file()
    answer = run_cli(tmp_path, "sql", "--json", "SELECT user_id, answer FROM my_first_source.hello_headwater")
    assert [json.loads(line) for line in answer.stdout.splitlines()] == [
        {"user_id": "first-user", "answer": 42}
    ]
    table = run_cli(tmp_path, "sql", "SELECT event_text FROM my_first_source.tracks")
    assert "Hello Headwater" in table.stdout and "1 row(s)" in table.stdout
    wrong = run_cli(tmp_path, "sql", "SELECT nope FROM my_first_source.tracks", check=False)
    assert wrong.returncode == 2
    assert "nope" in wrong.stderr


def test_the_integrations_object_still_decides_for_a_warehouse(tmp_path: Path) -> None:
    """Events that routing passes on as stored skip the parse; the others are still routed."""
    warehouse = make_warehouse("duckdb", tmp_path)
    slug = warehouse.slug("shop")
    cases = {
        "plain": None,
        "opted-out": {"wh": False},
        "all-off": {"All": False},
        "only-wh": {"All": False, "wh": True},
        "mentions-integrations": None,
    }
    batch = []
    for message_id, integrations in cases.items():
        message: dict[str, Any] = {"type": "track", "event": "Step", "userId": "u1", "messageId": message_id}
        if integrations is not None:
            message["integrations"] = integrations
        if message_id == "mentions-integrations":
            message["properties"] = {"integrations": "a property, not the routing object"}
        batch.append(message)
    with HeadwaterServer(tmp_path, {slug: "shop-key"}, destination_yaml(warehouse)) as server:
        answer = httpx.post(
            f"{server.url}/v1/batch", json={"batch": batch}, auth=("shop-key", ""), timeout=10
        )
        assert answer.status_code == 200, answer.text
        server.wait_for_events(len(batch))
        sync(server)
        counters = next(
            d for d in httpx.get(f"{server.url}/api/destinations").json() if d["name"] == WAREHOUSE
        )
    assert set(by_id(warehouse, slug, "tracks")) == {"plain", "only-wh", "mentions-integrations"}
    assert counters["filtered"] == {"integrations": 2}, counters
