"""Bench-only routes: not an API. Off (404) unless the application arg `bench_routes: true`
is set (only `bench/run.py` sets it; `configs/` and the RayService never do), and even
then each call needs the operator's admin key (`PROMETHIOS_ADMIN_KEY`, sent as
`X-Admin-Key`) beside a user's key: 403 otherwise.

POST /bench/ungoverned/{agent_id}/chat   the same exchange with no governance scoring
                                         (still authenticated, rate-limited and recorded),
                                         so `make bench` can state governance's overhead
POST /bench/writer?n=N                   push N synthetic records through the metrics
                                         writer, one batch at a time, each flushed before
                                         the next: its sustained insert rate, without a
                                         backlog that other tenants' records wait behind
"""

from __future__ import annotations

import hmac
import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request

from serve_app.api.deps import CurrentUser, ServicesDep
from serve_app.api.limits import admit, settler
from serve_app.api.native.protocol import ChatRequest
from serve_app.assurance import governed
from serve_app.errors import Forbidden, NotFound, success_envelope
from serve_app.governed_chat import upstream_of
from serve_app.store.records import InteractionRecord

router = APIRouter(prefix="/bench")


def _require_enabled(services: ServicesDep, request: Request) -> None:
    if not services.bench_enabled:
        raise NotFound("bench routes are disabled (application arg bench_routes)")
    admin = services.settings.admin_key
    given = request.headers.get("x-admin-key", "")
    if not admin or not hmac.compare_digest(given.encode(), admin.encode()):
        raise Forbidden("bench routes need the operator's admin key (X-Admin-Key)")


@router.post("/ungoverned/{agent_id}/chat")
async def ungoverned_chat(
    agent_id: str, body: ChatRequest, request: Request, user: CurrentUser, services: ServicesDep
) -> dict:
    _require_enabled(services, request)
    from serve_app.api.native.router import _service

    svc = _service(services)
    agent = await svc.get_agent(agent_id, user, fresh=False)  # as the governed route
    admission = await admit(services, request, None, user)  # rate limits are not governance
    started = time.perf_counter()
    message_id = f"msg-{uuid.uuid4().hex[:16]}"
    # Ungoverned by the operator's choice (admin key, bench_routes): named as such.
    with governed("bench: ungoverned on purpose"):
        gen = await services.backends.generate(
            [{"role": "user", "content": body.message}],
            {
                "max_tokens": body.max_tokens or int(agent.config.get("max_tokens", 128)),
                "temperature": body.temperature if body.temperature is not None else 0.7,
            },
            message_id,
            upstream=upstream_of(agent),  # a wrapped agent: its upstream, as governed chat
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
    request: Request,
    user: CurrentUser,
    services: ServicesDep,
    n: Annotated[int, Query(gt=0, le=100_000)] = 20_000,
    batch: Annotated[int, Query(gt=0, le=2_000)] = 1000,
) -> dict:
    _require_enabled(services, request)
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
        # Written before the next batch: the writer never holds more than one batch of
        # bench records ahead of other tenants' records (nor fills the spool's bound).
        await services.backends.flush()
    elapsed = time.perf_counter() - started
    return success_envelope(
        {"records": n, "seconds": round(elapsed, 4), "records_per_s": round(n / elapsed, 1)}
    )
