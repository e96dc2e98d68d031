"""When the log cannot take writes, clients get 503 + Retry-After and /ready says why."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx

from tests.support import HeadwaterServer

KEY = "test-write-key"
BATCH = {"batch": [{"type": "track", "userId": "u", "event": "E"}], "writeKey": KEY}


def test_low_disk_refuses_writes_with_503(tmp_path: Path) -> None:
    with HeadwaterServer(tmp_path, extra_yaml="log:\n  min_free_disk: 1000TB\n") as server:
        response = httpx.post(f"{server.url}/v1/batch", json=BATCH)
        assert response.status_code == 503
        assert response.json()["code"] == "disk_full"
        assert "min_free_disk" in response.json()["message"]
        assert int(response.headers["retry-after"]) > 0
        assert "x-ratelimit-reset" in response.headers
        ready = httpx.get(f"{server.url}/ready")
        assert ready.status_code == 503
        assert ready.json()["code"] == "disk_full"
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert server.events() == []


def test_a_write_error_answers_503_then_recovers(tmp_path: Path) -> None:
    with HeadwaterServer(tmp_path, extra_yaml="log:\n  lock_timeout: 200ms\n") as server:
        assert httpx.get(f"{server.url}/ready").json() == {"ready": True}
        blocker = sqlite3.connect(server.data_dir / "log.sqlite3", isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        try:
            response = httpx.post(f"{server.url}/v1/batch", json=BATCH)
            assert response.status_code == 503
            assert response.json()["code"] == "log_unavailable"
            assert "Retry-After" in response.headers
            ready = httpx.get(f"{server.url}/ready")
            assert ready.status_code == 503
            assert ready.json()["code"] == "log_unavailable"
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        deadline = time.monotonic() + 10
        while httpx.get(f"{server.url}/ready").status_code != 200:
            assert time.monotonic() < deadline, "never became ready again"
            time.sleep(0.1)  # polling /ready, bounded by the deadline
        assert httpx.post(f"{server.url}/v1/batch", json=BATCH).status_code == 200
        assert len(server.events()) == 1
