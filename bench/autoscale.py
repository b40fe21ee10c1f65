"""`make bench-autoscale`: replica counts over time while the load rises and falls.

Starts the graph (`serve run` on a config derived from configs/local.yaml: Ingress and
GovernanceScorer autoscale 1-3 with short delays; the LLMServer stays one engine, which
uses both cores here), drives governed chat at concurrency 1 -> 32 -> 96 -> 0 with an
async client, and every ~1.5 s reads each deployment's replicas from the Ray dashboard's
Serve REST API (`GET /api/serve/applications/`, what `serve status` reads) of the graph's
own local Ray cluster. Writes bench/results/autoscale.json: the time series and a summary
(most replicas per deployment, time to scale up after the load rose, time to scale back
down after it fell, bounds kept). Loopback only, bounded: about 4-5 minutes here, half
of it the graph's start (--start-timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run import PROMPTS, percentile  # noqa: E402
from harness.launcher import create_agent, create_user_key, start_graph  # noqa: E402
from serve_app.model.build import ensure_default_model  # noqa: E402
from tests.support.postgres import PostgresUnavailable, start_throwaway_postgres  # noqa: E402

APP = "promethios"
AUTOSCALED = ("Ingress", "GovernanceScorer")
AUTOSCALING = {
    "min_replicas": 1,
    "max_replicas": 3,
    "target_ongoing_requests": 16,
    "upscale_delay_s": 2,
    "downscale_delay_s": 10,
    "look_back_period_s": 6,
    "metrics_interval_s": 1,
}
SETTLED_S = 8.0  # the idle phase ends once everything has stayed at its minimum this long
# Replicas and handles push their queue lengths every 10 s by default; 1 s lets the
# controller see a load step within the short delays above.
SERVE_ENV = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    # One bench key sends all the load: lift the per-key limits so no request is a 429.
    "PROMETHIOS_KEY_REQUESTS_PER_MINUTE": "10000000",
    "PROMETHIOS_KEY_TOKENS_PER_MINUTE": "1000000000",
    "PROMETHIOS_USER_REQUESTS_PER_MINUTE": "10000000",
    "PROMETHIOS_USER_TOKENS_PER_MINUTE": "1000000000",
}


def derived_config(base: Path, out: Path) -> dict[str, Any]:
    """`base` with AUTOSCALING on the Ingress and the scorer; written to `out`."""
    config = yaml.safe_load(base.read_text())
    for dep in config["applications"][0]["deployments"]:
        if dep["name"] in AUTOSCALED:
            dep.pop("num_replicas", None)
            dep["autoscaling_config"] = dict(AUTOSCALING)
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return config


def bounds_of(config: dict[str, Any]) -> dict[str, tuple[int, int]]:
    """(min, max) replicas per deployment as configured."""
    out = {}
    for dep in config["applications"][0]["deployments"]:
        auto = dep.get("autoscaling_config")
        if auto:
            out[dep["name"]] = (int(auto.get("min_replicas", 1)), int(auto["max_replicas"]))
        else:
            n = int(dep.get("num_replicas", 1))
            out[dep["name"]] = (n, n)
    return out


@dataclass
class Load:
    """What the client is doing now, and every answer it got."""

    t0: float
    concurrency: int = 0
    in_flight: int = 0
    done: list[tuple[float, float, bool]] = field(default_factory=list)  # t, ms, ok
    phases: list[dict[str, Any]] = field(default_factory=list)
    idle_at: float | None = None  # when the last request of the load finished

    def now(self) -> float:
        return time.monotonic() - self.t0


async def run_load(
    url: str,
    headers: dict[str, str],
    body: dict[str, Any],
    phases: list[tuple[int, float]],
    load: Load,
    settled: asyncio.Event,
) -> None:
    """Worker i posts while i < load.concurrency; the last phase (0) ends early once
    `settled` is set (every deployment back at its minimum)."""
    peak = max(c for c, _ in phases)
    limits = httpx.Limits(max_connections=peak + 8, max_keepalive_connections=peak + 8)
    async with httpx.AsyncClient(headers=headers, timeout=180.0, limits=limits) as client:

        async def worker(i: int) -> None:
            n = i
            while i < load.concurrency:
                load.in_flight += 1
                started = time.monotonic()
                prompt = PROMPTS[n % len(PROMPTS)]
                n += 1
                try:
                    resp = await client.post(url, json={**body, "message": prompt})
                    ok = resp.status_code == 200
                except httpx.HTTPError:
                    ok = False
                load.in_flight -= 1
                load.done.append((load.now(), (time.monotonic() - started) * 1000.0, ok))
                if load.in_flight == 0 and load.concurrency == 0:
                    load.idle_at = load.now()

        workers: dict[int, asyncio.Task] = {}
        for concurrency, seconds in phases:
            load.concurrency = concurrency
            load.phases.append({"t": round(load.now(), 2), "concurrency": concurrency})
            print(f"[{load.now():6.1f}s] concurrency {concurrency}", flush=True)
            if concurrency == 0 and load.in_flight == 0:
                load.idle_at = load.now()
            for i in range(concurrency):
                if i not in workers or workers[i].done():
                    workers[i] = asyncio.create_task(worker(i))
            if concurrency == 0:
                try:
                    await asyncio.wait_for(settled.wait(), timeout=seconds)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(seconds)
        load.concurrency = 0
        await asyncio.gather(*workers.values())


def replica_counts(details: dict[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """(RUNNING replicas, target replicas) per deployment of the application."""
    deps = details["applications"][APP]["deployments"]
    running = {n: sum(r["state"] == "RUNNING" for r in d["replicas"]) for n, d in deps.items()}
    target = {n: int(d["target_num_replicas"]) for n, d in deps.items()}
    return running, target


async def sample(
    client: Any,
    load: Load,
    bounds: dict[str, tuple[int, int]],
    every_s: float,
    series: list[dict[str, Any]],
    settled: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    """Every `every_s`: replicas per deployment, the client's concurrency, rps and p50
    of the answers since the last sample."""
    last_t = load.now()
    low_since: float | None = None  # idle and every autoscaled deployment at its minimum
    while not stop.is_set():
        try:
            details = await asyncio.to_thread(client.get_serve_details)
            running, target = replica_counts(details)
        except Exception as exc:  # a missed sample is recorded, not fatal
            running, target = {}, {}
            print(f"sample failed: {type(exc).__name__}: {exc}", flush=True)
        t = load.now()
        window = [(ms, ok) for (td, ms, ok) in load.done if last_t < td <= t]
        ok_ms = [ms for ms, ok in window if ok]
        row = {
            "t": round(t, 2),
            "concurrency": load.concurrency,
            "in_flight": load.in_flight,
            "replicas": running,
            "target_replicas": target,
            "rps": round(len(ok_ms) / max(t - last_t, 1e-6), 2),
            "p50_ms": None if not ok_ms else round(percentile(ok_ms, 0.5), 1),
            "errors": sum(not ok for _, ok in window),
        }
        series.append(row)
        last_t = t
        now = {n: f"{running.get(n)}/{target.get(n)}" for n in AUTOSCALED}
        print(
            f"[{t:6.1f}s] c={load.concurrency:3d} in_flight={load.in_flight:3d} "
            f"running/target={now} rps={row['rps']} p50={row['p50_ms']}",
            flush=True,
        )
        low = (
            load.concurrency == 0
            and load.idle_at is not None
            and bool(running)
            and all(running.get(n) == bounds[n][0] == target.get(n) for n in AUTOSCALED)
        )
        low_since = (low_since if low_since is not None else t) if low else None
        if low_since is not None and t - low_since >= SETTLED_S:
            settled.set()
        await asyncio.sleep(max(0.0, every_s - (load.now() - t)))


def summarize(
    series: list[dict[str, Any]], load: Load, bounds: dict[str, tuple[int, int]]
) -> dict[str, Any]:
    """Most replicas, scale-up and scale-down times, and whether bounds held."""
    rise = next(p["t"] for p in load.phases if p["concurrency"] > load.phases[0]["concurrency"])
    fall = next(p["t"] for p in load.phases if p["concurrency"] == 0)
    rows = [r for r in series if r["replicas"]]
    names = sorted({n for r in rows for n in r["replicas"]})

    def first(cond, after: float) -> float | None:
        """Seconds from `after` to the first sample at or after it where `cond` holds."""
        hit = next((r["t"] for r in rows if r["t"] >= after and cond(r)), None)
        return None if hit is None else round(hit - after, 1)

    out: dict[str, Any] = {
        "load_rose_at_s": rise,
        "load_fell_at_s": fall,
        "last_request_done_at_s": None if load.idle_at is None else round(load.idle_at, 1),
        "deployments": {},
    }
    for n in names:
        lo, hi = bounds.get(n, (1, 1))
        counts = [r["replicas"].get(n, 0) for r in rows]
        targets = [r["target_replicas"].get(n, 0) for r in rows]
        d: dict[str, Any] = {
            "configured_min": lo,
            "configured_max": hi,
            "max_replicas": max(counts),
            "max_target_replicas": max(targets),
            "min_replicas_seen": min(counts),
            "within_bounds": all(lo <= c <= hi for c in counts + targets),
            "final_replicas": counts[-1],
        }
        if n in AUTOSCALED:
            d["scale_up_decided_s"] = first(
                lambda r, n=n, lo=lo: r["target_replicas"][n] > lo, rise
            )
            d["scale_up_running_s"] = first(lambda r, n=n, lo=lo: r["replicas"][n] > lo, rise)
            d["reached_max_s"] = first(lambda r, n=n, hi=hi: r["replicas"][n] >= hi, rise)

            # Back down: from the first sample after which every sample is at the minimum.
            at_min = [r["replicas"][n] == lo == r["target_replicas"][n] for r in rows]
            down_at = None
            for r, low in zip(reversed(rows), reversed(at_min), strict=True):
                if not low or r["t"] < fall:
                    break
                down_at = r["t"]
            d["scale_down_s_after_load_fell"] = (
                None if down_at is None else round(down_at - fall, 1)
            )
            d["scale_down_s_after_last_request"] = (
                None
                if down_at is None or load.idle_at is None
                else round(max(0.0, down_at - load.idle_at), 1)
            )
            # Every change of (running, target), to show the path and any step back under load.
            steps, prev = [], None
            for r in rows:
                now = (r["replicas"][n], r["target_replicas"][n])
                if now != prev:
                    steps.append(
                        {
                            "t": r["t"],
                            "concurrency": r["concurrency"],
                            "running": now[0],
                            "target": now[1],
                        }
                    )
                    prev = now
            d["changes"] = steps
            d["target_lowered_under_load"] = sum(
                1 for x, y in pairwise(steps) if y["target"] < x["target"] and y["concurrency"]
            )
        out["deployments"][n] = d
    out["all_within_bounds"] = all(d["within_bounds"] for d in out["deployments"].values())
    out["scaled_up"] = all(out["deployments"][n]["max_replicas"] > bounds[n][0] for n in AUTOSCALED)
    out["scaled_back_down"] = all(
        out["deployments"][n]["final_replicas"] == bounds[n][0] for n in AUTOSCALED
    )
    ok = [ms for _, ms, good in load.done if good]
    ends = [p["t"] for p in load.phases[1:]] + [float("inf")]
    out["per_phase"] = []
    for phase, end in zip(load.phases, ends, strict=True):
        if phase["concurrency"] == 0:
            continue
        ms = [m for td, m, good in load.done if good and phase["t"] < td <= end]
        out["per_phase"].append(
            {
                "concurrency": phase["concurrency"],
                "requests": len(ms),
                "rps": round(len(ms) / (end - phase["t"]), 2),
                "p50_ms": None if not ms else round(percentile(ms, 0.5), 1),
            }
        )
    out["requests"] = len(ok)
    out["errors"] = sum(not good for *_, good in load.done)
    return out


def parse_phases(text: str) -> list[tuple[int, float]]:
    return [(int(c), float(s)) for c, s in (p.split(":") for p in text.split(","))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--phases",
        default="1:8,32:25,96:30,0:40",
        help="concurrency:seconds,...; the last (0) ends once scaled down",
    )
    parser.add_argument("--sample-every", type=float, default=1.5)
    parser.add_argument("--start-timeout", type=float, default=240.0, help="graph start, s")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "autoscale.json")
    args = parser.parse_args()
    phases = parse_phases(args.phases)
    assert phases[-1][0] == 0, "the last phase must be concurrency 0 (the load falls)"
    # The graph's local Ray cluster turns token auth on by default; with this set (before
    # Ray is imported here) the dashboard client below sends that token (~/.ray/auth_token).
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    ensure_default_model()  # built once and cached (make model); not timed below
    started = time.monotonic()
    load_before = [round(x, 2) for x in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="promethios-autoscale-"))
    config = derived_config(REPO / "configs" / "local.yaml", work / "autoscale.yaml")
    bounds = bounds_of(config)
    try:
        db_url, db_stop = start_throwaway_postgres(Path(tempfile.mkdtemp(prefix="promethios-pg-")))
        database = "postgresql"
    except PostgresUnavailable:
        db_url, db_stop, database = f"sqlite:///{work / 'autoscale.db'}", (lambda: None), "sqlite"
    try:
        print("graph: starting serve run", flush=True)
        graph = start_graph(
            work,
            db_url,
            base_config=work / "autoscale.yaml",
            env=SERVE_ENV,
            timeout_s=args.start_timeout,
        )
        startup_s = time.monotonic() - started
        try:
            from ray.dashboard.modules.serve.sdk import ServeSubmissionClient

            dashboard = graph.dashboard_url()
            if dashboard is None:
                raise RuntimeError(f"no dashboard address in {graph.log_path}")
            serve_client = ServeSubmissionClient(dashboard)
            key = create_user_key(db_url, "autoscale")
            headers = {"Authorization": f"Bearer {key}"}
            agent = create_agent(
                graph.base_url,
                key,
                {
                    "name": "autoscale",
                    "max_tokens": args.max_tokens,
                    "temperature": 0.0,
                    "compliance_mode": "standard",
                },
            )
            body = {"max_tokens": args.max_tokens, "temperature": 0.0}
            series: list[dict[str, Any]] = []
            load = Load(t0=time.monotonic())

            async def go() -> None:
                settled, stop = asyncio.Event(), asyncio.Event()
                sampler = asyncio.create_task(
                    sample(serve_client, load, bounds, args.sample_every, series, settled, stop)
                )
                await run_load(
                    f"{graph.base_url}/native-llm/agent/{agent}/chat",
                    headers,
                    body,
                    phases,
                    load,
                    settled,
                )
                stop.set()
                await sampler

            asyncio.run(go())
        finally:
            graph.stop()
    finally:
        db_stop()
    summary = summarize(series, load, bounds)
    result = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "cpu_count": os.cpu_count(),
            "load_average_before": load_before,
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
        },
        "config": {
            "base": "configs/local.yaml",
            "autoscaled": {n: AUTOSCALING for n in AUTOSCALED},
            "bounds": {n: {"min": lo, "max": hi} for n, (lo, hi) in bounds.items()},
            "serve_env": {k: v for k, v in SERVE_ENV.items() if k.startswith("RAY_")},
            "database": database,
            "route": "POST /native-llm/agent/{id}/chat (governed)",
            "max_tokens": args.max_tokens,
            "phases": [{"concurrency": c, "seconds": s} for c, s in phases],
            "sample_every_s": args.sample_every,
            "replicas_read_from": "Ray dashboard GET /api/serve/applications/ (RUNNING replicas"
            " and target_num_replicas per deployment), the graph's own local Ray cluster",
            "startup_s": round(startup_s, 1),
        },
        "phases": load.phases,
        "summary": summary,
        "series": series,
        "wall_s": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {args.out} in {result['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
