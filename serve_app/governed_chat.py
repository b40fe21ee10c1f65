"""One governed exchange: screen the input, generate, screen the output, record.

No model text leaves `GovernedChat.run` without an output verdict, and the
exchange is handed to the metrics writer before the answer is returned.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from serve_app.backends import Backends
from serve_app.errors import ApiError
from serve_app.governance.policy import PolicySet
from serve_app.governance.scorer import InteractionScores, Verdict, combine
from serve_app.store.records import AgentRecord, InteractionRecord


@dataclass(frozen=True)
class ChatResult:
    message_id: str
    timestamp: datetime
    input: str
    response: str
    status: str
    action: str
    scores: InteractionScores
    response_time_ms: float
    prompt_tokens: int
    completion_tokens: int


def refusal(verdict: Verdict, direction: str) -> str:
    """The text sent instead of a blocked input or output, naming what blocked it."""
    policies = sorted({v.policy_id for v in verdict.violations})
    why = f" ({', '.join(policies)})" if policies else " (trust score below the agent's threshold)"
    if direction == "input":
        return (
            "I can't help with that request: it conflicts with this agent's "
            f"governance policy{why}."
        )
    return f"I can't share that response: governance withheld it{why}."


def build_messages(agent: AgentRecord, user_text: str) -> list[dict[str, str]]:
    system = agent.config.get("system_prompt")
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": user_text})
    return messages


class GovernedChat:
    """Runs governed exchanges for agents through the backends."""

    def __init__(self, backends: Backends, policies: PolicySet) -> None:
        self.backends = backends
        self.policies = policies

    async def run(
        self,
        agent: AgentRecord,
        message: str,
        *,
        max_tokens: int,
        temperature: float,
        channel: str = "agent",
        deployment_id: str | None = None,
    ) -> ChatResult:
        """Answer `message` as `agent`; records the exchange (status ok, blocked or error)."""
        started = time.perf_counter()
        message_id = f"msg-{uuid.uuid4().hex[:16]}"
        mode = agent.config.get("compliance_mode", "standard")
        threshold = float(agent.config.get("trust_threshold", 0.0))
        verdicts: list[Verdict] = []
        gen = None
        try:
            verdict_in = await self.backends.evaluate(message, "input", mode, threshold)
            verdicts.append(verdict_in)
            if verdict_in.blocked:
                response, status, action = refusal(verdict_in, "input"), "blocked", "block"
            else:
                gen = await self.backends.generate(
                    build_messages(agent, verdict_in.text),
                    {"max_tokens": max_tokens, "temperature": temperature},
                    message_id,
                )
                verdict_out = await self.backends.evaluate(gen.text, "output", mode, threshold)
                verdicts.append(verdict_out)
                if verdict_out.blocked:
                    response, status, action = refusal(verdict_out, "output"), "blocked", "block"
                else:
                    response, status = verdict_out.text, "ok"
                    action = max((verdict_in.action, verdict_out.action), key=_rank)
        except ApiError as exc:
            await self._record_error(
                agent, message, message_id, started, channel, deployment_id, exc
            )
            raise
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        scores = combine(verdicts, self.policies)
        result = ChatResult(
            message_id=message_id,
            timestamp=datetime.now(timezone.utc),
            input=message,
            response=response,
            status=status,
            action=action,
            scores=scores,
            response_time_ms=round(elapsed_ms, 3),
            prompt_tokens=gen.prompt_tokens if gen else 0,
            completion_tokens=gen.completion_tokens if gen else 0,
        )
        await self.backends.record([self._record(agent, result, channel, deployment_id)])
        return result

    def _record(
        self, agent: AgentRecord, r: ChatResult, channel: str, deployment_id: str | None
    ) -> InteractionRecord:
        return InteractionRecord(
            message_id=r.message_id,
            agent_id=agent.agent_id,
            user_id=agent.user_id,
            deployment_id=deployment_id,
            channel=channel,
            input=r.input,
            response=r.response,
            status=r.status,
            trust_score=r.scores.trust_score,
            compliance_rate=r.scores.compliance_rate,
            constitutional_adherence=r.scores.constitutional_adherence,
            policy_violations=r.scores.policy_violations,
            governance_interventions=r.scores.governance_interventions,
            response_time_ms=r.response_time_ms,
            prompt_tokens=r.prompt_tokens,
            completion_tokens=r.completion_tokens,
            created_at=r.timestamp,
        )

    async def _record_error(
        self,
        agent: AgentRecord,
        message: str,
        message_id: str,
        started: float,
        channel: str,
        deployment_id: str | None,
        exc: ApiError,
    ) -> None:
        if exc.status_code < 500:
            return
        record = InteractionRecord(
            message_id=message_id,
            agent_id=agent.agent_id,
            user_id=agent.user_id,
            deployment_id=deployment_id,
            channel=channel,
            input=message,
            response="",
            status="error",
            trust_score=None,
            compliance_rate=None,
            constitutional_adherence=None,
            policy_violations=[],
            governance_interventions=0,
            response_time_ms=round((time.perf_counter() - started) * 1000.0, 3),
            prompt_tokens=0,
            completion_tokens=0,
            created_at=datetime.now(timezone.utc),
        )
        try:
            await self.backends.record([record])
        except ApiError:
            pass


_RANKS = {"allow": 0, "flag": 1, "redact": 2, "block": 3}


def _rank(action: str) -> int:
    return _RANKS[action]
