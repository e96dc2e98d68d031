"""Accepted means durable: SIGKILL mid-stream loses no acknowledged message, and retries
after the restart create no duplicates."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil

from tests.support import HeadwaterServer

KEY = "test-write-key"
SENDERS = 4
ACKED_BEFORE_KILL = 40


def make_batch(sender: int, number: int) -> list[dict[str, object]]:
    return [
        {
            "type": "track",
            "userId": f"user-{sender}",
            "event": "Crash Test",
            "messageId": f"{sender}-{number}-{index}-{uuid.uuid4().hex[:8]}",
            "properties": {"number": number, "index": index},
        }
        for index in range(25)
    ]


class Sender(threading.Thread):
    """Sends batches back to back and remembers which ones got a 200."""

    def __init__(self, url: str, sender: int, acked: threading.Semaphore, stop: threading.Event):
        super().__init__(daemon=True)
        self.url, self.sender, self.acked_signal, self.stop = url, sender, acked, stop
        self.acknowledged: list[list[dict[str, object]]] = []
        self.unacknowledged: list[list[dict[str, object]]] = []

    def run(self) -> None:
        with httpx.Client(timeout=5) as client:
            number = 0
            while not self.stop.is_set():
                batch = make_batch(self.sender, number)
                number += 1
                try:
                    response = client.post(f"{self.url}/v1/batch", json={"batch": batch, "writeKey": KEY})
                except httpx.TransportError:
                    self.unacknowledged.append(batch)
                    return
                if response.status_code == 200:
                    self.acknowledged.append(batch)
                    self.acked_signal.release()
                else:
                    self.unacknowledged.append(batch)


def ids(batches: list[list[dict[str, object]]]) -> set[str]:
    return {str(message["messageId"]) for batch in batches for message in batch}


def test_sigkill_mid_stream_loses_no_acknowledged_message(tmp_path: Path) -> None:
    server = HeadwaterServer(tmp_path).start()
    acked, stop = threading.Semaphore(0), threading.Event()
    senders = [Sender(server.url, number, acked, stop) for number in range(SENDERS)]
    for sender in senders:
        sender.start()
    for _ in range(ACKED_BEFORE_KILL):
        assert acked.acquire(timeout=30), "the server stopped acknowledging batches"
    server.kill()
    stop.set()
    for sender in senders:
        sender.join(timeout=30)
        assert not sender.is_alive()

    acknowledged = ids([batch for sender in senders for batch in sender.acknowledged])
    unacknowledged = [batch for sender in senders for batch in sender.unacknowledged]
    assert len(acknowledged) >= ACKED_BEFORE_KILL * 25

    server.start()
    try:
        stored = [event["messageId"] for event in server.events()]
        assert acknowledged <= set(stored), "an acknowledged message was lost"
        assert len(stored) == len(set(stored))

        # The clients retry what they never saw acknowledged, and some of what they did.
        retries = unacknowledged + [sender.acknowledged[-1] for sender in senders]
        with httpx.Client(timeout=10) as client:
            for batch in retries:
                response = client.post(f"{server.url}/v1/batch", json={"batch": batch, "writeKey": KEY})
                assert response.status_code == 200
        after = [event["messageId"] for event in server.events()]
        assert len(after) == len(set(after)), "a retry created a duplicate"
        assert set(after) == acknowledged | ids(unacknowledged)
    finally:
        server.stop()


def log_writers(pid: int) -> list[psutil.Process]:
    """The server's log writer process (multiprocessing also runs a resource tracker)."""
    children = psutil.Process(pid).children()
    return [child for child in children if "spawn_main" in " ".join(child.cmdline())]


def test_a_dead_log_writer_is_replaced_and_nothing_acknowledged_is_lost(tmp_path: Path) -> None:
    with HeadwaterServer(tmp_path) as server:
        assert server.process is not None
        first = make_batch(0, 0)
        response = httpx.post(f"{server.url}/v1/batch", json={"batch": first, "writeKey": KEY})
        assert response.status_code == 200
        (writer,) = log_writers(server.process.pid)
        writer.kill()
        deadline = time.monotonic() + 10
        while writer.is_running() and writer.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the writer did not die"
            time.sleep(0.01)  # polling for the kill to land, bounded by the deadline
        second = make_batch(0, 1)
        with httpx.Client(timeout=10) as client:
            response = client.post(f"{server.url}/v1/batch", json={"batch": second, "writeKey": KEY})
        assert response.status_code == 200, response.text
        (replacement,) = log_writers(server.process.pid)
        assert replacement.pid != writer.pid
        assert {event["messageId"] for event in server.events()} == ids([first, second])
