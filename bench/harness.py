"""Shared machinery for the benches: servers, load generators, meters, tables.

Everything here talks to 127.0.0.1 only, starts its processes itself and bounds every
wait. Headwater is started exactly as the tests start it (tests/support.HeadwaterServer);
the ceiling is bench/ceiling_app.py on uvicorn + uvloop + httptools, one process.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import re
import resource
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support import HeadwaterServer, stop_process  # noqa: E402

PYTHON = sys.executable
BENCH = Path(__file__).resolve().parent
WRK_SCRIPT = BENCH / "wrk.lua"
LOADGEN = BENCH / "loadgen.py"
WRITE_KEY = "bench-write-key"


def log(text: str) -> None:
    """Progress on stderr, so stdout holds the tables only."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get_ok(port: int, path: str, timeout: float = 1.0) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().status == 200
    except OSError:
        return False
    finally:
        connection.close()


# -- servers -------------------------------------------------------------------------------


class CeilingServer:
    """bench/ceiling_app.py under uvicorn: the same stack as Headwater, doing nothing."""

    name = "ceiling"

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "ceiling.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> CeilingServer:
        command = [
            PYTHON, "-m", "uvicorn", "bench.ceiling_app:app",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--loop", "uvloop", "--http", "httptools",
            "--no-access-log", "--log-level", "warning",
        ]  # fmt: skip
        with self.log_path.open("ab") as output:
            self.process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT)
        wait_until_serving(self.process, self.port, "/health", self.log_path, timeout, "ceiling")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


class Headwater:
    """`python -m headwater serve` as the tests start it, with a fresh data directory."""

    name = "headwater"

    def __init__(self, workdir: Path, extra_yaml: str = "") -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.server = HeadwaterServer(workdir, {"Bench": WRITE_KEY}, extra_yaml)
        self.port = self.server.port
        self.url = self.server.url
        self.data_dir = self.server.data_dir

    def start(self, timeout: float = 30.0) -> Headwater:
        self.server.start(timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.server.process is not None
        return self.server.process.pid

    def stop(self) -> None:
        self.server.stop()


def wait_until_serving(
    process: subprocess.Popen[bytes], port: int, path: str, log_path: Path, timeout: float, what: str
) -> None:
    """Poll `path` until it answers 200; fail with the process's log if it exits or stays down."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{log_path.read_text()}")
        if http_get_ok(port, path):
            return
        time.sleep(0.05)  # polling for the port to open, bounded by the deadline
    raise TimeoutError(f"{what} not up after {timeout}s:\n{log_path.read_text()}")


def headwater_available() -> tuple[bool, str]:
    """Whether `python -m headwater serve --help` works in this checkout."""
    try:
        done = subprocess.run(
            [PYTHON, "-m", "headwater", "serve", "--help"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except subprocess.TimeoutExpired:
        return False, "`headwater serve --help` timed out"
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        return False, f"`headwater serve --help` failed: {last[0]}"
    return True, ""


def measure_headwater(ceiling_only: bool, log: Callable[[str], None]) -> bool:
    """Whether to measure Headwater besides the ceiling; says why not when it cannot run."""
    if ceiling_only:
        return False
    available, why = headwater_available()
    if not available:
        log(f"Headwater not runnable ({why}); measuring the ceiling alone")
    return available


# -- meters --------------------------------------------------------------------------------


class ProcessMeter:
    """CPU time and RSS of a server process and its children (workers, if any)."""

    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)

    def _all(self) -> list[psutil.Process]:
        try:
            return [self.process, *self.process.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for process in self._all():
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def rss_bytes(self) -> int:
        total = 0
        for process in self._all():
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return total

    def threads(self) -> int:
        return sum(p.num_threads() for p in self._all())


@dataclass
class CpuWindow:
    """Server CPU over a window: `with CpuWindow(meter) as w: ...; w.percent` (100 = 1 core)."""

    meter: ProcessMeter
    percent: float = float("nan")
    _cpu: float = 0.0
    _wall: float = 0.0

    def __enter__(self) -> CpuWindow:
        self._cpu = self.meter.cpu_seconds()
        self._wall = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.monotonic() - self._wall
        self.percent = 100.0 * (self.meter.cpu_seconds() - self._cpu) / wall if wall else 0.0


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- load generators -----------------------------------------------------------------------


@dataclass
class LoadResult:
    """What one load run achieved, from the client's side."""

    tool: str
    seconds: float
    requests: int  # completed (any status)
    ok: int  # answered 200
    ids_per_request: int
    errors: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    client_cpu_percent: float = float("nan")
    server_cpu_percent: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok_per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    @property
    def events_per_second(self) -> float:
        return self.ok_per_second * self.ids_per_request

    @property
    def accepted_events(self) -> int:
        return self.ok * self.ids_per_request

    @property
    def error_text(self) -> str:
        bad = {k: v for k, v in self.errors.items() if v}
        return ", ".join(f"{k}={v}" for k, v in sorted(bad.items())) or "-"


def run_wrk(
    url: str,
    workload_lua: Path,
    *,
    ids_per_request: int,
    duration: float,
    connections: int,
    threads: int = 1,
    meter: ProcessMeter | None = None,
) -> LoadResult:
    """Saturating load: wrk keeps `connections` requests in flight for `duration` seconds."""
    wrk = shutil.which("wrk") or "/usr/bin/wrk"
    prefix = secrets.token_hex(4)
    seconds = max(1, round(duration))
    command = [
        wrk, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
        "--timeout", "10s", "-s", str(WRK_SCRIPT), url, "--", str(workload_lua), prefix,
    ]  # fmt: skip
    before = children_cpu_seconds()
    window = CpuWindow(meter) if meter else None
    with window or contextlib.nullcontext():
        done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60)
    client_cpu = children_cpu_seconds() - before
    line = next((x for x in done.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    data = json.loads(line.removeprefix("WRKJSON "))
    wall = data["duration_us"] / 1e6
    return LoadResult(
        tool="wrk",
        seconds=wall,
        requests=data["requests"],
        ok=data["ok"],
        ids_per_request=ids_per_request,
        errors={
            "non200": data["not_ok"],
            "connect": data["connect_errors"],
            "read": data["read_errors"],
            "write": data["write_errors"],
            "timeout": data["timeouts"],
        },
        latency_ms={
            "p50": data["p50_us"] / 1000,
            "p90": data["p90_us"] / 1000,
            "p99": data["p99_us"] / 1000,
            "max": data["max_us"] / 1000,
            "mean": data["mean_us"] / 1000,
        },
        client_cpu_percent=100.0 * client_cpu / wall if wall else float("nan"),
        server_cpu_percent=window.percent if window else float("nan"),
        extra={"prefix": prefix, "connections": connections, "threads": threads},
    )


class Loadgen:
    """bench/loadgen.py as a separate process: an open-loop client at a fixed rate."""

    def __init__(
        self,
        port: int,
        workload_json: Path,
        *,
        rate: float,
        duration: float,
        max_connections: int = 64,
    ) -> None:
        self.duration = duration
        self.command = [
            PYTHON, str(LOADGEN), "--port", str(port), "--workload", str(workload_json),
            "--rate", f"{rate:.3f}", "--duration", f"{duration:.3f}",
            "--max-connections", str(max_connections),
        ]  # fmt: skip
        self.process: subprocess.Popen[str] | None = None

    def start(self) -> Loadgen:
        self.process = subprocess.Popen(
            self.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        return self

    def wait(self, ids_per_request: int) -> LoadResult:
        assert self.process is not None
        try:
            out, err = self.process.communicate(timeout=self.duration + 90)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
            raise RuntimeError(f"loadgen did not finish:\n{err}") from None
        if self.process.returncode != 0:
            raise RuntimeError(f"loadgen failed ({self.process.returncode}):\n{err}")
        data = json.loads(out.strip().splitlines()[-1])
        errors = dict(data["errors"])
        errors["non200"] = data["completed"] - data["ok"]
        wall = data["elapsed_seconds"]
        return LoadResult(
            tool="loadgen",
            seconds=wall,
            requests=data["completed"],
            ok=data["ok"],
            ids_per_request=ids_per_request,
            errors=errors,
            latency_ms=data["latency_ms"],
            client_cpu_percent=100.0 * data["client_cpu_seconds"] / wall if wall else math.nan,
            extra=data,
        )


def run_paced(
    port: int,
    workload_json: Path,
    *,
    ids_per_request: int,
    rate: float,
    duration: float,
    max_connections: int = 64,
    meter: ProcessMeter | None = None,
) -> LoadResult:
    loadgen = Loadgen(port, workload_json, rate=rate, duration=duration, max_connections=max_connections)
    window = CpuWindow(meter) if meter else None
    with window or contextlib.nullcontext():
        result = loadgen.start().wait(ids_per_request)
    if window:
        result.server_cpu_percent = window.percent
    return result


# -- the log -------------------------------------------------------------------------------


def stored_events(data_dir: Path) -> int:
    """Rows in the `events` table of DATA_DIR/log.sqlite3 (read-only)."""
    path = data_dir / "log.sqlite3"
    if not path.exists():
        raise FileNotFoundError(f"no log at {path}")
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        (count,) = connection.execute("SELECT count(*) FROM events").fetchone()
        return int(count)
    finally:
        connection.close()


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# -- profiling -----------------------------------------------------------------------------


def find_py_spy() -> str | None:
    for candidate in (
        os.environ.get("PY_SPY", ""),
        shutil.which("py-spy") or "",
        str(Path(PYTHON).parent / "py-spy"),
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


class PySpy:
    """`py-spy record --format raw --threads` on a server for a window.

    mode "cpu": samples of threads running (py-spy's default: idle threads left out);
    "gil": only the thread holding the GIL; "wall": every thread, idle or not.
    """

    MODES = {"cpu": [], "gil": ["--gil"], "wall": ["--idle"]}

    def __init__(self, binary: str, pid: int, seconds: float, output: Path, mode: str = "cpu") -> None:
        self.output = output
        self.mode = mode
        self.command = [
            binary, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds))),
            "--rate", str(PYSPY_RATE), "--format", "raw", "--output", str(output),
            "--nonblocking", "--threads", *self.MODES[mode],
        ]  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None
        self.seconds = seconds

    def start(self) -> PySpy:
        self.log = self.output.with_suffix(".log").open("wb")
        self.process = subprocess.Popen(self.command, stdout=self.log, stderr=subprocess.STDOUT)
        return self

    def wait(self) -> bool:
        assert self.process is not None
        try:
            self.process.wait(timeout=self.seconds + 60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        return self.output.exists() and self.output.stat().st_size > 0


PYSPY_RATE = 200  # samples per second per thread


@dataclass
class Profile:
    """Collapsed stacks from py-spy, aggregated per thread and per function."""

    samples: int = 0
    threads: Counter[str] = field(default_factory=Counter)
    own: Counter[tuple[str, str]] = field(default_factory=Counter)  # (thread, function)
    inclusive: Counter[tuple[str, str]] = field(default_factory=Counter)
    lines: Counter[tuple[str, str]] = field(default_factory=Counter)  # (thread, frame:line)

    @classmethod
    def read(cls, raw: Path) -> Profile:
        profile = cls()
        for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            frames = stack.split(";")
            thread = _thread_name(frames[0]) if frames[0].startswith("thread ") else "?"
            if frames[0].startswith("thread ") or frames[0].startswith("process "):
                frames = [f for f in frames[1:] if not f.startswith("process ")] or frames
            profile.samples += count
            profile.threads[thread] += count
            profile.own[(thread, _function(frames[-1]))] += count
            profile.lines[(thread, frames[-1])] += count
            for function in {_function(f) for f in frames}:
                profile.inclusive[(thread, function)] += count
        return profile


def _thread_name(frame: str) -> str:
    # "thread (0x7f...): MainThread" -> "MainThread"
    return frame.split("): ", 1)[-1].strip() or frame


def _function(frame: str) -> str:
    # "enrich (headwater/collect/messages.py:140)" -> "enrich (headwater/collect/messages.py)"
    head, sep, tail = frame.rpartition(":")
    return f"{head})" if sep and tail.rstrip(")").isdigit() else frame


def profile_tables(raw: Path, seconds: float, top: int = 12) -> str:
    """Per-thread busy share, then each thread's hottest functions and lines."""
    profile = Profile.read(raw)
    if not profile.samples:
        return f"py-spy recorded nothing (see {raw.with_suffix('.log')})"
    possible = seconds * PYSPY_RATE
    parts = [
        table(
            ["thread", "samples", "% of window"],
            [[name, f"{n:,}", f"{100 * n / possible:.0f}"] for name, n in profile.threads.most_common()],
        )
    ]
    for thread, thread_samples in profile.threads.most_common(3):
        own = [(f, n) for (t, f), n in profile.own.items() if t == thread]
        own.sort(key=lambda item: -item[1])
        parts.append("")
        parts.append(
            table(
                ["own %", "incl %", f"{thread}: function"],
                [
                    [
                        f"{100 * n / thread_samples:.1f}",
                        f"{100 * profile.inclusive[(thread, f)] / thread_samples:.1f}",
                        f,
                    ]
                    for f, n in own[:top]
                ],
            )
        )
        lines = [(f, n) for (t, f), n in profile.lines.items() if t == thread]
        lines.sort(key=lambda item: -item[1])
        parts.append(
            "  hottest lines: " + "; ".join(f"{f} {100 * n / thread_samples:.0f}%" for f, n in lines[:4])
        )
    return "\n".join(parts)


# -- output --------------------------------------------------------------------------------


NUMERIC = re.compile(r"^(-|[-+]?[\d,]*\.?\d+(x|%)?)$")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Plain-text table: numeric columns right-aligned, text columns left-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [
        len(cells) > 1 and all(NUMERIC.match(row[i]) for row in cells[1:]) for i in range(len(headers))
    ]

    def line(row: list[str]) -> str:
        return "  ".join(
            cell.rjust(width) if right else cell.ljust(width)
            for cell, width, right in zip(row, widths, numeric, strict=True)
        ).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(cells[0]), rule, *(line(row) for row in cells[1:])])


def num(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def ratio(value: float, base: float) -> str:
    if not base or math.isnan(base) or math.isnan(value):
        return "-"
    return f"{value / base:.2f}x"


def mib(value: float) -> str:
    return f"{value / 2**20:,.1f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def client_note(result: LoadResult) -> str:
    """What the load generator noticed about itself: errors, late starts, pool waits."""
    notes = [] if result.error_text == "-" else [result.error_text]
    late = result.extra.get("late_starts", 0)
    if result.requests and late > 0.01 * result.requests:
        notes.append(f"CLIENT LATE {100 * late / result.requests:.0f}%")
    waits = result.extra.get("pool_waits", 0)
    if result.requests and waits:
        notes.append(f"{100 * waits / result.requests:.1f}% waited for a connection")
    return ", ".join(notes) or "-"


def git_state() -> tuple[str, str]:
    """(the checkout's commit, an id of src/ as it is on disk: tree + uncommitted diff)."""

    def git(*words: str) -> str:
        done = subprocess.run(["git", *words], cwd=REPO, capture_output=True, text=True, timeout=10)
        return done.stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD") or "?"
        diff = git("diff", "HEAD", "--", "src")
        src = git("rev-parse", "HEAD:src") + (f"+{hash(diff)}" if diff else "")
    except (OSError, subprocess.TimeoutExpired):
        return "?", "?"
    return head + ("+dirty src" if diff else ""), src


@dataclass
class Run:
    """When and on what a bench ran, for the header its report starts with."""

    started: float = field(default_factory=time.monotonic)
    load_before: float = field(default_factory=lambda: os.getloadavg()[0])
    commit: str = ""
    src_before: str = ""

    def __post_init__(self) -> None:
        self.commit, self.src_before = git_state()

    def header(self, title: str) -> str:
        changed = "" if git_state()[1] == self.src_before else " (src/ CHANGED during the run)"
        return (
            f"{title} — {time.strftime('%Y-%m-%d %H:%M')}, commit {self.commit}{changed}, "
            f"{psutil.cpu_count()} CPUs, {time.monotonic() - self.started:,.0f} s; load average "
            f"{self.load_before:.1f} before, {os.getloadavg()[0]:.1f} after (above ~0.5 before: "
            "something else shares the machine)"
        )
