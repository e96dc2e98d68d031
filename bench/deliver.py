"""Delivery to a webhook: end-to-end latency, backlog throughput, and a failing neighbour's cost.

Three scenarios, each on fresh Headwater processes and fresh data directories, with
bench/webhook_receiver.py (raw asyncio + httptools on uvloop, its own process) as the
webhook:

  latency     loadgen holds --rate events/s (batches of --batch-size to /v1/batch, open
              loop) for --latency-duration s; a `start_from: now` webhook delivers to a
              recording receiver. Latency = receiver's arrival time - the message's
              `receivedAt` (same clock). Baselines from the same run: the ingest answer
              latency of that load, and the same load sent by loadgen straight to a
              receiver (one HTTP hop, no Headwater). Target: p95 <= 1 s.
  throughput  wrk fills a log as fast as it can with no destination (the ingest rate);
              then Headwater restarts on a copy of that log with a webhook
              (`start_from: beginning`, batch_size 100, max_in_flight 4) and the backlog
              drains: delivered over time from GET /api/destinations. Printed as a ratio to
              the ingest rate. Target: >= 20,000 events/s.
  failing     the same drain, with a second webhook on a receiver that answers 500 to
              everything (small retry_backoff). Healthy drain rate with it / without it.
              Target: < 10 % cost.

Prints figures and ratios; asserts nothing. Traffic goes to 127.0.0.1 only; every wait
and loop is bounded; every process started here is stopped here.

    .venv/bin/python bench/deliver.py                    # all three, ~4-6 minutes
    .venv/bin/python bench/deliver.py --scenarios latency --latency-duration 15
    .venv/bin/python bench/deliver.py --scenarios throughput,failing --profile
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness
from bench.harness import Headwater, LoadResult, ProcessMeter, log, num, ratio, table
from bench.payloads import batch_workload

RESULTS = Path(__file__).resolve().parent / "results"  # git-ignored
RECEIVER = Path(__file__).resolve().parent / "webhook_receiver.py"
SECRET = "bench-webhook-secret"
LATENCY_TARGET_MS = 1000.0
THROUGHPUT_TARGET = 20_000.0
COST_TARGET = 0.10


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Headwater delivery: end-to-end latency, backlog throughput, failing-neighbour cost."
    )
    parser.add_argument(
        "--scenarios",
        default="latency,throughput,failing",
        help="comma-separated: latency, throughput, failing (default all)",
    )
    parser.add_argument("--rate", type=float, default=5000.0, help="latency: events/s (default 5000)")
    parser.add_argument(
        "--latency-duration", type=float, default=30.0, help="latency: seconds of paced load (default 30)"
    )
    parser.add_argument(
        "--latency-warmup", type=float, default=3.0, help="latency: paced seconds before measuring (3)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=100, help="messages per /v1/batch request (default 100)"
    )
    parser.add_argument("--webhook-batch", type=int, default=100, help="webhook batch_size (default 100)")
    parser.add_argument("--max-in-flight", type=int, default=4, help="webhook max_in_flight (default 4)")
    parser.add_argument(
        "--backlog-seconds",
        type=float,
        default=10.0,
        help="throughput: seconds of wrk filling the log (default 10)",
    )
    parser.add_argument("--ingest-connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--repeats", type=int, default=2, help="drains of each kind, alternated (default 2)")
    parser.add_argument(
        "--drain-timeout", type=float, default=240.0, help="give up on one drain after this (240 s)"
    )
    parser.add_argument(
        "--api-poll", type=float, default=2.0, help="seconds between GET /api/destinations in a drain (2)"
    )
    parser.add_argument(
        "--idle-seconds", type=float, default=5.0, help="Headwater's CPU after each drain, idle (5)"
    )
    parser.add_argument("--retry-backoff", default="100ms", help="failing destination (default 100ms)")
    parser.add_argument("--retry-backoff-max", default="1s", help="failing destination (default 1s)")
    parser.add_argument("--no-secret", action="store_true", help="webhooks without HMAC signing")
    parser.add_argument("--extra-yaml", default="", help="YAML appended to every Headwater workspace file")
    parser.add_argument(
        "--profile",
        nargs="?",
        const="cpu",
        choices=["cpu", "gil", "wall"],
        help="py-spy record Headwater during the first drain of each kind",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - {"latency", "throughput", "failing"}
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    for name in ("latency_duration", "backlog_seconds"):
        if not 1 <= getattr(args, name) <= 3600:
            parser.error(f"--{name.replace('_', '-')} must be between 1 and 3600 seconds")
    if not 1 <= args.idle_seconds <= 60:
        parser.error("--idle-seconds must be between 1 and 60")
    if not 0.2 <= args.api_poll <= 60:
        parser.error("--api-poll must be between 0.2 and 60 seconds")
    if not 1 <= args.repeats <= 10:
        parser.error("--repeats must be between 1 and 10")
    if not 10 <= args.drain_timeout <= 3600:
        parser.error("--drain-timeout must be between 10 and 3600 seconds")
    if args.rate <= 0 or args.rate / args.batch_size > 5000:
        parser.error("--rate must be positive and at most 5000 requests/s")
    return args


# -- helpers -------------------------------------------------------------------------------


def get_json(port: int, path: str, timeout: float = 5.0) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path} answered {response.status}: {body[:200]!r}")
        return json.loads(body)
    finally:
        connection.close()


def percentiles(values: Sequence[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(fraction: float) -> float:
        if not ordered:
            return math.nan
        return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]

    return {
        "p50": at(0.50),
        "p90": at(0.90),
        "p95": at(0.95),
        "p99": at(0.99),
        "max": ordered[-1] if ordered else math.nan,
        "n": len(ordered),
    }


def iso_seconds(value: str) -> float:
    """`2026-11-29T01:43:09.123Z` -> epoch seconds."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def ms(value: float, digits: int = 1) -> str:
    return num(value, digits)


class Receiver:
    """bench/webhook_receiver.py in its own process on a free port."""

    def __init__(self, workdir: Path, name: str, *, status: int = 200, record: bool = False) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.port = harness.free_port()
        self.url = f"http://127.0.0.1:{self.port}/hook/{name}"
        self.out = workdir / f"receiver-{name}.json"
        self.log_path = workdir / f"receiver-{name}.log"
        self.command = [
            harness.PYTHON, str(RECEIVER), "--port", str(self.port), "--out", str(self.out),
            "--status", str(status), "--max-seconds", "3600",
        ] + (["--record"] if record else [])  # fmt: skip
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> Receiver:
        with self.log_path.open("ab") as output:
            self.process = subprocess.Popen(self.command, stdout=output, stderr=subprocess.STDOUT)
        harness.wait_until_serving(self.process, self.port, "/_stats", self.log_path, timeout, "receiver")
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = get_json(self.port, "/_stats")
        return result

    def stop(self) -> dict[str, Any]:
        """SIGTERM; the receiver writes what it noted and exits. Returns that."""
        if self.process is None:
            return {}
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if not self.out.exists():
            return {}
        data: dict[str, Any] = json.loads(self.out.read_bytes())
        return data


def webhook_yaml(
    name: str,
    url: str,
    args: argparse.Namespace,
    *,
    start_from: str,
    retry_backoff: str | None = None,
    retry_backoff_max: str | None = None,
) -> str:
    lines = [
        f"  - name: {name}",
        "    type: webhook",
        "    settings:",
        f'      url: "{url}"',
        f"      batch_size: {args.webhook_batch}",
        "      allow_private_addresses: true",
        "      timeout: 10s",
    ]
    if not args.no_secret:
        lines.append(f"      secret: {SECRET}")
    lines += [f"    max_in_flight: {args.max_in_flight}", f"    start_from: {start_from}"]
    if retry_backoff:
        lines.append(f"    retry_backoff: {retry_backoff}")
    if retry_backoff_max:
        lines.append(f"    retry_backoff_max: {retry_backoff_max}")
    return "\n".join(lines) + "\n"


def destinations(*entries: str) -> str:
    return "destinations:\n" + "".join(entries)


def loadgen(port: int, workload_json: Path, rate: float, duration: float, prefix: str) -> harness.Loadgen:
    runner = harness.Loadgen(port, workload_json, rate=rate, duration=duration)
    runner.command += ["--prefix", prefix]
    return runner


class CpuMeters:
    """CPU% of several processes over one window (100 = one core)."""

    def __init__(self, **pids: int) -> None:
        self.meters = {name: ProcessMeter(pid) for name, pid in pids.items()}
        self.start: dict[str, float] = {}
        self.wall = 0.0
        self.percent: dict[str, float] = {}

    def __enter__(self) -> CpuMeters:
        self.start = {name: meter.cpu_seconds() for name, meter in self.meters.items()}
        self.wall = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.percent:
            return
        wall = time.monotonic() - self.wall
        self.percent = {
            name: 100.0 * (meter.cpu_seconds() - self.start[name]) / wall if wall else math.nan
            for name, meter in self.meters.items()
        }


# -- 1. latency ----------------------------------------------------------------------------


def run_latency(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    workload = batch_workload(harness.WRITE_KEY, args.batch_size)
    workload_json = workload.write_json(workdir / "latency.workload.json")
    per = workload.ids_per_request
    request_rate = args.rate / per
    out: dict[str, Any] = {"rate": args.rate, "request_rate": request_rate, "batch": per}

    # Baseline: the same paced load straight to a receiver (one HTTP hop, no Headwater).
    hop_seconds = min(args.latency_duration, 15.0)
    direct = Receiver(workdir / "latency", "direct").start()
    try:
        log(f"[latency] baseline: loadgen {args.rate:,.0f} events/s straight to a receiver, {hop_seconds:g}s")
        hop = loadgen(direct.port, workload_json, request_rate, hop_seconds, "d1ec7000")
        out["direct"] = hop.start().wait(per)
    finally:
        direct.stop()

    receiver = Receiver(workdir / "latency", "recorder", record=True).start()
    hook = webhook_yaml("hook", receiver.url, args, start_from="now")
    headwater = Headwater(workdir / "latency" / "headwater", destinations(hook) + args.extra_yaml).start()
    warm_prefix, prefix = secrets.token_hex(4), secrets.token_hex(4)
    accepted = 0
    try:
        log(f"[latency] headwater: warm-up {args.latency_warmup:g}s at {args.rate:,.0f} events/s")
        warm = loadgen(headwater.port, workload_json, request_rate, args.latency_warmup, warm_prefix)
        accepted += warm.start().wait(per).accepted_events
        log(f"[latency] headwater: {args.rate:,.0f} events/s for {args.latency_duration:g}s")
        with CpuMeters(headwater=headwater.pid, receiver=receiver.pid) as cpu:
            paced = loadgen(headwater.port, workload_json, request_rate, args.latency_duration, prefix)
            result = paced.start().wait(per)
        accepted += result.accepted_events
        out["ingest"] = result
        out["cpu"] = cpu.percent
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and receiver.stats()["events"] < accepted:
            time.sleep(0.2)  # the last events in flight; bounded by the deadline
        out["api"] = get_json(headwater.port, "/api/destinations")[0]
    finally:
        headwater.stop()
        dump = receiver.stop()
    out["accepted_measured"] = result.accepted_events
    out.update(latency_figures(dump, prefix, request_rate, args.latency_duration))
    return out


def latency_figures(
    dump: dict[str, Any], prefix: str, request_rate: float, duration: float
) -> dict[str, Any]:
    """End-to-end figures for the messages whose id starts with `prefix`."""
    first_seen: dict[str, tuple[float, float]] = {}  # id -> (receivedAt, arrival)
    duplicates = 0
    for message_id, received_at, arrival in dump.get("messages", []):
        if not message_id.startswith(prefix) or received_at is None:
            continue
        if message_id in first_seen:
            duplicates += 1
            continue
        first_seen[message_id] = (iso_seconds(received_at), arrival)
    accept_to_receipt = [1000 * (arrival - received) for received, arrival in first_seen.values()]
    # The scheduled send time of each message, from the request counter loadgen puts in the
    # id; the schedule's start (not reported by loadgen) is the earliest receivedAt minus its
    # offset, so this is `scheduled send -> receipt` less the fastest request's own ~1 ms.
    scheduled: dict[str, float] = {
        message_id: (int(message_id[-12:], 16) - 1) / request_rate for message_id in first_seen
    }
    start = min((first_seen[m][0] - offset for m, offset in scheduled.items()), default=0.0)
    send_to_receipt = [1000 * (first_seen[m][1] - start - offset) for m, offset in scheduled.items()]
    windows: list[tuple[int, float]] = []
    width = 5.0
    for index in range(max(1, math.ceil(duration / width))):
        values = [
            1000 * (first_seen[m][1] - first_seen[m][0])
            for m, offset in scheduled.items()
            if index * width <= offset < (index + 1) * width
        ]
        if values:
            windows.append((int(index * width), percentiles(values)["p95"]))
    return {
        "received_unique": len(first_seen),
        "duplicates": duplicates,
        "accept_to_receipt_ms": percentiles(accept_to_receipt),
        "send_to_receipt_ms": percentiles(send_to_receipt),
        "windows_p95_ms": windows,
        "receiver_cpu_seconds": dump.get("cpu_seconds"),
    }


def latency_report(result: dict[str, Any], args: argparse.Namespace) -> str:
    ingest: LoadResult = result["ingest"]
    direct: LoadResult = result["direct"]
    e2e = result["accept_to_receipt_ms"]
    sent = result["send_to_receipt_ms"]
    api = result["api"]
    lines = [
        "",
        f"== 1. end-to-end latency at {args.rate:,.0f} events/s ({result['request_rate']:,.0f} "
        f"x /v1/batch of {result['batch']}/s, open loop, {args.latency_duration:g}s) -> webhook "
        f"batch_size {args.webhook_batch}, max_in_flight {args.max_in_flight}",
        "",
    ]

    def row(label: str, p: dict[str, float], n: object, note: str = "") -> list[object]:
        return [label, ms(p["p50"]), ms(p["p90"]), ms(p["p95"]), ms(p["p99"]), ms(p["max"]), n, note or "-"]

    def client(r: LoadResult) -> dict[str, float]:
        lat = r.latency_ms
        return {"p50": lat["p50"], "p90": lat["p90"], "p95": math.nan, "p99": lat["p99"], "max": lat["max"]}

    nan = math.nan
    router = {"p50": api.get("p50_ms") or nan, "p95": api.get("p95_ms") or nan}
    router.update(p90=nan, p99=nan, max=nan)
    rows = [
        row(
            "accept -> webhook receipt",
            e2e,
            f"{e2e['n']:,}",
            f"receivedAt -> arrival; p95 = {100 * e2e['p95'] / LATENCY_TARGET_MS:.1f}% of the 1 s target",
        ),
        row("scheduled send -> receipt", sent, f"{sent['n']:,}", "client's send schedule, from the ids"),
        row("router's own figure (API)", router, "last 2,000", "GET /api/destinations p50_ms / p95_ms"),
        row("baseline: ingest answer", client(ingest), f"{ingest.requests:,} req", "loadgen -> 200"),
        row(
            "baseline: one hop, no Headwater",
            client(direct),
            f"{direct.requests:,} req",
            "loadgen -> receiver, same rate",
        ),
    ]
    lines.append(table(["latency (ms)", "p50", "p90", "p95", "p99", "max", "samples", "what"], rows))
    missing = result["accepted_measured"] - result["received_unique"]
    cpu = result["cpu"]
    lines += [
        "",
        f"e2e p50 vs one hop: {ratio(e2e['p50'], direct.latency_ms['p50'])}; e2e p99 vs ingest answer "
        f"p99: {ratio(e2e['p99'], ingest.latency_ms['p99'])}",
        "e2e p95 per 5 s of the run (ms): "
        + ", ".join(f"{start}s {value:,.0f}" for start, value in result["windows_p95_ms"]),
        f"accepted {result['accepted_measured']:,}; received {result['received_unique']:,} "
        f"({'none missing' if missing <= 0 else f'{missing:,} MISSING'}); "
        f"{result['duplicates']:,} duplicate deliveries; API delivered {api['delivered']:,}, "
        f"retrying {api['retrying']}, dead letters {api['dead_letters']}, lag {api['lag']}",
        f"CPU (100 = one core): headwater {num(cpu['headwater'])}%, receiver {num(cpu['receiver'])}%, "
        f"loadgen {num(ingest.client_cpu_percent)}%; ingest notes: {harness.client_note(ingest)}",
        "",
        f"target: e2e p95 {e2e['p95']:,.0f} ms "
        f"(≤ 1,000 ms: {harness.verdict(e2e['p95'] <= LATENCY_TARGET_MS)})",
    ]
    return "\n".join(lines)


# -- 2 and 3. backlog drains ---------------------------------------------------------------


@dataclass
class Drain:
    kind: str  # "alone" or "with failing"
    repeat: int
    backlog: int
    drained: int = 0  # healthy events that reached its receiver
    seconds: float = math.nan  # Headwater ready -> the healthy receiver has every event
    rate: float = math.nan  # receiver: events/s between the arrivals of 10% and 90% of the backlog
    api_rate: float = math.nan  # /api/destinations: least-squares slope of `delivered` over time
    quarters: list[float] = field(default_factory=list)  # receiver: events/s per quarter of the backlog
    cpu: dict[str, float] = field(default_factory=dict)
    healthy: dict[str, Any] = field(default_factory=dict)
    failing: dict[str, Any] | None = None
    failing_requests: int = 0
    polls: list[tuple[float, int, float]] = field(default_factory=list)  # (t, delivered, seconds)
    timed_out: bool = False
    idle_cpu: float = math.nan  # Headwater's CPU% afterwards, nothing left to deliver
    profile: str = ""

    @property
    def poll_ms(self) -> float:
        return 1000 * statistics.mean(p[2] for p in self.polls) if self.polls else math.nan


def fill_backlog(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """wrk fills a fresh log with no destination; returns the ingest rate and the data dir."""
    workload = batch_workload(harness.WRITE_KEY, args.batch_size)
    lua = workload.write_lua(workdir / "backlog.workload.lua")
    headwater = Headwater(workdir / "backlog", args.extra_yaml).start()
    meter = ProcessMeter(headwater.pid)
    try:
        log(f"[backlog] wrk -c{args.ingest_connections} {args.backlog_seconds:g}s, no destination")
        result = harness.run_wrk(
            headwater.url,
            lua,
            ids_per_request=workload.ids_per_request,
            duration=args.backlog_seconds,
            connections=args.ingest_connections,
            meter=meter,
        )
    finally:
        headwater.stop()
    stored = harness.stored_events(headwater.data_dir)
    return {"ingest": result, "stored": stored, "data_dir": headwater.data_dir, "lua": lua}


def receiver_ceiling(args: argparse.Namespace, workdir: Path, lua: Path) -> LoadResult:
    """How fast the receiver itself takes batches over max_in_flight connections (wrk)."""
    receiver = Receiver(workdir / "ceiling", "ceiling").start()
    try:
        log(f"[backlog] receiver ceiling: wrk -c{args.max_in_flight} 5s straight to a receiver")
        return harness.run_wrk(
            receiver.url,
            lua,
            ids_per_request=args.batch_size,
            duration=5,
            connections=args.max_in_flight,
            meter=ProcessMeter(receiver.pid),
        )
    finally:
        receiver.stop()


def run_drain(
    kind: str, repeat: int, backlog: dict[str, Any], args: argparse.Namespace, workdir: Path, profile: bool
) -> Drain:
    """Headwater on a copy of the backlog with a healthy webhook (and maybe a failing one)."""
    rundir = workdir / f"drain-{kind.replace(' ', '-')}-{repeat}"
    stored: int = backlog["stored"]
    drain = Drain(kind, repeat, stored)
    healthy = Receiver(rundir, "healthy").start()
    failing = Receiver(rundir, "failing", status=500).start() if kind != "alone" else None
    entries = [webhook_yaml("healthy", healthy.url, args, start_from="beginning")]
    if failing is not None:
        entries.append(
            webhook_yaml(
                "failing",
                failing.url,
                args,
                start_from="beginning",
                retry_backoff=args.retry_backoff,
                retry_backoff_max=args.retry_backoff_max,
            )
        )
    headwater = Headwater(rundir / "headwater", destinations(*entries) + args.extra_yaml)
    headwater.data_dir.mkdir(parents=True, exist_ok=True)
    for path in Path(backlog["data_dir"]).glob("log.sqlite3*"):
        shutil.copyfile(path, headwater.data_dir / path.name)
    spy = None
    healthy_dump: dict[str, Any] = {}
    failing_dump: dict[str, Any] = {}
    try:
        log(f"[drain] {kind} #{repeat}: {stored:,} events")
        headwater.start()
        ready = time.monotonic()
        if profile:
            binary = harness.find_py_spy()
            if binary is None:
                drain.profile = "py-spy not found (pip install py-spy, or set PY_SPY)"
            else:
                raw = rundir / "py-spy.txt"
                spy = harness.PySpy(binary, headwater.pid, args.drain_timeout, raw, args.profile).start()
        pids = {"headwater": headwater.pid, "healthy rcv": healthy.pid}
        if failing is not None:
            pids["failing rcv"] = failing.pid
        documents: dict[str, Any] = {}

        def poll_api() -> None:
            nonlocal documents
            asked = time.monotonic()
            documents = {d["name"]: d for d in get_json(headwater.port, "/api/destinations", 60)}
            answered = time.monotonic()
            drain.polls.append((answered - ready, documents["healthy"]["delivered"], answered - asked))

        with CpuMeters(**pids) as cpu:
            deadline = ready + args.drain_timeout
            next_poll = ready
            while True:
                now = time.monotonic()
                if now >= next_poll:
                    poll_api()
                    next_poll = now + args.api_poll
                # The receiver's own count says when it is over: asking it costs Headwater nothing.
                if healthy.stats()["events"] >= stored:
                    drain.seconds = time.monotonic() - ready
                    break
                if now >= deadline:
                    drain.timed_out = True
                    drain.seconds = now - ready
                    break
                time.sleep(0.1)  # sampling progress, bounded by the deadline
        drain.cpu = cpu.percent
        if spy is not None:
            drain.profile = stop_profile(spy, kind, drain.seconds, args)
        settle = time.monotonic() + 30
        poll_api()
        while documents["healthy"]["delivered"] < stored and time.monotonic() < settle:
            time.sleep(0.2)  # the last round's bookkeeping, bounded
            poll_api()
        drain.healthy = documents["healthy"]
        drain.failing = documents.get("failing")
        # Nothing left to deliver: what does Headwater burn now (the failing one keeps retrying)?
        with CpuMeters(headwater=headwater.pid) as idle:
            time.sleep(args.idle_seconds)
        drain.idle_cpu = idle.percent["headwater"]
        drain.api_rate = slope([(t, d) for t, d, _ in drain.polls if 0 < d < stored])
    finally:
        if spy is not None and spy.process is not None and spy.process.poll() is None:
            spy.process.kill()
            spy.process.wait()
        headwater.stop()
        healthy_dump = healthy.stop()
        if failing is not None:
            failing_dump = failing.stop()
    arrivals = [(arrival, count) for arrival, count, _ in healthy_dump.get("requests", [])]
    drain.drained = sum(count for _, count in arrivals)
    drain.rate = crossing_rate(arrivals, stored, 0.1, 0.9)
    drain.quarters = [crossing_rate(arrivals, stored, q / 4, (q + 1) / 4) for q in range(4)]
    drain.failing_requests = len(failing_dump.get("requests", []))
    if not args.keep:
        shutil.rmtree(rundir, ignore_errors=True)
    return drain


def stop_profile(spy: harness.PySpy, kind: str, seconds: float, args: argparse.Namespace) -> str:
    assert spy.process is not None
    spy.process.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
    spy.wait()
    if not (spy.output.exists() and spy.output.stat().st_size):
        return f"py-spy recorded nothing (see {spy.output.with_suffix('.log')})"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = RESULTS / f"{stamp}-deliver-{kind.replace(' ', '-')}-py-spy-{args.profile}.txt"
    kept.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spy.output, kept)
    return "\n".join(
        [
            f"py-spy ({args.profile} mode, {harness.PYSPY_RATE} Hz) on Headwater during the drain "
            f"'{kind}' ({seconds:,.1f} s); raw stacks: {kept}",
            "",
            harness.profile_tables(kept, seconds),
        ]
    )


def crossing_rate(arrivals: list[tuple[float, int]], total: int, low: float, high: float) -> float:
    """Events/s between the arrivals that brought the count to `low` and to `high` x total.

    `low` 0 means from the first arrival."""
    count = 0
    start = end = None
    start_count = end_count = 0
    for arrival, events in arrivals:
        before = count
        count += events
        if start is None and (low == 0 or count >= low * total):
            start, start_count = arrival, (before if low == 0 else count)
        if count >= high * total:
            end, end_count = arrival, count
            break
    if start is None or end is None or end <= start:
        return math.nan
    return (end_count - start_count) / (end - start)


def slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope of (seconds, delivered)."""
    if len(points) < 2:
        return math.nan
    mean_t = statistics.mean(t for t, _ in points)
    mean_d = statistics.mean(d for _, d in points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    if not spread:
        return math.nan
    return sum((t - mean_t) * (d - mean_d) for t, d in points) / spread


def run_drains(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    backlog = fill_backlog(args, workdir)
    out: dict[str, Any] = {"ingest": backlog["ingest"], "stored": backlog["stored"]}
    out["receiver_ceiling"] = receiver_ceiling(args, workdir, backlog["lua"])
    kinds = ["alone"] + (["with failing"] if "failing" in args.scenarios else [])
    drains: list[Drain] = []
    profiled: set[str] = set()
    for repeat in range(1, args.repeats + 1):
        for kind in kinds:
            profile = bool(args.profile) and kind not in profiled
            profiled.add(kind)
            drains.append(run_drain(kind, repeat, backlog, args, workdir, profile))
    out["drains"] = drains
    if not args.keep:
        shutil.rmtree(Path(backlog["data_dir"]).parent, ignore_errors=True)
    return out


def median(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


def drains_report(result: dict[str, Any], args: argparse.Namespace) -> str:
    ingest: LoadResult = result["ingest"]
    ceiling: LoadResult = result["receiver_ceiling"]
    drains: list[Drain] = result["drains"]
    alone = [d for d in drains if d.kind == "alone"]
    with_failing = [d for d in drains if d.kind == "with failing"]
    alone_rate = median([d.rate for d in alone])
    alone_api = median([d.api_rate for d in alone])
    headers = ["", "events/s", "API ev/s", "vs ingest", "srv CPU%", "rcv CPU%", "notes"]
    lines = [
        "",
        f"== 2. backlog drain to a fast webhook (batch_size {args.webhook_batch}, max_in_flight "
        f"{args.max_in_flight}{'' if args.no_secret else ', HMAC-signed'}): {result['stored']:,} "
        f"events filled by wrk -c{args.ingest_connections} {args.backlog_seconds:g}s",
        "",
    ]
    rows: list[list[object]] = [
        [
            "ingest, no destination (wrk)",
            num(ingest.events_per_second),
            "-",
            "1.00x",
            num(ingest.server_cpu_percent),
            "-",
            f"{ingest.accepted_events:,} accepted, {result['stored']:,} stored; {ingest.error_text}",
        ],
        [
            f"receiver ceiling (wrk -c{args.max_in_flight} -> receiver)",
            num(ceiling.events_per_second),
            "-",
            ratio(ceiling.events_per_second, ingest.events_per_second),
            "-",
            num(ceiling.server_cpu_percent),
            f"the webhook alone; wrk CPU {num(ceiling.client_cpu_percent)}%",
        ],
    ]
    rows += [drain_row(d, ingest.events_per_second) for d in alone]
    lines.append(table(headers, rows))
    lines += [
        "",
        "events/s: at the receiver, between the arrivals of 10% and 90% of the backlog. API ev/s: "
        "slope of `delivered`",
        f"in GET /api/destinations, polled every {args.api_poll:g} s (each poll's time is in notes: "
        "it holds Headwater's event loop).",
        "",
        f"target: drain {alone_rate:,.0f} events/s (API {alone_api:,.0f}) = "
        f"{ratio(alone_rate, ingest.events_per_second)} of ingest "
        f"(≥ 20,000: {harness.verdict(alone_rate >= THROUGHPUT_TARGET)})",
    ]
    if with_failing:
        failing_rate = median([d.rate for d in with_failing])
        failing_api = median([d.api_rate for d in with_failing])
        cost = 1 - failing_rate / alone_rate if alone_rate else math.nan
        lines += [
            "",
            f"== 3. a failing destination's cost: a second webhook (start_from: beginning, same "
            f"backlog) on a receiver answering 500; retry_backoff {args.retry_backoff}, "
            f"retry_backoff_max {args.retry_backoff_max}",
            "",
        ]
        rows = [
            drain_row(d, alone_rate, failing=True)
            for d in sorted(drains, key=lambda d: (d.repeat, d.kind != "alone"))
        ]
        headers[3] = "vs alone"
        lines.append(table(["healthy drain", *headers[1:]], rows))
        lines += [
            "",
            f"healthy drain, median of {len(alone)} / {len(with_failing)}: alone {alone_rate:,.0f} "
            f"events/s, beside a failing destination {failing_rate:,.0f} events/s = "
            f"{ratio(failing_rate, alone_rate)} (API: {alone_api:,.0f} vs {failing_api:,.0f} = "
            f"{ratio(failing_api, alone_api)})",
            f"target: cost {100 * cost:.1f}% (< 10%: {harness.verdict(cost < COST_TARGET)})",
        ]
    for d in drains:
        if d.profile:
            lines += ["", d.profile]
    return "\n".join(lines)


def drain_row(d: Drain, base: float, failing: bool = False) -> list[object]:
    notes = [f"{d.drained:,} in {d.seconds:,.1f} s"]
    if d.timed_out:
        notes.append(f"TIMED OUT at {d.drained:,}/{d.backlog:,}")
    notes.append("by quarter " + " / ".join(num(q / 1000, 1) + "k" for q in d.quarters))
    if d.failing is not None:
        lag = d.failing.get("lag")
        notes.append(
            f"failing: {d.failing_requests / d.seconds:,.0f} req/s, retrying {d.failing['retrying']:,}, "
            f"lag {lag:,}, rcv CPU {num(d.cpu.get('failing rcv', math.nan))}%"
            if lag is not None
            else "failing: no position yet"
        )
    notes.append(f"then idle CPU {num(d.idle_cpu, 1)}%")
    held = sum(p[2] for p in d.polls) / d.seconds if d.seconds else math.nan
    notes.append(f"API polls {len(d.polls)} x {d.poll_ms:,.0f} ms = {100 * held:.0f}% of the drain")
    label = f"{d.kind} #{d.repeat}" if failing else f"drain #{d.repeat} (alone)"
    return [
        label,
        num(d.rate),
        num(d.api_rate),
        ratio(d.rate, base),
        num(d.cpu.get("headwater", math.nan)),
        num(d.cpu.get("healthy rcv", math.nan)),
        "; ".join(notes),
    ]


# -- main ----------------------------------------------------------------------------------


def as_json(value: Any) -> Any:
    if isinstance(value, LoadResult):
        return {
            **{k: v for k, v in vars(value).items() if k != "extra"},
            "events_per_second": value.events_per_second,
        }
    if isinstance(value, Drain):
        return {k: as_json(v) for k, v in vars(value).items()}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    available, why = harness.headwater_available()
    if not available:
        print(f"Headwater not runnable ({why}); nothing to measure")
        return
    run = harness.Run()
    workdir = Path(tempfile.mkdtemp(prefix="headwater-deliver-bench-"))
    log(f"working in {workdir}")
    results: dict[str, Any] = {}
    try:
        if "latency" in args.scenarios:
            results["latency"] = run_latency(args, workdir)
        if "throughput" in args.scenarios or "failing" in args.scenarios:
            results["drains"] = run_drains(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(run.header("Headwater delivery bench"))
    if "latency" in results:
        print(latency_report(results["latency"], args))
    if "drains" in results:
        print(drains_report(results["drains"], args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(TypeError):
            args.json.write_text(json.dumps(as_json(results), indent=2) + "\n")
            print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
