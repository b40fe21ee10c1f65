"""`make bench`: governed vs ungoverned vs vLLM's own OpenAI server, in one run.

Starts a throwaway PostgreSQL, vLLM's OpenAI server on the embedded model (measured
first, then stopped), then our graph on the same model; drives the same load at
concurrency 1, 16 and 64 with an async client (each request a different question from
the chat corpus, as in service: no answer from governance's embedding cache); measures
the metrics writer's insert rate into PostgreSQL; writes bench/results/latest.json.
Loopback only, bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import random
import secrets
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

from bench import cpu  # noqa: E402
from harness.launcher import create_agent, create_user_key, start_graph  # noqa: E402
from harness.vllm_server import start_vllm_server  # noqa: E402
from serve_app.model.build import ensure_default_model  # noqa: E402
from tests.support.postgres import start_throwaway_postgres  # noqa: E402


def bench_prompts() -> list[str]:
    """The distinct customer-service questions of the shipped chat corpus (refusal
    categories left out), in a fixed shuffled order. Each request of a run asks the next
    one, so governance screens new texts as it would in service: with the six fixed
    prompts used before 2026-11-30 (and temperature 0, so six fixed answers) every
    screening after the first round was an embedding-cache hit, and the governed figures
    left the encoder out."""
    from serve_app.model.corpus import chat_turns

    prompts = {user for category, user, _ in chat_turns() if not category.startswith("refusal")}
    ordered = sorted(prompts)
    random.Random(0).shuffle(ordered)
    return ordered


PROMPTS = bench_prompts()
_NEXT_PROMPT = itertools.count()  # shared by every drive of a run: no prompt is repeated
LEVELS = (1, 16, 64)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


async def drive(
    url: str, headers: dict[str, str], body_for, concurrency: int, duration_s: float, tokens_of
) -> dict[str, Any]:
    """`concurrency` workers post for `duration_s` seconds; latency, rps, tokens, errors."""
    latencies: list[float] = []
    tokens = 0
    errors = 0
    stop_at = time.perf_counter() + duration_s
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, timeout=120.0, limits=limits) as client:

        async def worker() -> None:
            nonlocal tokens, errors
            while time.perf_counter() < stop_at:
                prompt = PROMPTS[next(_NEXT_PROMPT) % len(PROMPTS)]
                t0 = time.perf_counter()
                try:
                    resp = await client.post(url, json=body_for(prompt))
                    ok = resp.status_code == 200
                except httpx.HTTPError:
                    ok = False
                dt = time.perf_counter() - t0
                if ok:
                    latencies.append(dt * 1000.0)
                    tokens += tokens_of(resp.json())
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "seconds": round(elapsed, 3),
        "rps": round(len(latencies) / elapsed, 3),
        "p50_ms": _r(percentile(latencies, 0.50)),
        "p95_ms": _r(percentile(latencies, 0.95)),
        "p99_ms": _r(percentile(latencies, 0.99)),
        "mean_ms": _r(statistics.fmean(latencies)) if latencies else None,
        "tokens_per_s": round(tokens / elapsed, 1),
    }


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 2)


def run_levels(url, headers, body_for, tokens_of, duration_s) -> dict[str, Any]:
    """Each level's figures; at concurrency 16 also the CPU ms per request by process role."""
    out = {}
    asyncio.run(drive(url, headers, body_for, 4, 3.0, tokens_of))  # warm-up
    for c in LEVELS:
        before = cpu.snapshot()
        out[str(c)] = asyncio.run(drive(url, headers, body_for, c, duration_s, tokens_of))
        if c == 16:
            out[str(c)]["cpu_ms_per_request"] = cpu.per_request(
                before, cpu.snapshot(), out[str(c)]["requests"]
            )
        print(f"  c={c}: {out[str(c)]}", flush=True)
    return out


def bench_peer(model_dir: Path, max_tokens: int, duration_s: float, log: Path) -> dict[str, Any]:
    server = start_vllm_server(model_dir, log)
    try:
        return run_levels(
            f"{server.base_url}/chat/completions",
            {},
            lambda m: {
                "model": server.model,
                "messages": [{"role": "user", "content": m}],
                "max_tokens": max_tokens,
                "temperature": 0.0,
            },
            lambda j: j["usage"]["completion_tokens"],
            duration_s,
        )
    finally:
        server.stop()


def machine_info() -> dict[str, Any]:
    """The machine a result was measured on (each bench's JSON)."""
    return {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }


def lift_rate_limits() -> None:
    """The benches measure capacity, not the per-key limits: their defaults (600 requests a
    minute per key) would answer 429 to most of a run. Set before the graph starts."""
    for scope in ("KEY", "USER"):
        os.environ.setdefault(f"PROMETHIOS_{scope}_REQUESTS_PER_MINUTE", "100000000")
        os.environ.setdefault(f"PROMETHIOS_{scope}_TOKENS_PER_MINUTE", "1000000000")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=12.0, help="seconds per level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--writer-records", type=int, default=20000)
    parser.add_argument("--skip-peer", action="store_true", help="only our graph (A/B runs)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "latest.json")
    args = parser.parse_args()
    t_start = time.monotonic()
    lift_rate_limits()
    model_dir = ensure_default_model()
    work = Path(tempfile.mkdtemp(prefix="promethios-bench-"))
    pg_url, pg_stop = start_throwaway_postgres(Path(tempfile.mkdtemp(prefix="promethios-pg-")))
    results: dict[str, Any] = {}
    try:
        print("peer: vLLM's OpenAI server on the same model", flush=True)
        peer = (
            {str(c): {"rps": None, "p50_ms": None} for c in LEVELS}
            if args.skip_peer
            else bench_peer(model_dir, args.max_tokens, args.duration, work / "vllm.log")
        )
        print("graph: starting serve run", flush=True)
        admin = "admin-" + secrets.token_hex(16)  # the bench routes need the operator's key
        graph = start_graph(
            work, pg_url, args={"bench_routes": True}, env={"PROMETHIOS_ADMIN_KEY": admin}
        )
        try:
            key = create_user_key(pg_url, "bench")
            headers = {"Authorization": f"Bearer {key}"}
            bench_headers = {**headers, "X-Admin-Key": admin}
            agent = create_agent(
                graph.base_url,
                key,
                {
                    "name": "bench",
                    "max_tokens": args.max_tokens,
                    "temperature": 0.0,
                    "compliance_mode": "standard",
                },
            )

            def body(m: str) -> dict:
                return {"message": m, "max_tokens": args.max_tokens, "temperature": 0.0}

            def toks(j: dict) -> int:
                return int(j["data"]["usage"]["completion_tokens"])

            print("governed", flush=True)
            governed = run_levels(
                f"{graph.base_url}/native-llm/agent/{agent}/chat",
                headers,
                body,
                toks,
                args.duration,
            )
            print("ungoverned (bench-only route)", flush=True)
            ungoverned = run_levels(
                f"{graph.base_url}/bench/ungoverned/{agent}/chat",
                bench_headers,
                body,
                toks,
                args.duration,
            )
            writer = httpx.post(
                f"{graph.base_url}/bench/writer",
                headers=bench_headers,
                timeout=300,
                params={"n": args.writer_records},
            ).json()["data"]
            print(f"writer: {writer}", flush=True)
        finally:
            graph.stop()
    finally:
        pg_stop()
    info = json.loads((model_dir / "build_info.json").read_text())
    top = governed["16"]
    results = {
        "governed_rps": top["rps"],
        "ungoverned_rps": ungoverned["16"]["rps"],
        "peer_vllm_rps": peer["16"]["rps"],
        "peer_vllm_p50_ms": peer["16"]["p50_ms"],
        "p50_ms": top["p50_ms"],
        "p95_ms": top["p95_ms"],
        "p99_ms": top["p99_ms"],
        "tokens_per_s": top["tokens_per_s"],
        "errors": sum(lvl["errors"] for lvl in (*governed.values(), *ungoverned.values())),
        "writer_records_per_s": writer["records_per_s"],
        "ratios": {
            "governed_vs_peer_c16": _ratio(governed["16"]["rps"], peer["16"]["rps"]),
            "governed_vs_peer_c64": _ratio(governed["64"]["rps"], peer["64"]["rps"]),
            "governed_vs_ungoverned_c16": _ratio(governed["16"]["rps"], ungoverned["16"]["rps"]),
            "governed_vs_ungoverned_c64": _ratio(governed["64"]["rps"], ungoverned["64"]["rps"]),
            "p50_c1_governed_over_peer": _ratio(governed["1"]["p50_ms"], peer["1"]["p50_ms"]),
        },
        "cpu_ms_per_request_c16": {
            "governed": governed["16"].get("cpu_ms_per_request"),
            "ungoverned": ungoverned["16"].get("cpu_ms_per_request"),
            "peer_vllm": peer["16"].get("cpu_ms_per_request"),
        },
        "levels": {"governed": governed, "ungoverned": ungoverned, "peer_vllm": peer},
        "machine": machine_info(),
        "config": {
            "serve_config": "configs/local.yaml",
            "model": str(model_dir),
            "model_params": info.get("param_count"),
            "max_tokens": args.max_tokens,
            "temperature": 0.0,
            "prompts": f"{len(PROMPTS)} distinct chat-corpus questions, a new one per request",
            "seconds_per_level": args.duration,
            "database": "postgresql 15 (throwaway)",
        },
        "measured_at": datetime.now(timezone.utc).isoformat(),
        "bench_seconds": round(time.monotonic() - t_start, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: v for k, v in results.items() if k != "levels"}, indent=2))
    return 0


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 3)


if __name__ == "__main__":
    sys.exit(main())
