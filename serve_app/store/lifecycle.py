"""Store operations for agent lifecycle, deployments, idempotency keys and conversations.

A mixin of `Store` (kept apart so each module stays one idea); it uses the
Store's session factory and returns the same frozen records.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.exc import IntegrityError

from serve_app.store.convert import _agent_record, _deployment_record, _json_copy
from serve_app.store.models import Agent, ConversationTurn, Deployment, IdempotencyKey
from serve_app.store.records import AgentRecord, DeploymentRecord, utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session, sessionmaker

Claim = Literal["new", "done", "pending", "mismatch"]


@dataclass(frozen=True)
class TurnRecord:
    """One stored conversation turn."""

    conversation_id: str
    agent_id: str
    user_id: str
    message_id: str
    role: str
    content: str
    created_at: datetime


class LifecycleOps:
    """Agent pages and edits, undeploy, idempotency keys, conversation turns."""

    _sessions: sessionmaker[Session]

    # -- agents ---------------------------------------------------------------

    def list_agents_page(
        self, user_id: str, limit: int, after: str | None = None
    ) -> tuple[list[AgentRecord], bool]:
        """Live agents oldest first, starting after agent `after`; and whether more follow."""
        stmt = select(Agent).where(Agent.user_id == user_id, Agent.deleted_at.is_(None))
        with self._sessions() as session:
            if after is not None:
                anchor = session.execute(
                    select(Agent.created_at).where(
                        Agent.agent_id == after, Agent.user_id == user_id
                    )
                ).scalar_one_or_none()
                if anchor is None:
                    raise LookupError(after)
                stmt = stmt.where(
                    or_(
                        Agent.created_at > anchor,
                        and_(Agent.created_at == anchor, Agent.agent_id > after),
                    )
                )
            stmt = stmt.order_by(Agent.created_at, Agent.agent_id).limit(limit + 1)
            rows = [_agent_record(r) for r in session.execute(stmt).scalars()]
        return rows[:limit], len(rows) > limit

    def update_agent(
        self, agent_id: str, user_id: str, name: str, description: str | None, config: dict
    ) -> AgentRecord | None:
        """Replace the agent's name, description and config; None when not found/owned."""
        with self._sessions.begin() as session:
            row = session.execute(
                select(Agent).where(
                    Agent.agent_id == agent_id,
                    Agent.user_id == user_id,
                    Agent.deleted_at.is_(None),
                )
            ).scalar_one_or_none()
            if row is None:
                return None
            row.name, row.description = name, description
            row.config = _json_copy(config)
            session.flush()
            return _agent_record(row)

    # -- deployments ----------------------------------------------------------

    def retire_deployment(self, agent_id: str, user_id: str) -> DeploymentRecord | None:
        """Retire the agent's active deployment; returns it, or None when none was active."""
        with self._sessions.begin() as session:
            row = session.execute(
                select(Deployment).where(
                    Deployment.agent_id == agent_id,
                    Deployment.user_id == user_id,
                    Deployment.retired_at.is_(None),
                )
            ).scalar_one_or_none()
            if row is None:
                return None
            row.retired_at, row.status = utcnow(), "retired"
            session.flush()
            return _deployment_record(row)

    def latest_deployment(self, production_agent_id: str) -> DeploymentRecord | None:
        """The newest deployment under this production id, active or retired."""
        stmt = (
            select(Deployment)
            .where(Deployment.production_agent_id == production_agent_id)
            .order_by(Deployment.deployed_at.desc())
            .limit(1)
        )
        with self._sessions() as session:
            row = session.execute(stmt).scalar_one_or_none()
            return _deployment_record(row) if row is not None else None

    def active_deployments(self, user_id: str) -> list[DeploymentRecord]:
        stmt = select(Deployment).where(
            Deployment.user_id == user_id, Deployment.retired_at.is_(None)
        )
        with self._sessions() as session:
            return [_deployment_record(r) for r in session.execute(stmt).scalars()]

    # -- idempotency keys -----------------------------------------------------

    def claim_idempotency_key(
        self, user_id: str, scope: str, key: str, request_hash: str
    ) -> tuple[Claim, dict[str, Any] | None]:
        """Claim a key for a new request, or report the first request's state.

        "new": claimed, do the work then `complete_idempotency_key`; "done": the
        stored response; "pending": the first request is still running;
        "mismatch": the key was used with a different request.
        """
        try:
            with self._sessions.begin() as session:
                session.add(
                    IdempotencyKey(
                        user_id=user_id,
                        scope=scope,
                        key=key,
                        request_hash=request_hash,
                        created_at=utcnow(),  # response left SQL NULL (not JSON null)
                    )
                )
            return "new", None
        except IntegrityError:
            pass
        with self._sessions() as session:
            row = session.get(IdempotencyKey, (user_id, scope, key))
            if row is None:  # released between the two statements
                return "pending", None
            if row.request_hash != request_hash:
                return "mismatch", None
            if row.response is None:
                return "pending", None
            return "done", dict(row.response)

    def complete_idempotency_key(
        self, user_id: str, scope: str, key: str, response: dict[str, Any]
    ) -> None:
        with self._sessions.begin() as session:
            session.execute(
                update(IdempotencyKey)
                .where(
                    IdempotencyKey.user_id == user_id,
                    IdempotencyKey.scope == scope,
                    IdempotencyKey.key == key,
                )
                .values(response=_json_copy(response))
            )

    def release_idempotency_key(self, user_id: str, scope: str, key: str) -> None:
        """Forget a claim whose request failed, so a retry can run."""
        with self._sessions.begin() as session:
            session.execute(
                delete(IdempotencyKey).where(
                    IdempotencyKey.user_id == user_id,
                    IdempotencyKey.scope == scope,
                    IdempotencyKey.key == key,
                    IdempotencyKey.response.is_(None),
                )
            )

    # -- conversations --------------------------------------------------------

    def add_turns(self, turns: list[TurnRecord]) -> None:
        with self._sessions.begin() as session:
            session.add_all(
                ConversationTurn(
                    conversation_id=t.conversation_id,
                    agent_id=t.agent_id,
                    user_id=t.user_id,
                    message_id=t.message_id,
                    role=t.role,
                    content=t.content,
                    created_at=t.created_at,
                )
                for t in turns
            )

    def conversation(self, agent_id: str, user_id: str, conversation_id: str) -> list[TurnRecord]:
        """The conversation's turns, oldest first (empty when unknown)."""
        stmt = (
            select(ConversationTurn)
            .where(
                ConversationTurn.agent_id == agent_id,
                ConversationTurn.user_id == user_id,
                ConversationTurn.conversation_id == conversation_id,
            )
            .order_by(ConversationTurn.id)
        )
        with self._sessions() as session:
            return [
                TurnRecord(
                    conversation_id=r.conversation_id,
                    agent_id=r.agent_id,
                    user_id=r.user_id,
                    message_id=r.message_id,
                    role=r.role,
                    content=r.content,
                    created_at=r.created_at,
                )
                for r in session.execute(stmt).scalars()
            ]
