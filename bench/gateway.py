"""`make bench-gateway`: what our stack adds in front of an upstream, as gateways report it.

Starts a fake OpenAI-compatible upstream in its own process (harness/fake_upstream.py:
answers after a fixed delay, 50 ms by default, streaming and not), a throwaway
PostgreSQL and our graph (configs/local.yaml) with that upstream registered; a wrapped
agent fronts it. One run measures, with the same questions (a new chat-corpus question
per request, so governance screens new texts, as in service):

  upstream     the fake upstream called directly (the baseline)
  governed     the wrapped agent's chat route: auth, rate limits, governance of the
               question and the answer, the interaction's record
  ungoverned   the bench-only route: the same minus governance scoring
  stream       the OpenAI-compatible route with stream=true (governed SSE) against the
               upstream's own stream: time to the first content and to the end

At concurrency 1 and 16: p50/p95/p99 and the added latency over the upstream's own at the
same concurrency; CPU ms per request by process role at 16 (bench/cpu.py). Then a
closed-loop sweep of concurrency for the highest rate served with no error, governed and
ungoverned. The tiny model's engine is up but idle: this isolates the gateway from the
model's CPU. Writes bench/results/gateway.json.

    .venv/bin/python bench/gateway.py [--delay-ms 50] [--duration 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench import cpu  # noqa: E402
from bench.run import PROMPTS, lift_rate_limits, machine_info, percentile  # noqa: E402
from harness.launcher import (  # noqa: E402
    create_agent,
    create_user_key,
    free_port,
    start_graph,
    stop_group,
    wait_healthy,
)
from tests.support.postgres import start_throwaway_postgres  # noqa: E402

KEY_ENV = "UPSTREAM_GATEWAY_BENCH_KEY"
LATENCY_LEVELS = (1, 16)
SWEEP = (8, 16, 32, 64)
_next = iter(range(10**9))


def _prompt() -> str:
    return PROMPTS[next(_next) % len(PROMPTS)]


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


class Path_:
    """One way to send a question: URL, headers, body, and how to read the answer."""

    def __init__(
        self, url: str, headers: dict[str, str], body: Callable[[str], dict], stream: bool
    ) -> None:
        self.url, self.headers, self.body, self.stream = url, headers, body, stream


async def _one(client: httpx.AsyncClient, path: Path_) -> tuple[bool, float, float | None]:
    """(ok, ms to the end, ms to the first content chunk when streaming)."""
    t0 = time.perf_counter()
    first: float | None = None
    try:
        if not path.stream:
            resp = await client.post(path.url, json=path.body(_prompt()))
            return resp.status_code == 200, (time.perf_counter() - t0) * 1000.0, None
        ok = False
        async with client.stream("POST", path.url, json=path.body(_prompt())) as resp:
            if resp.status_code != 200:
                await resp.aread()
                return False, (time.perf_counter() - t0) * 1000.0, None
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    ok = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    return False, (time.perf_counter() - t0) * 1000.0, first
                choices = chunk.get("choices") or []
                if first is None and choices and choices[0].get("delta", {}).get("content"):
                    first = (time.perf_counter() - t0) * 1000.0
        return ok, (time.perf_counter() - t0) * 1000.0, first
    except (httpx.HTTPError, ValueError):
        return False, (time.perf_counter() - t0) * 1000.0, first


async def drive(path: Path_, concurrency: int, duration_s: float) -> dict[str, Any]:
    """`concurrency` clients, each sending its next question as the last one is answered."""
    total: list[float] = []
    firsts: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=path.headers, timeout=60.0, limits=limits) as client:

        async def worker() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                ok, ms, first = await _one(client, path)
                if ok:
                    total.append(ms)
                    if first is not None:
                        firsts.append(first)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    out = {
        "concurrency": concurrency,
        "requests": len(total),
        "errors": errors,
        "rps": round(len(total) / wall, 2),
        "p50_ms": _r(percentile(total, 0.5)),
        "p95_ms": _r(percentile(total, 0.95)),
        "p99_ms": _r(percentile(total, 0.99)),
    }
    if path.stream:
        out["first_content_p50_ms"] = _r(percentile(firsts, 0.5))
        out["first_content_p95_ms"] = _r(percentile(firsts, 0.95))
    return out


PROFILED = ("Ingress", "GovernanceScorer", "MetricsWriter", "UpstreamLLM", "RateLimiter")


def start_profiles(graph: Any, out_dir: Path, label: str, seconds: float) -> list[Any]:
    """py-spy on each replica of PROFILED and on Serve's proxy for `seconds`: collapsed
    stacks (flame-graph input: flamegraph.pl or speedscope.app render them) per role."""
    out_dir.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).parent / "py-spy"
    targets = [(name, pid) for name in PROFILED for pid in graph.replica_pids(name)[:1]]
    targets += [("ServeProxy", m.pid) for m in graph.processes() if "ProxyActor" in m.cmd][:1]
    procs = []
    for name, pid in targets:
        dest = out_dir / f"{label}-{name}.txt"
        procs.append(subprocess.Popen(
            [str(spy), "record", "--nonblocking", "-r", "50", "-f", "raw", "-o", str(dest),
             "-d", str(int(seconds)), "-p", str(pid)],  # fmt: skip
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))  # fmt: skip
    return procs


def measure(
    path: Path_, concurrency: int, duration_s: float, with_cpu: bool, profile: Any = None
) -> dict[str, Any]:
    before = cpu.snapshot() if with_cpu else None
    spies = profile() if profile is not None else []
    out = asyncio.run(drive(path, concurrency, duration_s))
    for spy in spies:
        spy.wait(timeout=60)
    if before is not None:
        out["cpu_ms_per_request"] = cpu.per_request(before, cpu.snapshot(), out["requests"])
    print(f"    c={concurrency}: {out}", flush=True)
    return out


def added(ours: dict[str, Any], base: dict[str, Any]) -> dict[str, float | None]:
    """Our latency percentiles minus the upstream's own at the same concurrency."""
    keys = ("p50_ms", "p95_ms", "p99_ms", "first_content_p50_ms", "first_content_p95_ms")
    return {
        k: _r(ours[k] - base[k])
        for k in keys
        if ours.get(k) is not None and base.get(k) is not None
    }


def start_fake_upstream(delay_ms: float, words: int, log: Path) -> tuple[str, Any]:
    port = free_port()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "harness.fake_upstream",
                "--port",
                str(port),
                "--delay-ms",
                str(delay_ms),
                "--words",
                str(words),
            ],  # fmt: skip
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, f"{base}/health", log, 30, "fake upstream")
    except RuntimeError:
        stop_group(proc, 5)
        raise
    return base, proc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--delay-ms", type=float, default=50.0, help="the upstream's delay")
    parser.add_argument("--words", type=int, default=32, help="words per answer")
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per level")
    parser.add_argument("--sweep", default=",".join(map(str, SWEEP)))
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gateway.json")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy each role during the c=16 levels; collapsed stacks into this folder",
    )
    args = parser.parse_args()
    sweep = [int(c) for c in args.sweep.split(",") if c]
    started = time.monotonic()
    lift_rate_limits()
    os.environ[KEY_ENV] = "sk-gw-" + secrets.token_hex(12)
    work = Path(tempfile.mkdtemp(prefix="promethios-gateway-"))
    up_base, up_proc = start_fake_upstream(args.delay_ms, args.words, work / "upstream.log")
    pg_url, pg_stop = start_throwaway_postgres(Path(tempfile.mkdtemp(prefix="promethios-pg-")))
    try:
        upstreams = work / "upstreams.yaml"
        entry = {"base_url": f"{up_base}/v1", "api_key_env": KEY_ENV, "models": ["fake"]}
        upstreams.write_text(yaml.safe_dump({"upstreams": {"fake": entry}}))
        admin = "admin-" + secrets.token_hex(16)
        print("graph: starting serve run", flush=True)
        graph = start_graph(
            work,
            pg_url,
            args={"bench_routes": True},
            env={"PROMETHIOS_ADMIN_KEY": admin, "PROMETHIOS_UPSTREAMS_FILE": str(upstreams)},
        )
        try:
            key = create_user_key(pg_url, "gateway-bench")
            headers = {"Authorization": f"Bearer {key}"}
            backend = {"type": "openai", "upstream": "fake", "model": "fake"}
            config = {"name": "gateway", "max_tokens": args.words, "temperature": 0.0,
                      "compliance_mode": "standard", "backend": backend}  # fmt: skip
            agent = create_agent(graph.base_url, key, config)

            def direct(m: str, stream: bool = False) -> dict:
                return {"model": "fake", "messages": [{"role": "user", "content": m}],
                        "max_tokens": args.words, "stream": stream}  # fmt: skip

            def ours(m: str) -> dict:
                return {"message": m, "max_tokens": args.words, "temperature": 0.0}

            def ours_stream(m: str) -> dict:
                return {"model": agent, "messages": [{"role": "user", "content": m}],
                        "max_tokens": args.words, "stream": True}  # fmt: skip

            up_headers = {"Authorization": f"Bearer {os.environ[KEY_ENV]}"}
            paths = {
                "upstream": Path_(f"{up_base}/v1/chat/completions", up_headers, direct, False),
                "governed": Path_(
                    f"{graph.base_url}/native-llm/agent/{agent}/chat", headers, ours, False
                ),
                "ungoverned": Path_(
                    f"{graph.base_url}/bench/ungoverned/{agent}/chat",
                    {**headers, "X-Admin-Key": admin},
                    ours,
                    False,
                ),
                "upstream_stream": Path_(
                    f"{up_base}/v1/chat/completions",
                    up_headers,
                    lambda m: direct(m, stream=True),
                    True,
                ),
                "governed_stream": Path_(
                    f"{graph.base_url}/v1/chat/completions", headers, ours_stream, True
                ),
            }
            for p in paths.values():  # warm-up: connections, caches of the agent, replicas
                asyncio.run(drive(p, 4, 2.0))
            latency: dict[str, dict[str, Any]] = {}
            for name, p in paths.items():
                print(f"  {name}", flush=True)
                spy = None
                if args.profile is not None and name != "upstream" and name != "upstream_stream":
                    spy = lambda n=name: start_profiles(  # noqa: E731
                        graph, args.profile, n, args.duration
                    )
                latency[name] = {
                    str(c): measure(p, c, args.duration, c == 16, spy if c == 16 else None)
                    for c in LATENCY_LEVELS
                }
            capacity: dict[str, Any] = {}
            for name in ("governed", "ungoverned", "upstream"):
                print(f"  sweep {name}", flush=True)
                levels = [measure(paths[name], c, args.duration, False) for c in sweep]
                clean = [lv for lv in levels if lv["errors"] == 0]
                best = max(clean, key=lambda lv: lv["rps"]) if clean else None
                capacity[name] = {
                    "max_rps_no_errors": best["rps"] if best else None,
                    "at_concurrency": best["concurrency"] if best else None,
                    "levels": levels,
                }
        finally:
            graph.stop()
    finally:
        pg_stop()
        stop_group(up_proc, 10)

    added_latency = {
        name: {str(c): added(latency[name][str(c)], latency[base][str(c)]) for c in LATENCY_LEVELS}
        for name, base in (
            ("governed", "upstream"),
            ("ungoverned", "upstream"),
            ("governed_stream", "upstream_stream"),
        )
    }
    result = {
        "added_latency_ms": added_latency,
        "max_rps_no_errors": {k: v["max_rps_no_errors"] for k, v in capacity.items()},
        "cpu_ms_per_request_c16": {
            name: latency[name]["16"].get("cpu_ms_per_request") for name in latency
        },
        "latency": latency,
        "capacity": capacity,
        "machine": machine_info(),
        "config": {
            "serve_config": "configs/local.yaml",
            "upstream": f"harness/fake_upstream.py, {args.delay_ms:g} ms delay, "
            f"{args.words} words per answer",
            "prompts": f"{len(PROMPTS)} distinct chat-corpus questions, a new one per request",
            "seconds_per_level": args.duration,
            "sweep_concurrency": sweep,
            "database": "postgresql 15 (throwaway)",
        },
        "measured_at": datetime.now(timezone.utc).isoformat(),
        "bench_seconds": round(time.monotonic() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    summary = {k: result[k] for k in ("added_latency_ms", "max_rps_no_errors")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
