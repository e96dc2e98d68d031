"""A real local HTTP receiver for delivery tests: records every request, answers as told."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """`answer(request_number) -> status` decides each response (200 by default)."""

    answer: Callable[[int], int] = lambda _: 200
    hang: threading.Event = field(default_factory=threading.Event)
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.hang.is_set():
                    receiver.release.wait(60)
                    return
                with receiver.lock:
                    status = receiver.answer(len(receiver.requests))
                    receiver.requests.append(Received(self.path, dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self.release = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def delivered(self) -> list[dict[str, Any]]:
        """Every message in a 2xx request, in arrival order (batches unpacked)."""
        with self.lock:
            accepted = [request for request in self.requests if 200 <= request.status < 300]
        messages: list[dict[str, Any]] = []
        for request in accepted:
            body = request.json()
            messages.extend(body["batch"] if isinstance(body, dict) and "batch" in body else [body])
        return messages

    def wait_for(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            messages = self.delivered()
            if len(messages) >= count:
                return messages
            time.sleep(0.05)  # polling what arrived, bounded by the deadline
        raise AssertionError(f"expected {count} delivered messages, got {len(self.delivered())}")
