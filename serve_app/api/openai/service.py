"""The OpenAI-compatible chat and model listing, governed like the seed's chat route."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from serve_app.api.deps import Services
from serve_app.api.limits import Admission
from serve_app.api.native.service import NativeLLMService
from serve_app.api.openai.protocol import ChatCompletionRequest, openai_error_body
from serve_app.errors import ApiError, BadRequest, NotFound, PayloadTooLarge
from serve_app.governed_chat import ChatResult, StreamEvent
from serve_app.store.records import AgentRecord, DeploymentRecord

log = logging.getLogger("promethios.openai")

FINISH = {"stop": "stop", "length": "length", "abort": "stop", None: "stop"}


class OpenAIService:
    """Serves POST /v1/chat/completions (stream or not), GET /v1/models, GET /v1/models/{model}."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self.native = NativeLLMService(services)

    async def resolve(self, model: str, user: str) -> tuple[AgentRecord, DeploymentRecord | None]:
        """The agent a model name means (an agent id or a production agent id); 404 otherwise."""
        try:
            if model.startswith("prod-"):
                return await self.native.production_target(model, user)
            return await self.native.get_agent(model, user, fresh=False), None
        except NotFound as exc:
            exc.code = "model_not_found"
            exc.message = f"The model '{model}' does not exist or you do not have access to it."
            raise

    async def list_models(self, user: str) -> dict[str, Any]:
        agents = await asyncio.to_thread(self.s.store.list_agents, user)
        deployed = await asyncio.to_thread(self.s.store.active_deployments, user)
        data = [_model(a.agent_id, a.created_at.timestamp(), user) for a in agents]
        data += [_model(d.production_agent_id, d.deployed_at.timestamp(), user) for d in deployed]
        return {"object": "list", "data": data}

    async def get_model(self, model: str, user: str) -> dict[str, Any]:
        agent, dep = await self.resolve(model, user)
        created = (dep.deployed_at if dep else agent.created_at).timestamp()
        return _model(model, created, user)

    async def _arguments(
        self, agent: AgentRecord, body: ChatCompletionRequest
    ) -> tuple[str, list[dict[str, str]], int, float]:
        *earlier, last = body.messages
        if last.role != "user":
            raise BadRequest("the last message must have role 'user'")
        message = last.text()
        if not message:
            raise BadRequest("the last user message is empty")
        total = sum(len(m.text()) for m in body.messages)
        if total > self.s.settings.max_message_chars:
            raise PayloadTooLarge(
                f"messages hold {total} characters; the limit is "
                f"{self.s.settings.max_message_chars}"
            )
        history = [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in earlier
            if m.text()
        ]
        max_tokens = (
            body.max_completion_tokens
            or body.max_tokens
            or int(agent.config.get("max_tokens", 128))
        )
        await self.native.check_max_tokens(agent.config, max_tokens, "max_tokens")
        temperature = (
            body.temperature
            if body.temperature is not None
            else float(agent.config.get("temperature", 0.7))
        )
        return message, history, max_tokens, temperature

    async def complete(
        self, agent: AgentRecord, dep: DeploymentRecord | None, body: ChatCompletionRequest
    ) -> tuple[dict[str, Any], ChatResult]:
        message, history, max_tokens, temperature = await self._arguments(agent, body)
        r = await self.native.chat_runner.run(
            agent,
            message,
            max_tokens=max_tokens,
            temperature=temperature,
            channel="production" if dep else "agent",
            deployment_id=dep.deployment_id if dep else None,
            history=history,
        )
        finish = "content_filter" if r.status == "blocked" else FINISH.get(r.finish_reason, "stop")
        return {
            "id": f"chatcmpl-{r.message_id}",
            "object": "chat.completion",
            "created": int(r.timestamp.timestamp()),
            "model": body.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": r.response, "refusal": None},
                    "logprobs": None,
                    "finish_reason": finish,
                }
            ],
            "usage": _usage(r),
            "governance": _governance(r),
        }, r

    async def open_stream(
        self, agent: AgentRecord, dep: DeploymentRecord | None, body: ChatCompletionRequest
    ) -> tuple[AsyncIterator[StreamEvent], StreamEvent]:
        """The governed event stream and its first event (errors before it are HTTP errors)."""
        message, history, max_tokens, temperature = await self._arguments(agent, body)
        events = self.native.chat_runner.stream(
            agent,
            message,
            max_tokens=max_tokens,
            temperature=temperature,
            channel="production" if dep else "agent",
            deployment_id=dep.deployment_id if dep else None,
            history=history,
            check_every=self.s.settings.stream_check_every,
            hold_back=self.s.settings.stream_hold_back,
        )
        try:
            first = await events.__anext__()
        except BaseException:
            await events.aclose()
            raise
        return events, first

    async def sse(
        self,
        events: AsyncIterator[StreamEvent],
        first: StreamEvent,
        body: ChatCompletionRequest,
        settle: Any,
        admission: Admission | None,
    ) -> AsyncIterator[str]:
        """OpenAI's chunk stream: role, content deltas, finish, usage (if asked), [DONE]."""
        created = int(time.time())
        cid = "chatcmpl-pending"
        result: ChatResult | None = None

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            payload = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "system_fingerprint": None,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            return f"data: {json.dumps(payload)}\n\n"

        try:
            yield chunk({"role": "assistant", "content": ""})
            event: StreamEvent | None = first
            while event is not None:
                if event.result is not None:
                    result = event.result
                    cid = f"chatcmpl-{result.message_id}"
                    finish = (
                        "content_filter"
                        if result.status == "blocked"
                        else FINISH.get(result.finish_reason, "stop")
                    )
                    yield chunk({}, finish)
                    if body.stream_options and body.stream_options.include_usage:
                        usage = {
                            "id": cid,
                            "object": "chat.completion.chunk",
                            "created": created,
                            "model": body.model,
                            "choices": [],
                            "usage": _usage(result),
                            "governance": _governance(result),
                        }
                        yield f"data: {json.dumps(usage)}\n\n"
                    break
                if event.text:
                    yield chunk({"content": event.text})
                event = await anext(events, None)
        except ApiError as exc:
            body_ = openai_error_body(exc.status_code, exc.code, exc.message)
            yield f"data: {json.dumps(body_)}\n\n"
        finally:
            await events.aclose()  # type: ignore[attr-defined]
            if admission is not None and result is not None:
                await settle(admission, result.prompt_tokens + result.completion_tokens)
        yield "data: [DONE]\n\n"


def _model(model_id: str, created: float, user: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": int(created), "owned_by": user}


def _usage(r: ChatResult) -> dict[str, int]:
    return {
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "total_tokens": r.prompt_tokens + r.completion_tokens,
    }


def _governance(r: ChatResult) -> dict[str, Any]:
    return {
        "message_id": r.message_id,
        "status": r.status,
        "action": r.action,
        "trust_score": r.scores.trust_score,
        "compliance_rate": r.scores.compliance_rate,
        "constitutional_adherence": r.scores.constitutional_adherence,
        "governance_interventions": r.scores.governance_interventions,
        "policy_violations": r.scores.policy_violations,
    }
