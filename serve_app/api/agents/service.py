"""Agent lifecycle: list, get, patch, soft delete; undeploy; stored conversations."""

from __future__ import annotations

import asyncio
from typing import Any

from serve_app.api.agents.protocol import AgentPatch
from serve_app.api.deps import Services
from serve_app.api.native.protocol import AgentConfig
from serve_app.api.native.service import NativeLLMService, iso
from serve_app.errors import BadRequest, NotFound
from serve_app.store.records import AgentRecord


class AgentLifecycleService:
    """Serves GET /native-llm/agents, GET/PATCH/DELETE /native-llm/agent/{id},
    POST .../undeploy and GET .../conversations/{conversation_id}."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self.native = NativeLLMService(services)

    def agent_payload(self, a: AgentRecord) -> dict[str, Any]:
        return {
            "agent_id": a.agent_id,
            "user_id": a.user_id,
            "name": a.name,
            "description": a.description,
            "created_at": iso(a.created_at),
            "config": a.config,
        }

    async def list(self, user: str, limit: int, after: str | None) -> dict[str, Any]:
        try:
            rows, more = await asyncio.to_thread(self.s.store.list_agents_page, user, limit, after)
        except LookupError as exc:
            raise BadRequest(f"after: unknown agent {after!r}") from exc
        return {
            "agents": [self.agent_payload(a) for a in rows],
            "has_more": more,
            "next_after": rows[-1].agent_id if more and rows else None,
        }

    async def get(self, agent_id: str, user: str) -> dict[str, Any]:
        agent = await self.native.get_agent(agent_id, user)
        data = self.agent_payload(agent)
        dep = await asyncio.to_thread(self.s.store.get_active_deployment_for_agent, agent_id)
        data["deployment"] = await self.native.deployment_payload(dep) if dep else None
        return data

    async def patch(self, agent_id: str, user: str, patch: AgentPatch) -> dict[str, Any]:
        agent = await self.native.get_agent(agent_id, user)
        merged = {**agent.config, **patch.model_dump(exclude_unset=True)}
        config = AgentConfig.model_validate(merged)
        await self.native.check_config(config)
        updated = await asyncio.to_thread(
            self.s.store.update_agent,
            agent_id,
            user,
            config.name,
            config.description,
            config.model_dump(),
        )
        self.s.forget_agent(agent_id)
        if updated is None:
            raise NotFound(f"agent {agent_id!r} not found")
        return self.agent_payload(updated)

    async def delete(self, agent_id: str, user: str) -> dict[str, Any]:
        deleted = await asyncio.to_thread(self.s.store.delete_agent, agent_id, user)
        self.s.forget_agent(agent_id)
        if not deleted:
            raise NotFound(f"agent {agent_id!r} not found")
        return {"agent_id": agent_id, "deleted": True}

    async def undeploy(self, agent_id: str, user: str) -> dict[str, Any]:
        await self.native.get_agent(agent_id, user)
        dep = await asyncio.to_thread(self.s.store.retire_deployment, agent_id, user)
        if dep is None:
            raise NotFound(f"agent {agent_id!r} has no active deployment")
        return await self.native.deployment_payload(dep)

    async def conversation(self, agent_id: str, user: str, conversation_id: str) -> dict:
        await self.native.get_agent(agent_id, user)
        turns = await asyncio.to_thread(self.s.store.conversation, agent_id, user, conversation_id)
        if not turns:
            raise NotFound(f"conversation {conversation_id!r} not found")
        return {
            "agent_id": agent_id,
            "conversation_id": conversation_id,
            "turns": [
                {
                    "role": t.role,
                    "content": t.content,
                    "message_id": t.message_id,
                    "created_at": iso(t.created_at),
                }
                for t in turns
            ],
        }
