"""Soak: idle CPU, then memory under steady moderate load, Headwater beside the ceiling.

1. Idle: both servers up and untouched; CPU% (100 = one core) and wakeups/s (voluntary
   context switches) over --idle-seconds (default 10).
2. Load: bench/loadgen.py sends --rate events/s as batches to each server, open-loop, for
   the soak duration; RSS (process + children) is sampled every --sample-every seconds.
   Printed: first / last / max RSS and the slope (least squares, MiB per minute) over all
   samples and over the second half (past warm-up), Headwater next to the bare stack.
3. Idle again after the load: CPU% (background work that never stops shows up here).
4. Headwater is stopped and its log counted: accepted vs stored.

Prints figures; asserts nothing. Traffic goes to 127.0.0.1 only.

    .venv/bin/python bench/soak.py --quick          # ~45 s
    .venv/bin/python bench/soak.py                  # 10 minutes of load
    .venv/bin/python bench/soak.py --minutes 30 --rate 10000
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness
from bench.harness import (
    CeilingServer,
    Headwater,
    Loadgen,
    LoadResult,
    ProcessMeter,
    log,
    mib,
    num,
    table,
)
from bench.payloads import batch_workload


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Headwater soak: idle CPU, RSS under steady load, against the ceiling."
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="minutes of load (default 10)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of load; overrides --minutes")
    parser.add_argument(
        "--quick", action="store_true", help="~30 s: 5 s idle, 20 s load sampled every 2 s, 5 s idle"
    )
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--sample-every", type=float, default=10.0, help="seconds")
    parser.add_argument(
        "--rate", type=float, default=5000.0, help="events/s sent to each server (default 5,000)"
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument(
        "--ceiling-only", action="store_true", help="soak the ceiling alone (Headwater not needed)"
    )
    parser.add_argument("--extra-yaml", default="", help="YAML appended to Headwater's workspace file")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    args = parser.parse_args(argv)
    args.load_seconds = args.duration if args.duration is not None else args.minutes * 60
    if args.quick:
        args.load_seconds, args.idle_seconds, args.sample_every = 20.0, 5.0, 2.0
    if not 1 <= args.load_seconds <= 24 * 3600:
        parser.error("the load must last between 1 second and 24 hours")
    if args.sample_every <= 0 or args.rate <= 0:
        parser.error("--sample-every and --rate must be positive")
    return args


def slope_mib_per_minute(samples: list[tuple[float, int]]) -> float:
    """Least-squares slope of RSS over time."""
    if len(samples) < 2:
        return float("nan")
    n = len(samples)
    mean_t = sum(t for t, _ in samples) / n
    mean_r = sum(r for _, r in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if not var:
        return float("nan")
    cov = sum((t - mean_t) * (r - mean_r) for t, r in samples)
    return cov / var * 60 / 2**20


def idle_window(meters: dict[str, ProcessMeter], seconds: float) -> dict[str, tuple[float, float]]:
    """{name: (CPU %, voluntary context switches per second)} over one shared window."""
    before = {name: (m.cpu_seconds(), voluntary_switches(m), time.monotonic()) for name, m in meters.items()}
    time.sleep(seconds)  # the measurement itself: nothing runs, we watch
    out = {}
    for name, meter in meters.items():
        cpu, switches, start = before[name]
        wall = time.monotonic() - start
        out[name] = (
            100.0 * (meter.cpu_seconds() - cpu) / wall,
            (voluntary_switches(meter) - switches) / wall,
        )
    return out


def voluntary_switches(meter: ProcessMeter) -> int:
    total = 0
    for process in meter._all():
        try:
            total += process.num_ctx_switches().voluntary
        except harness.psutil.NoSuchProcess:
            continue
    return total


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with_headwater = harness.measure_headwater(args.ceiling_only, log)
    workdir = Path(tempfile.mkdtemp(prefix="headwater-soak-"))
    log(f"working in {workdir}")
    workload = batch_workload(harness.WRITE_KEY, args.batch_size)
    workload_json = workload.write_json(workdir / "batch.workload.json")
    per = workload.ids_per_request
    request_rate = args.rate / per

    servers: dict[str, CeilingServer | Headwater] = {}
    started = time.monotonic()
    try:
        servers["ceiling"] = CeilingServer(workdir).start()
        if with_headwater:
            servers["headwater"] = Headwater(workdir / "headwater", args.extra_yaml).start()
        meters = {name: ProcessMeter(server.pid) for name, server in servers.items()}
        time.sleep(2.0)  # let start-up work (imports, first maintenance pass) finish
        log(f"idle: {args.idle_seconds:g}s")
        idle_before = idle_window(meters, args.idle_seconds)

        log(f"load: {args.rate:,.0f} events/s to each server for {args.load_seconds:g}s")
        loadgens = {
            name: Loadgen(server.port, workload_json, rate=request_rate, duration=args.load_seconds).start()
            for name, server in servers.items()
        }
        samples: dict[str, list[tuple[float, int]]] = {name: [] for name in servers}
        cpu_marks = {name: m.cpu_seconds() for name, m in meters.items()}
        load_start = time.monotonic()
        deadline = load_start + args.load_seconds + 60
        next_sample = load_start
        while time.monotonic() < deadline:
            now = time.monotonic()
            if now >= next_sample:
                for name, meter in meters.items():
                    samples[name].append((now - load_start, meter.rss_bytes()))
                next_sample += args.sample_every
            if all(g.process is not None and g.process.poll() is not None for g in loadgens.values()):
                break
            time.sleep(min(0.2, max(0.0, next_sample - time.monotonic())))
        load_wall = time.monotonic() - load_start
        load_cpu = {
            name: 100.0 * (m.cpu_seconds() - cpu_marks[name]) / load_wall for name, m in meters.items()
        }
        for name, meter in meters.items():
            if load_wall - samples[name][-1][0] > args.sample_every / 2:
                samples[name].append((load_wall, meter.rss_bytes()))
        results: dict[str, LoadResult] = {name: g.wait(per) for name, g in loadgens.items()}
        log(f"idle after load: {args.idle_seconds:g}s")
        idle_after = idle_window(meters, args.idle_seconds)
        threads = {name: m.threads() for name, m in meters.items()}
    finally:
        for server in servers.values():
            server.stop()
    stored = None
    log_bytes = 0
    if with_headwater:
        headwater = servers["headwater"]
        assert isinstance(headwater, Headwater)
        stored = harness.stored_events(headwater.data_dir)
        log_bytes = harness.dir_bytes(headwater.data_dir)
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)

    names = list(servers)
    print(
        f"Headwater soak — {time.strftime('%Y-%m-%d %H:%M')}, {harness.psutil.cpu_count()} CPUs, "
        f"{time.monotonic() - started:,.0f} s; load {args.rate:,.0f} events/s "
        f"({request_rate:,.1f} batches/s of {per}) to each server for {args.load_seconds:g} s"
    )
    if not with_headwater:
        print("(Headwater not measured: ceiling only)")
    print()
    print(
        table(
            ["server", "idle CPU%", "idle wakeups/s", "load CPU%", "idle-after CPU%", "threads"],
            [
                [
                    name,
                    num(idle_before[name][0], 2),
                    num(idle_before[name][1], 1),
                    num(load_cpu[name], 1),
                    num(idle_after[name][0], 2),
                    threads[name],
                ]
                for name in names
            ],
        )
    )
    print()
    rows = []
    for name in names:
        series = samples[name]
        second_half = [s for s in series if s[0] >= series[-1][0] / 2]
        rss = [r for _, r in series]
        rows.append(
            [
                name,
                mib(rss[0]),
                mib(rss[-1]),
                mib(max(rss)),
                mib(rss[-1] - rss[0]),
                num(slope_mib_per_minute(series), 3),
                num(slope_mib_per_minute(second_half), 3),
                len(series),
            ]
        )
    print(
        table(
            ["RSS MiB", "first", "last", "max", "growth", "slope MiB/min", "2nd-half slope", "samples"],
            rows,
        )
    )
    print()
    print(
        table(
            ["load", "target ev/s", "ok ev/s", "p50 ms", "p99 ms", "max ms", "errors"],
            [
                [
                    name,
                    num(args.rate),
                    num(r.events_per_second),
                    num(r.latency_ms["p50"], 2),
                    num(r.latency_ms["p99"], 2),
                    num(r.latency_ms["max"], 2),
                    r.error_text,
                ]
                for name, r in results.items()
            ],
        )
    )
    if with_headwater:
        accepted = results["headwater"].accepted_events
        assert stored is not None
        diff = stored - accepted
        note = (
            f"LOST {-diff:,} acknowledged events"
            if diff < 0
            else "every acknowledged event is in the log"
            if diff == 0
            else f"+{diff:,} committed but unacknowledged"
        )
        print(
            f"\nlog: accepted {accepted:,}; stored {stored:,}; {note}; {mib(log_bytes)} MiB on "
            f"disk ({log_bytes / max(1, stored):,.0f} B/event)"
        )
    # RSS over time, at most ~20 rows
    print()
    series_names = names
    length = min(len(samples[n]) for n in series_names)
    step = max(1, length // 20)
    picks = sorted({*range(0, length, step), length - 1})
    print(
        table(
            ["t (s)", *[f"{n} RSS MiB" for n in series_names]],
            [
                [f"{samples[series_names[0]][i][0]:.0f}", *[mib(samples[n][i][1]) for n in series_names]]
                for i in picks
            ],
        )
    )


if __name__ == "__main__":
    main()
