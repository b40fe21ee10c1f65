"""The seed's /native-llm operations: agents, chat, scorecard, deploy, metrics."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import urlsplit

import httpcore

from serve_app.api.deps import Services
from serve_app.api.native.protocol import AgentConfig, ChatRequest, OpenAIBackend
from serve_app.assurance import governance_flags, native_advantages
from serve_app.conversations import budget_chars, history_within, turns_of
from serve_app.errors import BadRequest, Gone, NotFound, PayloadTooLarge
from serve_app.governed_chat import ChatResult, GovernedChat, agent_kind, upstream_of
from serve_app.netguard import AddressRefused, checked_addresses
from serve_app.store.records import AgentRecord, AgentStats, DeploymentRecord
from serve_app.upstream_registry import registry

RECENT_WINDOW = timedelta(minutes=15)
# History budget for a wrapped model whose context window the agent does not state.
DEFAULT_UPSTREAM_CONTEXT = 4096


def iso(ts: datetime | None) -> str | None:
    if ts is None:
        return None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=timezone.utc)
    return ts.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def pct(x: float | None) -> float | None:
    return None if x is None else round(100.0 * x, 2)


def share(part: int, total: int) -> float | None:
    return None if total == 0 else round(100.0 * part / total, 2)


class NativeLLMService:
    """Serves POST /native-llm/agent/create, POST .../chat, GET .../scorecard,
    POST .../deploy, GET .../metrics, GET /native-llm/model/info and the production chat."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self.chat_runner = GovernedChat(services.backends, services.policies)

    async def model_info(self) -> dict[str, Any]:
        info = self.s.info
        ev = await self.s.evidence()
        try:
            engine = await self.s.backends.model_info()
            status = "ready"
        except Exception:
            engine, status = {}, "unavailable"
        return {
            "model_name": info.model_name,
            "model_version": info.model_version,
            "base_model": info.base_model,
            "dataset_count": info.dataset_count,
            "dataset_version": info.dataset_version,
            # Trained on the governance corpus, and governance verified in front of it.
            "governance_native": ev.governance_trained_model and ev.bypass_proof,
            "capabilities": [
                "text_generation",
                "conversation",
                "governance_compliance",
                "policy_adherence",
                "trust_scoring",
            ],
            "architecture": engine.get("architecture"),
            "max_model_len": engine.get("max_model_len"),
            "policy_version": self.s.policies.version,
            "status": status,
        }

    async def context_window(self, config: dict[str, Any]) -> int | None:
        """The agent's model context window in tokens (None: a wrapped model's is unknown)."""
        backend = config.get("backend") or {}
        if backend.get("type") == "openai":
            return registry().target(backend).context_window
        return int((await self.s.backends.model_info())["max_model_len"])

    async def check_max_tokens(
        self, config: dict[str, Any], max_tokens: int, field: str
    ) -> int | None:
        """400 unless `max_tokens` fits the agent's context window; returns the window."""
        limit = await self.context_window(config)
        if limit is not None and max_tokens >= limit:
            raise BadRequest(f"{field} must be below the model's context window ({limit})")
        return limit

    async def check_config(self, config: AgentConfig) -> None:
        """What the schema cannot check: the token budget, the registered upstream's key,
        and where a tenant URL's host resolves now (checked again at every connect)."""
        await self.check_max_tokens(config.model_dump(), config.max_tokens, "config.max_tokens")
        if isinstance(config.backend, OpenAIBackend):
            target = registry().target(config.backend.model_dump())
            target.headers()  # 503 when the operator's key variable is not set
            if target.guarded:
                parts = urlsplit(target.base_url)
                port = parts.port or (443 if parts.scheme == "https" else 80)
                try:
                    await asyncio.wait_for(checked_addresses(parts.hostname or "", port), 5.0)
                except AddressRefused as exc:
                    raise BadRequest(f"config.backend.base_url: {exc}") from exc
                except (httpcore.ConnectError, TimeoutError) as exc:
                    raise BadRequest(
                        f"config.backend.base_url: {parts.hostname} does not resolve"
                    ) from exc

    async def create_agent(self, user: str, config: AgentConfig) -> dict[str, Any]:
        await self.check_config(config)
        agent = await asyncio.to_thread(
            self.s.store.create_agent, user, config.name, config.description, config.model_dump()
        )
        wrapped = agent_kind(agent) == "wrapped"
        return {
            "agent_id": agent.agent_id,
            "user_id": agent.user_id,
            "model_type": "wrapped_llm" if wrapped else "native_llm",
            "created_at": iso(agent.created_at),
            "config": {
                **agent.config,
                "governance_level": "wrapped" if wrapped else "native",
                "dataset_version": self.s.info.dataset_version,
                "policy_version": self.s.policies.version,
            },
            "governance": governance_flags(await self.s.evidence(), not wrapped),
            "status": "created",
        }

    async def get_agent(self, agent_id: str, user: str, *, fresh: bool = True) -> AgentRecord:
        """The user's agent; 404 otherwise. `fresh=False` (chat routes) may answer from the
        replica's short cache (`Services.agent_for_chat`)."""
        if fresh:
            agent = await asyncio.to_thread(self.s.store.get_agent, agent_id, user)
        else:
            agent = await self.s.agent_for_chat(agent_id, user)
        if agent is None:
            raise NotFound(f"agent {agent_id!r} not found")
        return agent

    async def chat(
        self, agent: AgentRecord, body: ChatRequest, deployment: DeploymentRecord | None = None
    ) -> dict[str, Any]:
        if len(body.message) > self.s.settings.max_message_chars:
            raise PayloadTooLarge(
                f"message is {len(body.message)} characters; the limit is "
                f"{self.s.settings.max_message_chars}"
            )
        max_tokens = body.max_tokens or int(agent.config.get("max_tokens", 128))
        limit = await self.check_max_tokens(agent.config, max_tokens, "max_tokens")
        temperature = (
            body.temperature
            if body.temperature is not None
            else agent.config.get("temperature", 0.7)
        )
        history = None
        if body.conversation_id:
            turns = await asyncio.to_thread(
                self.s.store.conversation, agent.agent_id, agent.user_id, body.conversation_id
            )
            budget = budget_chars(
                limit or DEFAULT_UPSTREAM_CONTEXT,
                max_tokens,
                body.message,
                agent.config.get("system_prompt"),
            )
            history = history_within(turns, budget)
        result = await self.chat_runner.run(
            agent,
            body.message,
            max_tokens=max_tokens,
            temperature=float(temperature),
            channel="production" if deployment else "agent",
            deployment_id=deployment.deployment_id if deployment else None,
            history=history,
        )
        data = self._chat_payload(agent, result, deployment)
        if body.conversation_id:
            await asyncio.to_thread(
                self.s.store.add_turns, turns_of(agent, body.conversation_id, result)
            )
            data["conversation_id"] = body.conversation_id
            data["history_turns"] = len(history or [])
        return data

    def _chat_payload(
        self, agent: AgentRecord, r: ChatResult, deployment: DeploymentRecord | None
    ) -> dict[str, Any]:
        data: dict[str, Any] = {
            "agent_id": agent.agent_id,
            "message_id": r.message_id,
            "timestamp": iso(r.timestamp),
            "input": r.input,
            "response": r.response,
            "governance_metrics": {
                "trust_score": r.scores.trust_score,
                "compliance_rate": r.scores.compliance_rate,
                "policy_violations": r.scores.policy_violations,
                "constitutional_adherence": r.scores.constitutional_adherence,
                "response_time_ms": r.response_time_ms,
                "governance_interventions": r.scores.governance_interventions,
                "action": r.action,
            },
            "model_info": self._model_of(agent),
            "usage": {
                "prompt_tokens": r.prompt_tokens,
                "completion_tokens": r.completion_tokens,
                "total_tokens": r.prompt_tokens + r.completion_tokens,
            },
        }
        if deployment is not None:
            data["production_agent_id"] = deployment.production_agent_id
            data["deployment_id"] = deployment.deployment_id
        return data

    def _model_of(self, agent: AgentRecord) -> dict[str, Any]:
        upstream = upstream_of(agent)
        if upstream is not None:
            return {"model": upstream["model"], "version": None, "governance": "wrapped"}
        return {
            "model": self.s.info.model_name,
            "version": self.s.info.model_version,
            "governance": "native",
            "dataset_version": self.s.info.dataset_version,
        }

    async def _stats(self, agent_id: str, since: datetime | None = None) -> AgentStats:
        await self.s.backends.flush()
        return await asyncio.to_thread(self.s.store.agent_stats, agent_id, since)

    async def scorecard(self, agent: AgentRecord) -> dict[str, Any]:
        st = await self._stats(agent.agent_id)
        answered = st.ok_count + st.blocked_count
        return {
            "agent_id": agent.agent_id,
            "generated_at": iso(datetime.now(timezone.utc)),
            "model_info": {
                "model_name": self.s.info.model_name,
                "dataset_count": self.s.info.dataset_count,
            },
            "governance_scorecard": {
                "overall_trust_score": pct(st.mean_trust_score),
                "constitutional_compliance": pct(st.mean_constitutional_adherence),
                "policy_adherence": pct(st.mean_compliance_rate),
                "governance_interventions": st.governance_interventions,
                "violation_count": st.violation_count,
                # Not measured (it was a copy of success_rate): availability needs health
                # probes over the window, which are not recorded per agent yet.
                "uptime_percentage": None,
            },
            "performance_metrics": {
                "average_response_time": _round(st.mean_response_time_ms),
                "total_interactions": st.total,
                "success_rate": share(answered, st.total),
                "error_rate": share(st.error_count, st.total),
                "throughput": st.interactions_last_hour,
            },
            "native_advantages": native_advantages(await self.s.evidence(), st.violation_count),
        }

    async def metrics(self, agent: AgentRecord) -> dict[str, Any]:
        st = await self._stats(agent.agent_id)
        recent = await asyncio.to_thread(
            self.s.store.agent_stats, agent.agent_id, datetime.now(timezone.utc) - RECENT_WINDOW
        )
        return {
            "agent_id": agent.agent_id,
            "real_time_metrics": {
                "trust_score": _round(st.mean_trust_score, 4),
                "compliance_rate": _round(st.mean_compliance_rate, 4),
                "average_response_time": _round(st.mean_response_time_ms),
                "total_interactions": st.total,
                "violation_count": st.violation_count,
                "uptime_percentage": None,  # not measured (see the scorecard)
                "last_updated": iso(st.last_at),
            },
            "recent_window": {
                "window_seconds": int(RECENT_WINDOW.total_seconds()),
                "trust_score": _round(recent.mean_trust_score, 4),
                "compliance_rate": _round(recent.mean_compliance_rate, 4),
                "average_response_time": _round(recent.mean_response_time_ms),
                "interactions": recent.total,
                "violation_count": recent.violation_count,
            },
            "governance_status": governance_flags(
                await self.s.evidence(), agent_kind(agent) == "native"
            ),
        }

    async def deploy(
        self, agent: AgentRecord, rate_limit: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        rate_limit = {k: v for k, v in (rate_limit or {}).items() if v is not None} or None
        dep = await asyncio.to_thread(
            self.s.store.create_deployment,
            agent.agent_id,
            agent.user_id,
            dict(agent.config),
            rate_limit,
        )
        return await self.deployment_payload(dep)

    async def deployment_payload(self, dep: DeploymentRecord) -> dict[str, Any]:
        """A deployment as deploy and undeploy report it; `features` says what is running."""
        ev = await self.s.evidence()
        return {
            "deployment_id": dep.deployment_id,
            "production_agent_id": dep.production_agent_id,
            "deployment_url": dep.deployment_url,
            "status": dep.status,
            "deployed_at": iso(dep.deployed_at),
            "retired_at": iso(dep.retired_at),
            "rate_limit": dep.rate_limit,
            "features": {
                "load_balancing": (ev.llm_replicas_running or 0) > 1,  # running, not allowed
                "rate_limiting": bool(dep.rate_limit) and self.s.limiter is not None,
                "monitoring": ev.writer_ok,
                "sla_guarantees": False,
            },
        }

    async def production_target(self, production_agent_id: str, user: str):
        dep = await asyncio.to_thread(self.s.store.get_active_deployment, production_agent_id)
        if dep is None or dep.user_id != user:
            last = await asyncio.to_thread(self.s.store.latest_deployment, production_agent_id)
            if last is not None and last.user_id == user and not last.is_active:
                raise Gone(f"production agent {production_agent_id!r} was undeployed")
            raise NotFound(f"production agent {production_agent_id!r} not found")
        agent = await self.get_agent(dep.agent_id, user)
        return dataclasses.replace(agent, config=dict(dep.config)), dep


def _round(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)
