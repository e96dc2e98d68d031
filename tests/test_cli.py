"""The `headwater` command as people run it: real subprocesses, real output."""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from headwater.log import EventRecord, QuarantineRecord
from headwater.log.sqlite import SqliteLog
from headwater.settings import LogSettings, load_workspace
from tests.support import HEADWATER, HeadwaterServer, free_port


def headwater(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HEADWATER, *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def prose(text: str) -> str:
    """Terminal output with line wrapping undone (words kept intact)."""
    return " ".join(text.split())


def event(
    position: int, source: str, type: str, user: str | None, anon: str | None, label: str
) -> EventRecord:
    key = "event" if type == "track" else "name"
    body = {"messageId": f"mid-{position}", "type": type, "userId": user, "anonymousId": anon, key: label}
    return EventRecord(
        source, f"mid-{position}", type, user, anon, 1_700_000_000_000 + position, json.dumps(body).encode()
    )


STORED = [
    event(1, "web", "track", "u1", None, "Signup"),
    event(2, "web", "identify", "u2", None, ""),
    event(3, "app", "track", None, "a-9", "Order"),
    event(4, "web", "page", "u1", None, "Home"),
    event(5, "app", "track", "u1", None, "Refund"),
]
HELD = QuarantineRecord("web", 1_700_000_000_000, "missing_user: needs userId", b'{"event":"Broken"}')


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A working directory whose ./data holds a log with STORED and one quarantined message."""
    cwd = tmp_path_factory.mktemp("events")
    # retention long enough that the 2023 timestamps below survive the writer's maintenance
    log = SqliteLog(cwd / "data" / "log.sqlite3", LogSettings(retention="36500d"), 86400)

    async def fill() -> None:
        await log.start()
        try:
            await log.append(STORED, [HELD])
        finally:
            await log.close()

    asyncio.run(fill())
    return cwd


def lines_of(*records: EventRecord) -> list[str]:
    return [record.payload.decode() for record in records]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), STORED),
        (("--source", "app"), [STORED[2], STORED[4]]),
        (("--type", "track"), [STORED[0], STORED[2], STORED[4]]),
        (("--user", "u1"), [STORED[0], STORED[3], STORED[4]]),
        (("--user", "a-9"), [STORED[2]]),
        (("--limit", "2"), STORED[3:]),
        (("--source", "web", "--type", "track"), [STORED[0]]),
        (("--source", "nope"), []),
    ],
)
def test_events_json_filters(filled: Path, args: tuple[str, ...], expected: list[EventRecord]) -> None:
    done = headwater("events", "--data-dir", "data", "--json", *args, cwd=filled)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == lines_of(*expected)


def test_events_table_shows_the_filtered_messages(filled: Path) -> None:
    done = headwater("events", "--data-dir", "data", "--source", "app", cwd=filled)
    assert done.returncode == 0, done.stderr
    assert "2 message(s)" in done.stdout
    for value in ("mid-3", "Order", "a-9", "mid-5", "Refund", "u1", "2023-11-14", "22:13:20.003"):
        assert value in done.stdout
    for absent in ("mid-1", "Signup", "Home"):
        assert absent not in done.stdout


def test_events_quarantined(filled: Path) -> None:
    done = headwater("events", "--data-dir", "data", "--quarantined", "--json", cwd=filled)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line) for line in done.stdout.splitlines()] == [
        {
            "id": 1,
            "source": "web",
            "receivedAt": "2023-11-14T22:13:20.000Z",
            "reason": "missing_user: needs userId",
            "message": {"event": "Broken"},
        }
    ]
    table = headwater("events", "--data-dir", "data", "-q", cwd=filled)
    assert table.returncode == 0, table.stderr
    assert "1 quarantined message(s)" in table.stdout
    assert "missing_user" in table.stdout and '{"event":"Broken"}' in table.stdout
    assert "Signup" not in table.stdout


def test_events_without_a_log_says_to_serve_first(tmp_path: Path) -> None:
    done = headwater("events", "--data-dir", "nolog", cwd=tmp_path)
    assert done.returncode == 2
    assert "start `headwater serve --data-dir nolog` first" in prose(done.stderr)
    assert list(tmp_path.iterdir()) == []  # a read-only tool creates nothing


def write_bad_config(directory: Path) -> Path:
    path = directory / "headwater.yaml"
    path.write_text("sources:\n  - name: Web\n    write_key: k1\n  - name: App\n    write_key: [1]\n")
    return path


def test_serve_with_a_bad_config_exits_2_naming_file_and_line(tmp_path: Path) -> None:
    write_bad_config(tmp_path)
    done = headwater("serve", "--config", "headwater.yaml", "--data-dir", "data", "--port", "1", cwd=tmp_path)
    assert done.returncode == 2
    assert "headwater.yaml:5:" in prose(done.stderr)
    assert "write_key" in done.stderr


def test_serve_error_keeps_a_long_config_path_intact(tmp_path: Path) -> None:
    directory = tmp_path / ("a-workspace-directory-with-a-rather-long-name-" * 2)
    directory.mkdir()
    config = write_bad_config(directory)
    done = headwater("serve", "--config", str(config), "--data-dir", "data", "--port", "1", cwd=tmp_path)
    assert done.returncode == 2
    assert f"{config}:5:" in prose(done.stderr)


def wait_healthy(process: subprocess.Popen[bytes], url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "headwater serve exited early"
        try:
            if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)  # polling for the port to open
    raise TimeoutError("headwater serve never became healthy")


def test_first_serve_creates_a_workspace_and_prints_snippets(tmp_path: Path) -> None:
    cwd, data = tmp_path / "empty", tmp_path / "data"
    cwd.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    output = tmp_path / "out.txt"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [*HEADWATER, "serve", "--data-dir", str(data), "--port", str(port)],
            cwd=cwd,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_healthy(process, url)
            (source,) = load_workspace(data / "headwater.yaml").sources
            key = source.write_key
            track = {"userId": "u1", "event": "Signed Up"}
            assert httpx.post(f"{url}/v1/track", json=track, auth=(key, "")).status_code == 200
            assert httpx.post(f"{url}/v1/track", json=track, auth=("wrong", "")).status_code == 401
        finally:
            process.terminate()
            process.wait(timeout=15)
    assert list(cwd.iterdir()) == []
    text = output.read_text()
    assert f"write key: {key}" in text
    for title in ("Python (segment-analytics-python)", "Node (@segment/analytics-node)"):
        assert title in text
    assert "Browser (@segment/analytics-next)" in text
    assert f'analytics.write_key = "{key}"\nanalytics.host = "{url}"' in text
    assert f"new Analytics({{ writeKey: '{key}', host: '{url}' }})" in text
    assert f"AnalyticsBrowser.load({{ writeKey: '{key}', cdnURL: '{url}' }})" in text


def read_lines(stream: object, into: queue.Queue[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        into.put(line)


def test_tail_json_prints_messages_sent_after_it_started(server: HeadwaterServer, tmp_path: Path) -> None:
    def send(message_id: str) -> None:
        body = {"userId": "tail-user", "event": f"Event {message_id}", "messageId": message_id}
        response = httpx.post(f"{server.url}/v1/track", json=body, auth=(server.write_key, ""))
        assert response.status_code == 200, response.text

    send("before")
    assert [e["messageId"] for e in server.events()] == ["before"]
    tail = subprocess.Popen(
        [*HEADWATER, "tail", "--data-dir", str(server.data_dir), "--json", "--interval", "0.05"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=read_lines, args=(tail.stdout, lines), daemon=True).start()
    try:
        sent: list[str] = []
        received: list[dict[str, object]] = []
        deadline = time.monotonic() + 30
        while not received and time.monotonic() < deadline:
            sent.append(f"tail-{len(sent)}")
            send(sent[-1])
            try:
                received.append(json.loads(lines.get(timeout=0.2)))
            except queue.Empty:
                assert tail.poll() is None, "headwater tail exited"
        assert received, "headwater tail printed nothing"
        first = received[0]
        assert first["messageId"] in sent
        assert (first["type"], first["userId"]) == ("track", "tail-user")
        assert first["event"] == f"Event {first['messageId']}"
        sent.append("final")
        send("final")
        while received[-1]["messageId"] != "final":
            received.append(json.loads(lines.get(timeout=max(0.0, deadline - time.monotonic()))))
        start = sent.index(str(first["messageId"]))
        assert [m["messageId"] for m in received] == sent[start:]  # in order, no gaps, no "before"
    finally:
        tail.send_signal(signal.SIGINT)
        assert tail.wait(timeout=15) == 0
