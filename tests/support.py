"""Run a real `headwater serve` process for a test, and read back what it stored."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HEADWATER = [sys.executable, "-m", "headwater"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if the process has not exited within 15 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def write_workspace(path: Path, sources: dict[str, str], extra: str = "") -> Path:
    """A headwater.yaml with `sources` as {name: write_key}, plus any extra YAML text."""
    lines = ["sources:"]
    for name, key in sources.items():
        lines += [f"  - name: {name}", f"    write_key: {key}"]
    path.write_text("\n".join(lines) + "\n" + extra, encoding="utf-8")
    return path


class HeadwaterServer:
    """One `headwater serve` subprocess on a free port with its own data directory."""

    def __init__(
        self,
        tmp_path: Path,
        sources: dict[str, str] | None = None,
        extra_yaml: str = "",
    ) -> None:
        self.sources = sources or {"Test Source": "test-write-key"}
        self.write_key = next(iter(self.sources.values()))
        self.data_dir = tmp_path / "data"
        self.config = write_workspace(tmp_path / "headwater.yaml", self.sources, extra_yaml)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> HeadwaterServer:
        command = [
            *HEADWATER,
            "serve",
            "--config",
            str(self.config),
            "--data-dir",
            str(self.data_dir),
            "--port",
            str(self.port),
        ]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"headwater serve exited early:\n{self.log_path.read_text()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)  # polling for the port to open, not waiting for a result
        raise TimeoutError(f"headwater serve not healthy after {timeout}s:\n{self.log_path.read_text()}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)

    def kill(self) -> None:
        """SIGKILL: the crash the durability guarantee is about."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def __enter__(self) -> HeadwaterServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*HEADWATER, *args], capture_output=True, text=True, check=check, timeout=60)

    def events(self, *args: str) -> list[dict[str, Any]]:
        """Messages in the log, oldest first, exactly as stored (`headwater events --json`)."""
        output = self.cli(
            "events", "--data-dir", str(self.data_dir), "--json", "--limit", "1000000", *args
        ).stdout
        return [json.loads(line) for line in output.splitlines() if line.strip()]

    def quarantined(self, *args: str) -> list[dict[str, Any]]:
        """Quarantined messages: {"id", "source", "receivedAt", "reason", "message"}."""
        return self.events("--quarantined", *args)

    def wait_for_events(self, count: int, timeout: float = 30.0, *args: str) -> list[dict[str, Any]]:
        """Poll the log until `count` messages are there (clients flush asynchronously)."""
        deadline = time.monotonic() + timeout
        found: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            found = self.events(*args)
            if len(found) >= count:
                return found
            time.sleep(0.1)  # polling the log for a condition, bounded by the deadline
        raise AssertionError(f"expected {count} messages, found {len(found)}: {found}")
