"""Ingest throughput and latency: Headwater against a do-nothing ceiling on the same stack.

Two scenarios, each on a fresh Headwater (its own temp data directory):

  batch   POST /v1/batch, 100 realistic messages per request (analytics-python's shape)
  single  POST /v1/t, one message per request, text/plain (analytics.js's shape)

For each: wrk saturates the ceiling, then Headwater, with the same connections and duration
(throughput, and the Headwater / ceiling ratio); then bench/loadgen.py holds a fixed rate of
--load-fraction (default half) of Headwater's measured throughput, open-loop, against
Headwater and then the ceiling (p50/p99 latency). Afterwards Headwater is stopped and the
`events` table of its log is counted: every 200 must be there (accepted vs stored).

Prints figures and ratios; asserts nothing. Traffic goes to 127.0.0.1 only.

    .venv/bin/python bench/ingest.py                 # ~4 minutes
    .venv/bin/python bench/ingest.py --duration 5 --scenarios batch
    .venv/bin/python bench/ingest.py --profile       # py-spy on Headwater during its wrk run
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import harness
from bench.harness import (
    CeilingServer,
    Headwater,
    LoadResult,
    ProcessMeter,
    log,
    num,
    ratio,
    table,
)
from bench.payloads import Workload, batch_workload, single_workload

RESULTS = Path(__file__).resolve().parent / "results"  # git-ignored
TARGETS = {
    "batch": "≥ 50,000 events/s durably accepted; p99 ≤ 50 ms at half that load",
    "single": "≥ 5,000 requests/s",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Headwater ingest throughput and latency against a do-nothing ceiling."
    )
    parser.add_argument(
        "--duration", type=float, default=15.0, help="seconds of each measured wrk run (default 15)"
    )
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of wrk before each measured run (default 3)"
    )
    parser.add_argument(
        "--latency-duration",
        type=float,
        default=None,
        help="seconds of each paced latency run (default: --duration)",
    )
    parser.add_argument(
        "--load-fraction",
        type=float,
        default=0.5,
        help="paced rate as a fraction of Headwater's throughput (default 0.5)",
    )
    parser.add_argument(
        "--scenarios", default="batch,single", help="comma-separated: batch, single (default both)"
    )
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--batch-connections", type=int, default=32)
    parser.add_argument("--single-connections", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--ceiling-only", action="store_true", help="measure the ceiling alone (Headwater not needed)"
    )
    parser.add_argument(
        "--extra-yaml",
        default="",
        help="YAML appended to Headwater's workspace file, e.g. $'log:\\n  synchronous: normal\\n'",
    )
    parser.add_argument(
        "--profile",
        nargs="?",
        const="cpu",
        choices=["cpu", "gil", "wall"],
        help="py-spy record Headwater during its measured wrk run: cpu "
        "(default: running threads), gil (the GIL holder) or wall (all)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - {"batch", "single"}
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(sorted(unknown))}")
    if not 0 < args.load_fraction <= 1:
        parser.error("--load-fraction must be in (0, 1]")
    if args.duration < 1 or args.duration > 3600:
        parser.error("--duration must be between 1 and 3600 seconds")
    if args.latency_duration is None:
        args.latency_duration = args.duration
    return args


def throughput_row(label: str, result: LoadResult, ceiling: LoadResult | None) -> list[object]:
    unit = result.events_per_second if result.ids_per_request > 1 else result.ok_per_second
    base = None
    if ceiling is not None:
        base = ceiling.events_per_second if result.ids_per_request > 1 else ceiling.ok_per_second
    return [
        label,
        num(result.ok_per_second),
        num(result.events_per_second),
        ratio(unit, base) if base else "1.00x",
        num(result.server_cpu_percent),
        num(result.client_cpu_percent),
        num(result.latency_ms.get("p50", float("nan")), 1),
        num(result.latency_ms.get("p99", float("nan")), 1),
        result.error_text,
    ]


def latency_row(label: str, result: LoadResult) -> list[object]:
    lat = result.latency_ms
    return [
        label,
        num(result.extra.get("target_rps", float("nan")), 1),
        num(result.ok_per_second, 1),
        num(result.events_per_second),
        num(lat["p50"], 2),
        num(lat["p90"], 2),
        num(lat["p99"], 2),
        num(lat["p999"], 2),
        num(lat["max"], 2),
        num(result.server_cpu_percent),
        num(result.client_cpu_percent),
        harness.client_note(result),
    ]


def profile_report(raw: Path, mode: str, seconds: float) -> str:
    return "\n".join(
        [
            f"py-spy ({mode} mode, {harness.PYSPY_RATE} Hz) on Headwater during its measured "
            f"wrk run; raw stacks: {raw}",
            "",
            harness.profile_tables(raw, seconds),
        ]
    )


def run_scenario(
    name: str,
    workload: Workload,
    connections: int,
    args: argparse.Namespace,
    workdir: Path,
    ceiling: CeilingServer,
    with_headwater: bool,
) -> dict[str, Any]:
    per = workload.ids_per_request
    lua = workload.write_lua(workdir / f"{name}.workload.lua")
    js = workload.write_json(workdir / f"{name}.workload.json")
    ceiling_meter = ProcessMeter(ceiling.pid)

    def wrk(url: str, seconds: float, meter: ProcessMeter | None = None) -> LoadResult:
        return harness.run_wrk(
            url,
            lua,
            ids_per_request=per,
            duration=seconds,
            connections=connections,
            threads=args.threads,
            meter=meter,
        )

    out: dict[str, Any] = {"scenario": name, "body_bytes": workload.body_bytes}
    log(f"[{name}] ceiling: warm-up {args.warmup:g}s, then wrk {args.duration:g}s")
    wrk(ceiling.url, args.warmup)
    ceiling_tp = wrk(ceiling.url, args.duration, ceiling_meter)
    out["ceiling_throughput"] = ceiling_tp

    headwater_tp = headwater_lat = None
    accepted = 0
    stored: int | None = None
    profile_text = ""
    if with_headwater:
        headwater = Headwater(workdir / f"headwater-{name}", args.extra_yaml).start()
        meter = ProcessMeter(headwater.pid)
        try:
            log(f"[{name}] headwater: warm-up {args.warmup:g}s, then wrk {args.duration:g}s")
            accepted += wrk(headwater.url, args.warmup).accepted_events
            spy = None
            if args.profile:
                binary = harness.find_py_spy()
                if binary is None:
                    profile_text = "py-spy not found (pip install py-spy, or set PY_SPY)"
                else:
                    raw = workdir / f"{name}.py-spy.txt"
                    spy = harness.PySpy(binary, headwater.pid, args.duration, raw, args.profile).start()
            headwater_tp = wrk(headwater.url, args.duration, meter)
            accepted += headwater_tp.accepted_events
            if spy is not None:
                spy.wait()
                kept = RESULTS / f"{time.strftime('%Y%m%d-%H%M%S')}-{name}-py-spy-{args.profile}.txt"
                kept.parent.mkdir(parents=True, exist_ok=True)
                if spy.output.exists():
                    shutil.copyfile(spy.output, kept)
                profile_text = profile_report(kept, args.profile, args.duration)
            rate = max(1.0, headwater_tp.ok_per_second * args.load_fraction)
            log(f"[{name}] headwater: paced {rate:,.1f} req/s for {args.latency_duration:g}s")
            headwater_lat = harness.run_paced(
                headwater.port,
                js,
                ids_per_request=per,
                rate=rate,
                duration=args.latency_duration,
                meter=meter,
            )
            accepted += headwater_lat.accepted_events
            out["server_rss_mib_after"] = meter.rss_bytes() / 2**20
        finally:
            log(f"[{name}] headwater: stopping (SIGTERM), then counting the log")
            headwater.stop()
        stored = harness.stored_events(headwater.data_dir)
        out["log_bytes"] = harness.dir_bytes(headwater.data_dir)
    else:
        rate = max(1.0, ceiling_tp.ok_per_second * args.load_fraction)
    log(f"[{name}] ceiling: paced {rate:,.1f} req/s for {args.latency_duration:g}s")
    ceiling_lat = harness.run_paced(
        ceiling.port,
        js,
        ids_per_request=per,
        rate=rate,
        duration=args.latency_duration,
        meter=ceiling_meter,
    )

    out.update(
        headwater_throughput=headwater_tp,
        headwater_latency=headwater_lat,
        ceiling_latency=ceiling_lat,
        accepted=accepted,
        stored=stored,
        profile=profile_text,
        rate=rate,
    )
    return out


def report(result: dict[str, Any], args: argparse.Namespace, connections: int) -> str:
    name = result["scenario"]
    ceiling_tp: LoadResult = result["ceiling_throughput"]
    headwater_tp: LoadResult | None = result["headwater_throughput"]
    headwater_lat: LoadResult | None = result["headwater_latency"]
    ceiling_lat: LoadResult = result["ceiling_latency"]
    per = ceiling_tp.ids_per_request
    lines = [
        "",
        f"== {name}: POST {'/v1/batch' if per > 1 else '/v1/t'}, {per} message(s) per request, "
        f"{result['body_bytes']:,} B bodies (~{result['body_bytes'] / per:,.0f} B/message)",
        f"   wrk -t{args.threads} -c{connections} -d{args.duration:g}s; target: {TARGETS[name]}",
        "",
    ]
    rows = [throughput_row("ceiling (do-nothing)", ceiling_tp, None)]
    if headwater_tp is not None:
        rows.append(throughput_row("headwater", headwater_tp, ceiling_tp))
    lines.append(
        table(
            [
                "throughput",
                "req/s",
                "events/s",
                "vs ceiling",
                "srv CPU%",
                "wrk CPU%",
                "p50 ms",
                "p99 ms",
                "errors",
            ],
            rows,
        )
    )
    lines.append("")
    fraction = f"{args.load_fraction:g} x Headwater" if headwater_tp else "ceiling"
    lat_rows = []
    if headwater_lat is not None:
        lat_rows.append(latency_row("headwater", headwater_lat))
    lat_rows.append(latency_row("ceiling (same rate)", ceiling_lat))
    lines.append(
        table(
            [
                f"paced ({fraction})",
                "target r/s",
                "ok r/s",
                "events/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "srv CPU%",
                "cli CPU%",
                "notes",
            ],
            lat_rows,
        )
    )
    if result["stored"] is not None:
        accepted, stored = result["accepted"], result["stored"]
        diff = stored - accepted
        if diff < 0:
            note = f"LOST {-diff:,} acknowledged events"
        elif diff == 0:
            note = "every acknowledged event is in the log"
        else:
            note = f"+{diff:,} committed but unacknowledged (in flight when a client stopped)"
        lines += [
            "",
            f"log: accepted (200 x messages) {accepted:,}; stored in `events` {stored:,}; "
            f"{note}; {harness.mib(result['log_bytes'])} MiB on disk",
        ]
    if headwater_tp is not None and headwater_lat is not None:
        if name == "batch":
            checks = [
                f"events/s {headwater_tp.events_per_second:,.0f} (≥ 50,000: "
                f"{harness.verdict(headwater_tp.events_per_second >= 50_000)})",
                f"p99 at {args.load_fraction:g} load {headwater_lat.latency_ms['p99']:.1f} ms "
                f"(≤ 50 ms: {harness.verdict(headwater_lat.latency_ms['p99'] <= 50)})",
            ]
        else:
            checks = [
                f"req/s {headwater_tp.ok_per_second:,.0f} (≥ 5,000: "
                f"{harness.verdict(headwater_tp.ok_per_second >= 5_000)})"
            ]
        lines += ["", "targets: " + "; ".join(checks)]
    if result["profile"]:
        lines += ["", result["profile"]]
    return "\n".join(lines)


def as_json(value: Any) -> Any:
    if isinstance(value, LoadResult):
        return {
            **{k: v for k, v in vars(value).items() if k != "extra"},
            "events_per_second": value.events_per_second,
            "ok_per_second": value.ok_per_second,
        }
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [as_json(v) for v in value]
    return value


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with_headwater = harness.measure_headwater(args.ceiling_only, log)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="headwater-bench-"))
    log(f"working in {workdir}")
    ceiling = CeilingServer(workdir).start()
    results = []
    try:
        for name in args.scenarios:
            if name == "batch":
                workload = batch_workload(harness.WRITE_KEY, args.batch_size)
                connections = args.batch_connections
            else:
                workload = single_workload(harness.WRITE_KEY)
                connections = args.single_connections
            result = run_scenario(name, workload, connections, args, workdir, ceiling, with_headwater)
            results.append((result, connections))
    finally:
        ceiling.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"Headwater ingest bench — {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{harness.psutil.cpu_count()} CPUs, {time.monotonic() - started:,.0f} s"
    )
    if not with_headwater:
        print("(Headwater not measured: ceiling only)")
    for result, connections in results:
        print(report(result, args, connections))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(as_json([r for r, _ in results]), indent=2) + "\n")
        print(f"\nresults written to {args.json}")


if __name__ == "__main__":
    main()
