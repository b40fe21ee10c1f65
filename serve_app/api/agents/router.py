"""HTTP routes of agent lifecycle, undeploy and conversations (envelope responses)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from serve_app.api.agents.protocol import PatchAgentRequest
from serve_app.api.agents.service import AgentLifecycleService
from serve_app.api.deps import CurrentUser, ServicesDep, require_same_user
from serve_app.errors import success_envelope

router = APIRouter(prefix="/native-llm")


def _service(services: ServicesDep) -> AgentLifecycleService:
    return services.service(AgentLifecycleService)


@router.get("/agents")
async def list_agents(
    user: CurrentUser,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    after: str | None = None,
) -> dict:
    return success_envelope(await _service(services).list(user, limit, after))


@router.get("/agent/{agent_id}")
async def get_agent(agent_id: str, user: CurrentUser, services: ServicesDep) -> dict:
    return success_envelope(await _service(services).get(agent_id, user))


@router.patch("/agent/{agent_id}")
async def patch_agent(
    agent_id: str, body: PatchAgentRequest, user: CurrentUser, services: ServicesDep
) -> dict:
    require_same_user(body.user_id, user)
    return success_envelope(await _service(services).patch(agent_id, user, body.config))


@router.delete("/agent/{agent_id}")
async def delete_agent(agent_id: str, user: CurrentUser, services: ServicesDep) -> dict:
    return success_envelope(await _service(services).delete(agent_id, user))


@router.post("/agent/{agent_id}/undeploy")
async def undeploy(agent_id: str, user: CurrentUser, services: ServicesDep) -> dict:
    return success_envelope(await _service(services).undeploy(agent_id, user))


@router.get("/agent/{agent_id}/conversations/{conversation_id}")
async def conversation(
    agent_id: str, conversation_id: str, user: CurrentUser, services: ServicesDep
) -> dict:
    return success_envelope(await _service(services).conversation(agent_id, user, conversation_id))
