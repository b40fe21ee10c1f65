"""Bench-only routes, enabled by the application arg `bench_routes: true` (404 otherwise).

POST /bench/ungoverned/{agent_id}/chat   the same exchange with no governance scoring
                                         (still authenticated, rate-limited and recorded),
                                         so `make bench` can state governance's overhead
POST /bench/writer?n=N                   push N synthetic records through the metrics
                                         writer and flush: its sustained insert rate
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request

from serve_app.api.deps import CurrentUser, ServicesDep
from serve_app.api.limits import admit, settler
from serve_app.api.native.protocol import ChatRequest
from serve_app.errors import NotFound, success_envelope
from serve_app.store.records import InteractionRecord

router = APIRouter(prefix="/bench")


def _require_enabled(services: ServicesDep) -> None:
    if not services.bench_enabled:
        raise NotFound("bench routes are disabled (application arg bench_routes)")


@router.post("/ungoverned/{agent_id}/chat")
async def ungoverned_chat(
    agent_id: str, body: ChatRequest, request: Request, user: CurrentUser, services: ServicesDep
) -> dict:
    _require_enabled(services)
    from serve_app.api.native.router import _service

    svc = _service(services)
    agent = await svc.get_agent(agent_id, user)
    admission = await admit(services, request, None)  # rate limits are not governance
    started = time.perf_counter()
    message_id = f"msg-{uuid.uuid4().hex[:16]}"
    gen = await services.backends.generate(
        [{"role": "user", "content": body.message}],
        {
            "max_tokens": body.max_tokens or int(agent.config.get("max_tokens", 128)),
            "temperature": body.temperature if body.temperature is not None else 0.7,
        },
        message_id,
    )
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    await settler(services)(admission, gen.prompt_tokens + gen.completion_tokens)
    await services.backends.record(
        [
            InteractionRecord(
                message_id=message_id,
                agent_id=agent.agent_id,
                user_id=user,
                input=body.message,
                response=gen.text,
                response_time_ms=elapsed_ms,
                prompt_tokens=gen.prompt_tokens,
                completion_tokens=gen.completion_tokens,
            )
        ]
    )
    return success_envelope(
        {
            "response": gen.text,
            "response_time_ms": round(elapsed_ms, 3),
            "usage": {
                "prompt_tokens": gen.prompt_tokens,
                "completion_tokens": gen.completion_tokens,
            },
        }
    )


@router.post("/writer")
async def writer_throughput(
    user: CurrentUser,
    services: ServicesDep,
    n: Annotated[int, Query(gt=0, le=200_000)] = 20_000,
    batch: Annotated[int, Query(gt=0, le=10_000)] = 1000,
) -> dict:
    _require_enabled(services)
    agent_id = f"bench-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    for offset in range(0, n, batch):
        records = [
            InteractionRecord(
                message_id=f"bench-{agent_id}-{i}",
                agent_id=agent_id,
                user_id=user,
                input="bench",
                response="bench",
                trust_score=1.0,
                compliance_rate=1.0,
                constitutional_adherence=1.0,
                response_time_ms=1.0,
            )
            for i in range(offset, min(n, offset + batch))
        ]
        await services.backends.record(records)
    await services.backends.flush()
    elapsed = time.perf_counter() - started
    return success_envelope(
        {"records": n, "seconds": round(elapsed, 4), "records_per_s": round(n / elapsed, 1)}
    )
