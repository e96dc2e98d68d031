"""The loader process as a warehouse destination starts it: its memory settings arrive in
its environment, the server's own environment is left as it was, and a setting the user
made is theirs."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from headwater.warehouse.destination import DuckDBDestination
from headwater.warehouse.worker import LOADER_MEMORY, PIPE_BYTES

WAIT_SECONDS = 60.0  # a bound on a process starting, never a pause


@pytest.fixture
def destination(tmp_path: Path) -> Iterator[DuckDBDestination]:
    made = DuckDBDestination("warehouse", {}, tmp_path)
    yield made
    made.process.close()


def loader_environment(destination: DuckDBDestination) -> dict[str, str]:
    pid = destination.process.start().submit(os.getpid).result(WAIT_SECONDS)
    assert pid != os.getpid()
    return psutil.Process(pid).environ()


def tunables(environment: dict[str, str]) -> set[str]:
    """The GLIBC_TUNABLES a process started with, as far as /proc shows them: Debian's glibc
    applies every one but leaves only the first in the environment it shows."""
    shown = set(environment.get("GLIBC_TUNABLES", "").split(":")) - {""}
    assert shown, "no GLIBC_TUNABLES"
    return shown


def test_the_loader_process_keeps_freed_memory_and_the_server_is_untouched(
    destination: DuckDBDestination, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in LOADER_MEMORY:
        monkeypatch.delenv(name, raising=False)
    environment = loader_environment(destination)
    assert environment["ARROW_DEFAULT_MEMORY_POOL"] == "system"
    assert tunables(environment) <= set(LOADER_MEMORY["GLIBC_TUNABLES"].split(":"))
    assert not set(LOADER_MEMORY) & set(os.environ)


def test_a_memory_setting_of_the_users_own_is_kept(
    destination: DuckDBDestination, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    environment = loader_environment(destination)
    assert environment["ARROW_DEFAULT_MEMORY_POOL"] == "jemalloc"
    assert tunables(environment) <= set(LOADER_MEMORY["GLIBC_TUNABLES"].split(":"))
    assert os.environ["ARROW_DEFAULT_MEMORY_POOL"] == "jemalloc"
    assert "GLIBC_TUNABLES" not in os.environ


def test_batches_sent_ahead_cross_on_a_pipe_with_room_for_a_megabyte(destination: DuckDBDestination) -> None:
    destination.process.start()
    pipe = destination.process.ahead_pipe
    assert pipe is not None
    allowed = int(Path("/proc/sys/fs/pipe-max-size").read_text())
    assert fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ) == min(allowed, PIPE_BYTES) > 64 * 1024
