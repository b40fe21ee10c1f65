"""One governed exchange: screen the input, generate, screen the output, record.

No model text leaves `GovernedChat.run` without an output verdict, and the
exchange is handed to the metrics writer before the answer is returned.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, replace
from datetime import datetime, timezone

from serve_app.assurance import governed
from serve_app.backends import Backends
from serve_app.errors import ApiError
from serve_app.governance.policy import PolicySet
from serve_app.governance.scorer import InteractionScores, Verdict, combine
from serve_app.governance.stream_guard import StreamGuard
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
    finish_reason: str | None = None


@dataclass(frozen=True)
class StreamEvent:
    """One step of a governed stream: text that passed governance, a refusal, or the end.

    The last event carries `result` (the recorded exchange) and no text.
    """

    text: str = ""
    refusal: bool = False
    result: ChatResult | None = None


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


def build_messages(
    agent: AgentRecord, user_text: str, history: list[dict[str, str]] | None = None
) -> list[dict[str, str]]:
    """The agent's system prompt, earlier turns (already screened), then the user's turn."""
    system = agent.config.get("system_prompt")
    messages = [{"role": "system", "content": system}] if system else []
    messages.extend(history or [])
    messages.append({"role": "user", "content": user_text})
    return messages


def governance_settings(agent: AgentRecord) -> tuple[str, float, str | None]:
    """The agent's compliance mode, trust threshold and policy name, with their defaults."""
    config = agent.config
    return (
        config.get("compliance_mode", "standard"),
        float(config.get("trust_threshold", 0.0)),
        config.get("policy"),
    )


def upstream_of(agent: AgentRecord) -> dict | None:
    """A wrapped agent's upstream model config; None for agents on the served model."""
    backend = agent.config.get("backend") or {}
    return backend if backend.get("type") == "openai" else None


def agent_kind(agent: AgentRecord) -> str:
    """ "wrapped" for an agent over an upstream model, "native" for the served model."""
    return "wrapped" if upstream_of(agent) is not None else "native"


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
        history: list[dict[str, str]] | None = None,
    ) -> ChatResult:
        """Answer `message` as `agent`; records the exchange (status ok, blocked or error).

        `history` holds earlier turns supplied by the client; each is screened as input.
        """
        started = time.perf_counter()
        message_id = f"msg-{uuid.uuid4().hex[:16]}"
        mode, threshold, policy = governance_settings(agent)
        verdicts: list[Verdict] = []
        gen = None
        try:
            verdict_in, screened = await self._screen_input(
                message, history, mode, threshold, policy
            )
            verdicts.extend(screened[1])
            verdicts.insert(0, verdict_in)
            if verdict_in.blocked:
                response, status, action = refusal(verdict_in, "input"), "blocked", "block"
            else:
                with governed("GovernedChat.run"):  # input screened above, output below
                    gen = await self.backends.generate(
                        build_messages(agent, verdict_in.text, screened[0]),
                        {"max_tokens": max_tokens, "temperature": temperature},
                        message_id,
                        upstream=upstream_of(agent),
                    )
                verdict_out = await self.backends.evaluate(
                    gen.text, "output", mode, threshold, policy
                )
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
            finish_reason=gen.finish_reason if gen else None,
        )
        await self.backends.record([self._record(agent, result, channel, deployment_id)])
        return result

    async def _screen_input(
        self,
        message: str,
        history: list[dict[str, str]] | None,
        mode: str,
        threshold: float,
        policy: str | None = None,
    ) -> tuple[Verdict, tuple[list[dict[str, str]], list[Verdict]]]:
        """The message's verdict (a blocked history turn blocks it) and the screened history."""
        texts = [message] + [t["content"] for t in history or []]
        found = await asyncio.gather(
            *(self.backends.evaluate(t, "input", mode, threshold, policy) for t in texts)
        )
        verdict_in, turns = found[0], list(found[1:])
        screened = [
            {"role": t["role"], "content": v.text}
            for t, v in zip(history or [], turns, strict=True)
        ]
        blocking = next((v for v in turns if v.blocked), None)
        if blocking is not None and not verdict_in.blocked:
            verdict_in = replace(
                verdict_in, action="block", text="", violations=list(blocking.violations)
            )
            turns = [v for v in turns if v is not blocking]
        return verdict_in, (screened, turns)

    async def stream(
        self,
        agent: AgentRecord,
        message: str,
        *,
        max_tokens: int,
        temperature: float,
        channel: str = "agent",
        deployment_id: str | None = None,
        history: list[dict[str, str]] | None = None,
        check_every: int | None = None,
        hold_back: int | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Stream the answer; each text event has passed output governance (StreamGuard).

        A block stops the stream with a refusal event. The exchange's record is reserved
        with the writer before the first event and completed when the stream ends (on a
        client disconnect, with the text sent so far); a reservation never completed is
        written as an interrupted stream.
        """
        started = time.perf_counter()
        message_id = f"msg-{uuid.uuid4().hex[:16]}"
        mode, threshold, policy = governance_settings(agent)
        verdicts: list[Verdict] = []
        pieces: list[str] = []
        counts = [0, 0]
        finish: str | None = None
        status, action = "ok", "allow"
        recorded = False

        def result() -> ChatResult:
            return ChatResult(
                message_id=message_id,
                timestamp=datetime.now(timezone.utc),
                input=message,
                response="".join(pieces),
                status=status,
                action=action,
                scores=combine(verdicts, self.policies),
                response_time_ms=round((time.perf_counter() - started) * 1000.0, 3),
                prompt_tokens=counts[0],
                completion_tokens=counts[1],
                finish_reason=finish,
            )

        try:
            verdict_in, screened = await self._screen_input(
                message, history, mode, threshold, policy
            )
            verdicts.append(verdict_in)
            verdicts.extend(screened[1])
            # No text leaves without its record: the writer accepts (spools) this stream's
            # record before the first chunk; the final record completes it. Refused here,
            # the client gets a 503 and no text; lost later, the reservation stands.
            await self.backends.reserve(self._record(agent, result(), channel, deployment_id))
            if verdict_in.blocked:
                status, action, finish = "blocked", "block", "content_filter"
                pieces.append(refusal(verdict_in, "input"))
                yield StreamEvent(text=pieces[-1], refusal=True)
            else:
                guard = StreamGuard(
                    lambda text: self.backends.evaluate(text, "output", mode, threshold, policy),
                    **{
                        k: v
                        for k, v in (("check_every", check_every), ("hold_back", hold_back))
                        if v is not None
                    },
                )
                messages = build_messages(agent, verdict_in.text, screened[0])
                sampling = {"max_tokens": max_tokens, "temperature": temperature}
                with governed("GovernedChat.stream"):  # every delta passes the StreamGuard
                    deltas = self.backends.stream(
                        messages, sampling, message_id, upstream=upstream_of(agent)
                    )
                async with aclosing(deltas) as it:
                    async for delta in it:
                        counts[:] = [delta.prompt_tokens, delta.completion_tokens]
                        finish = delta.finish_reason or finish
                        step = await guard.feed(delta.text)
                        if step.release:
                            pieces.append(step.release)
                            yield StreamEvent(text=step.release)
                        if step.stopped:
                            break
                if not guard.stopped:
                    step = await guard.finish()
                    if step.release:
                        pieces.append(step.release)
                        yield StreamEvent(text=step.release)
                assert guard.last_verdict is not None
                verdicts.append(guard.last_verdict)
                if guard.stopped:
                    status, action, finish = "blocked", "block", "content_filter"
                    out = replace(guard.last_verdict, action="block")
                    pieces.append(("\n\n" if pieces else "") + refusal(out, "output"))
                    yield StreamEvent(text=pieces[-1], refusal=True)
                else:
                    action = max((verdict_in.action, guard.last_verdict.action), key=_rank)
        except ApiError:
            recorded = True
            # Completes the reservation (if one was taken) with what was sent so far.
            failed = replace(self._record(agent, result(), channel, deployment_id), status="error")
            try:
                await self.backends.record([failed])
            except ApiError:
                pass  # the reservation stands for it
            raise
        except (asyncio.CancelledError, GeneratorExit):
            if not recorded:
                recorded = True
                rec = self._record(agent, result(), channel, deployment_id)
                asyncio.ensure_future(self.backends.record([rec]))
            raise
        final = result()
        recorded = True
        await self.backends.record([self._record(agent, final, channel, deployment_id)])
        yield StreamEvent(result=final)

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
