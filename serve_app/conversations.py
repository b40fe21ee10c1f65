"""Stored conversations: earlier turns fed back to the model within its context window."""

from __future__ import annotations

from serve_app.governed_chat import ChatResult
from serve_app.store.lifecycle import TurnRecord
from serve_app.store.records import AgentRecord

# Conservative: the embedded model's BPE averages above 3 characters per token.
CHARS_PER_TOKEN = 2


def history_within(turns: list[TurnRecord], budget_chars: int) -> list[dict[str, str]]:
    """The most recent whole turns whose text fits `budget_chars`, oldest first."""
    kept: list[dict[str, str]] = []
    used = 0
    for t in reversed(turns):
        used += len(t.content) + 16
        if used > budget_chars:
            break
        kept.append({"role": t.role, "content": t.content})
    kept.reverse()
    while kept and kept[0]["role"] != "user":
        kept.pop(0)
    return kept


def budget_chars(max_model_len: int, max_tokens: int, message: str, system: str | None) -> int:
    room = (max_model_len - max_tokens - 16) * CHARS_PER_TOKEN
    return max(0, room - len(message) - len(system or ""))


def turns_of(agent: AgentRecord, conversation_id: str, r: ChatResult) -> list[TurnRecord]:
    """The user's turn and the answer that left governance, to store."""
    common = dict(conversation_id=conversation_id, agent_id=agent.agent_id, user_id=agent.user_id)
    return [
        TurnRecord(
            **common, message_id=r.message_id, role="user", content=r.input, created_at=r.timestamp
        ),
        TurnRecord(
            **common,
            message_id=r.message_id,
            role="assistant",
            content=r.response,
            created_at=r.timestamp,
        ),
    ]
