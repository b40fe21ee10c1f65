"""Soak: a bounded load at half the measured capacity, sampling memory and latency.

Starts a throwaway PostgreSQL (or uses --database-url) and the graph (`serve run`
configs/local.yaml), measures capacity (closed loop at --capacity-concurrency for
--capacity-seconds), then sends governed chats open-loop at --load-fraction of it
for --duration seconds. Every --interval seconds it samples the resident memory of
every process of the graph (grouped by role) and the latency of the chats completed
in that interval. At the end it checks that every answered chat has its row, fits a
line to memory and p50 latency over the intervals (the first is warm-up and left
out), and says whether either grows beyond noise. Writes bench/results/soak.json.

    .venv/bin/python bench/soak.py                 # 10 minutes
    .venv/bin/python bench/soak.py --duration 90   # a short proof run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run import PROMPTS, drive, percentile  # noqa: E402
from harness.launcher import GraphProcess, create_agent, create_user_key, start_graph  # noqa: E402
from serve_app.model.build import ensure_default_model  # noqa: E402

ROLES = (
    "Ingress",
    "LLMServer",
    "GovernanceScorer",
    "MetricsWriter",
    "RateLimiter",
    "ServeController",
    "ProxyActor",
)


def memory_by_role(graph: GraphProcess) -> dict[str, float]:
    """Resident MiB of the graph's processes by role; an engine's subprocesses count
    with the replica that started them (same process group)."""
    members = graph.processes()
    role_of_group: dict[int, str] = {}
    for m in members:
        for role in ROLES:
            if m.cmd.startswith("ray::") and role in m.cmd:
                role_of_group[m.pgid] = role
    out: dict[str, float] = {}
    for m in members:
        role = role_of_group.get(m.pgid, "ray_and_serve_run")
        out[role] = out.get(role, 0.0) + m.rss_bytes / 2**20
    out["total"] = sum(v for k, v in out.items())
    return {k: round(v, 1) for k, v in sorted(out.items())}


def trend(xs: list[float], ys: list[float]) -> dict[str, Any]:
    """Least-squares slope per minute, the residual noise, and whether the rise over the
    run exceeds twice the noise (and 2% of the mean): "growing"."""
    if len(xs) < 3:
        return {"slope_per_min": None, "noise": None, "growing": None}
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    residuals = [y - (my + slope * (x - mx)) for x, y in zip(xs, ys, strict=True)]
    noise = statistics.pstdev(residuals)
    rise = slope * (xs[-1] - xs[0])
    growing = rise > 2 * noise and rise > 0.02 * abs(my)
    return {
        "slope_per_min": round(slope * 60.0, 3),
        "rise_over_run": round(rise, 3),
        "noise": round(noise, 3),
        "growing": bool(growing),
    }


async def open_loop(
    url: str,
    headers: dict[str, str],
    rate: float,
    duration_s: float,
    interval_s: float,
    max_tokens: int,
    on_interval,
) -> list[dict[str, Any]]:
    """Send `rate` chats/s (evenly spaced) for `duration_s`; one sample per interval."""
    # (finished, from the start in s; status; latency ms; message id)
    done: list[tuple[float, int, float, str | None]] = []
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(headers=headers, timeout=120.0, limits=limits) as client:

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            body = {"message": PROMPTS[i % len(PROMPTS)], "max_tokens": max_tokens}
            try:
                resp = await client.post(url, json=body)
                status = resp.status_code
                mid = resp.json()["data"]["message_id"] if status == 200 else None
            except (httpx.HTTPError, ValueError, KeyError):
                status, mid = 0, None
            t1 = time.perf_counter()
            done.append((t1 - start, status, (t1 - t0) * 1000.0, mid))

        start = time.perf_counter()
        tasks: set[asyncio.Task] = set()
        samples: list[dict[str, Any]] = []
        next_sample = start + interval_s
        i = 0
        while True:
            now = time.perf_counter()
            if now >= start + duration_s:
                break
            due = start + i / rate
            if now >= due:
                task = asyncio.create_task(one(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
                i += 1
            if now >= next_sample:
                t = next_sample - start  # the interval [t - interval_s, t), from the start
                samples.append(on_interval(t, [d for d in done if t - interval_s <= d[0] < t]))
                next_sample += interval_s
            await asyncio.sleep(max(0.0, min(due, next_sample) - time.perf_counter()))
        if tasks:
            await asyncio.wait(tasks, timeout=180)
    samples.append({"answered_ids": [m for _, s, _, m in done if s == 200 and m]})
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="soak seconds (600)")
    parser.add_argument("--interval", type=float, default=30.0, help="seconds per sample")
    parser.add_argument("--load-fraction", type=float, default=0.5, help="of measured capacity")
    parser.add_argument("--capacity-seconds", type=float, default=15.0)
    parser.add_argument("--capacity-concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--database-url", help="default: a throwaway PostgreSQL")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "soak.json")
    parser.add_argument(
        "--heap-profile",
        type=Path,
        help="write tracemalloc growth reports of every graph process here (slows them down)",
    )
    args = parser.parse_args()
    if args.heap_profile:
        os.environ["PROMETHIOS_HEAP_PROFILE"] = str(args.heap_profile.resolve())
    t_start = time.monotonic()
    # The soak measures the graph, not the per-key limits (600 requests/min by default).
    os.environ.setdefault("PROMETHIOS_KEY_REQUESTS_PER_MINUTE", "1000000")
    os.environ.setdefault("PROMETHIOS_KEY_TOKENS_PER_MINUTE", "1000000000")
    os.environ.setdefault("PROMETHIOS_USER_REQUESTS_PER_MINUTE", "1000000")
    os.environ.setdefault("PROMETHIOS_USER_TOKENS_PER_MINUTE", "1000000000")
    ensure_default_model()
    work = Path(tempfile.mkdtemp(prefix="promethios-soak-"))
    pg_stop = None
    db_url = args.database_url
    if db_url is None:
        from tests.support.postgres import start_throwaway_postgres

        db_url, pg_stop = start_throwaway_postgres(Path(tempfile.mkdtemp(prefix="promethios-pg-")))
    try:
        print("graph: starting serve run", flush=True)
        graph = start_graph(work, db_url)
        try:
            result = soak(graph, db_url, args)
        finally:
            graph.stop()
        if args.heap_profile:
            result["heap_profile"] = heap_trends(args.heap_profile, result.get("window"))
    finally:
        if pg_stop is not None:
            pg_stop()
    result["run"] = {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.monotonic() - t_start, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "database": "sqlite" if db_url.startswith("sqlite") else "postgresql",
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["verdict"], indent=2))
    print(f"wrote {args.out}")
    return 0 if result["verdict"]["ok"] else 1


def heap_trends(directory: Path, window: list[float] | None) -> dict[str, Any]:
    """Per process (from serve_app/observability/heap.py's samples, within the soak's
    steady window): the trend of resident memory, of the bytes the allocator has in use,
    and of the free bytes it keeps. A leak grows "in use"; fragmentation grows "kept"."""
    out: dict[str, Any] = {}
    for path in sorted(directory.glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if window:
            rows = [r for r in rows if window[0] <= r["t"] <= window[1]]
        if len(rows) < 3:
            continue
        xs = [r["t"] for r in rows]
        out[path.stem] = {
            key: trend(xs, [r.get(key, 0.0) for r in rows])
            for key in ("rss_mib", "malloc_in_use_mib", "malloc_free_kept_mib")
        }
        out[path.stem]["first"] = rows[0]
        out[path.stem]["last"] = rows[-1]
    return out


def soak(graph: GraphProcess, db_url: str, args: argparse.Namespace) -> dict[str, Any]:
    key = create_user_key(db_url, "soak")
    headers = {"Authorization": f"Bearer {key}"}
    config = {"name": "Soak", "max_tokens": args.max_tokens, "temperature": 0.0}
    agent_id = create_agent(graph.base_url, key, config)
    url = f"{graph.base_url}/native-llm/agent/{agent_id}/chat"

    def body(message: str) -> dict[str, Any]:
        return {"message": message, "max_tokens": args.max_tokens}

    warm = asyncio.run(drive(url, headers, body, 4, 5.0, lambda j: 0))
    capacity = asyncio.run(
        drive(url, headers, body, args.capacity_concurrency, args.capacity_seconds, lambda j: 0)
    )
    rate = max(0.2, capacity["rps"] * args.load_fraction)
    print(f"capacity {capacity['rps']} rps at c={args.capacity_concurrency}; soak at {rate:.2f}")

    def on_interval(t: float, window: list) -> dict[str, Any]:
        ok = [ms for _, s, ms, _ in window if s == 200]
        sample = {
            "t_s": round(t, 1),
            "completed": len(window),
            "errors": len(window) - len(ok),
            "rps": round(len(ok) / args.interval, 3),
            "p50_ms": _r(percentile(ok, 0.5)),
            "p95_ms": _r(percentile(ok, 0.95)),
            "rss_mib": memory_by_role(graph),
        }
        print(
            f"  t={sample['t_s']:>6}s rps={sample['rps']:<6} p50={sample['p50_ms']} "
            f"errors={sample['errors']} rss_total={sample['rss_mib']['total']} MiB",
            flush=True,
        )
        return sample

    soak_started = time.time()
    samples = asyncio.run(
        open_loop(url, headers, rate, args.duration, args.interval, args.max_tokens, on_interval)
    )
    answered = samples.pop()["answered_ids"]
    answered_total = warm["requests"] + capacity["requests"] + len(answered)
    rows = _rows(db_url, agent_id, deadline_s=60, want=answered_total)
    steady = samples[1:] if len(samples) > 3 else samples
    xs = [s["t_s"] for s in steady]
    memory_trend = trend(xs, [s["rss_mib"]["total"] for s in steady])
    by_role = {
        role: trend(xs, [s["rss_mib"].get(role, 0.0) for s in steady])
        for role in samples[-1]["rss_mib"]
        if role != "total"
    }
    latency_trend = trend(xs, [s["p50_ms"] or 0.0 for s in steady])
    errors = sum(s["errors"] for s in samples)
    verdict = _verdict(errors, answered_total, rows, memory_trend, latency_trend, by_role)
    verdict["answered_in_soak"] = len(answered)
    return {
        "capacity": capacity,
        "soak_rate_rps": round(rate, 3),
        "samples": samples,
        "trend": {"rss_total_mib": memory_trend, "p50_ms": latency_trend, "rss_by_role": by_role},
        "verdict": verdict,
        # wall-clock span of the steady samples (for the heap profile's own samples)
        "window": [
            round(soak_started + steady[0]["t_s"] - args.interval, 1),
            round(soak_started + steady[-1]["t_s"], 1),
        ]
        if steady
        else None,
    }


def _verdict(
    errors: int,
    answered_total: int,
    rows: int,
    memory_trend: dict[str, Any],
    latency_trend: dict[str, Any],
    by_role: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """OK: no errors, no record lost, and neither the total memory, any role's memory,
    nor the p50 latency rising beyond noise."""
    roles_growing = sorted(role for role, t in by_role.items() if t["growing"])
    return {
        "errors": errors,
        "answered_in_run": answered_total,
        "rows_for_agent": rows,
        "lost_records": max(0, answered_total - rows),
        "memory_growing": memory_trend["growing"],
        "memory_roles_growing": roles_growing,
        "latency_growing": latency_trend["growing"],
        "ok": errors == 0
        and rows >= answered_total
        and not memory_trend["growing"]
        and not roles_growing
        and not latency_trend["growing"],
    }


def _rows(db_url: str, agent_id: str, deadline_s: float, want: int) -> int:
    """Interactions stored for the agent (waiting up to `deadline_s` for `want` rows)."""
    from serve_app.store import Store

    store = Store(db_url)
    try:
        end = time.monotonic() + deadline_s
        while True:
            n = store.count_interactions(agent_id)
            if n >= want or time.monotonic() > end:
                return n
            time.sleep(1.0)
    finally:
        store.close()


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


if __name__ == "__main__":
    sys.exit(main())
