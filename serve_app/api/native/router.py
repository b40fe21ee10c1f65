"""HTTP routes of the seed's API: parse, call the service, wrap in the envelope."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response

from serve_app.api.deps import CurrentUser, Services, ServicesDep, require_same_user
from serve_app.api.idempotency import idempotent
from serve_app.api.limits import admit, settler
from serve_app.api.native.protocol import ChatRequest, CreateAgentRequest, DeployRequest
from serve_app.api.native.service import NativeLLMService
from serve_app.errors import success_envelope
from serve_app.settings import get_settings
from serve_app.store.records import AgentRecord, DeploymentRecord
from serve_app.upstream_registry import registry

router = APIRouter()
UserIdQuery = Annotated[str | None, Query()]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key")]


def _service(services: ServicesDep) -> NativeLLMService:
    return services.service(NativeLLMService)


@router.get("/native-llm/model/info")
async def model_info(user: CurrentUser, services: ServicesDep) -> dict:
    return success_envelope(await _service(services).model_info())


@router.get("/native-llm/upstreams")
async def upstreams(user: CurrentUser) -> dict:
    """The upstreams a wrapped agent may name, and their models (never URLs or keys)."""
    entries = registry().entries()
    listed = [{"name": n, "models": e.models} for n, e in sorted(entries.items())]
    return success_envelope(
        {"upstreams": listed, "tenant_urls": get_settings().tenant_upstream_urls}
    )


@router.post("/native-llm/agent/create")
async def create_agent(
    body: CreateAgentRequest,
    user: CurrentUser,
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
) -> dict:
    require_same_user(body.user_id, user)
    data = await idempotent(
        services.store,
        user,
        "agent.create",
        idempotency_key,
        body.model_dump(mode="json"),
        lambda: _service(services).create_agent(user, body.config),
    )
    return success_envelope(data)


async def _limited_chat(
    services: Services,
    request: Request,
    response: Response,
    agent: AgentRecord,
    body: ChatRequest,
    deployment: DeploymentRecord | None,
    user: str,
) -> dict:
    """A governed chat under the key's, the user's (and deployment's) rate limits, limit
    headers set."""
    admission = await admit(services, request, deployment, user)
    data = await _service(services).chat(agent, body, deployment)
    await settler(services)(admission, data["usage"]["total_tokens"])
    if admission is not None:
        response.headers.update(admission.headers())
    return success_envelope(data)


@router.post("/native-llm/agent/{agent_id}/chat")
async def chat(
    agent_id: str,
    body: ChatRequest,
    request: Request,
    response: Response,
    user: CurrentUser,
    services: ServicesDep,
) -> dict:
    require_same_user(body.user_id, user)
    svc = _service(services)
    agent = await svc.get_agent(agent_id, user, fresh=False)
    return await _limited_chat(services, request, response, agent, body, None, user)


@router.get("/native-llm/agent/{agent_id}/scorecard")
async def scorecard(
    agent_id: str, user: CurrentUser, services: ServicesDep, user_id: UserIdQuery = None
) -> dict:
    require_same_user(user_id, user)
    svc = _service(services)
    return success_envelope(await svc.scorecard(await svc.get_agent(agent_id, user)))


@router.post("/native-llm/agent/{agent_id}/deploy")
async def deploy(
    agent_id: str,
    user: CurrentUser,
    services: ServicesDep,
    body: DeployRequest | None = None,
    idempotency_key: IdempotencyKey = None,
) -> dict:
    require_same_user(body.user_id if body else None, user)
    svc = _service(services)
    agent = await svc.get_agent(agent_id, user)
    rate_limit = body.rate_limit.model_dump() if body and body.rate_limit else None
    data = await idempotent(
        services.store,
        user,
        f"agent.deploy:{agent_id}",
        idempotency_key,
        {"rate_limit": rate_limit},
        lambda: svc.deploy(agent, rate_limit),
    )
    return success_envelope(data)


@router.get("/native-llm/agent/{agent_id}/metrics")
async def metrics(
    agent_id: str, user: CurrentUser, services: ServicesDep, user_id: UserIdQuery = None
) -> dict:
    require_same_user(user_id, user)
    svc = _service(services)
    return success_envelope(await svc.metrics(await svc.get_agent(agent_id, user)))


@router.post("/api/v1/agents/{production_agent_id}/chat")
async def production_chat(
    production_agent_id: str,
    body: ChatRequest,
    request: Request,
    response: Response,
    user: CurrentUser,
    services: ServicesDep,
) -> dict:
    require_same_user(body.user_id, user)
    svc = _service(services)
    agent, deployment = await svc.production_target(production_agent_id, user)
    return await _limited_chat(services, request, response, agent, body, deployment, user)
