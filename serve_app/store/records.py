"""Plain, frozen, picklable records returned by the Store.

Callers never hold ORM objects: every read converts rows into these dataclasses,
which are safe to pass between threads and through Ray (they pickle).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any

CHANNELS = ("agent", "production")
STATUSES = ("ok", "blocked", "error")


def utcnow() -> datetime:
    """Return the current time as a timezone-aware UTC datetime."""
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """Return ``value`` in UTC; a naive datetime is taken to be UTC already."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


class StoreError(Exception):
    """Base class of the errors the Store raises on purpose."""


class AgentNotFoundError(StoreError, LookupError):
    """The agent does not exist, is deleted, or belongs to another user."""


@dataclass(frozen=True)
class AgentRecord:
    """One agent: a named configuration over the served model, owned by one user."""

    agent_id: str
    user_id: str
    name: str
    description: str | None
    config: dict[str, Any]
    created_at: datetime


@dataclass(frozen=True)
class DeploymentRecord:
    """One deployment of an agent to its production endpoint."""

    deployment_id: str
    agent_id: str
    user_id: str
    production_agent_id: str
    deployment_url: str
    status: str
    config: dict[str, Any]
    deployed_at: datetime
    retired_at: datetime | None
    rate_limit: dict[str, Any] | None = None

    @property
    def is_active(self) -> bool:
        """True while this deployment serves the production route."""
        return self.retired_at is None


@dataclass(frozen=True)
class InteractionRecord:
    """One answered request (chat turn), as the metrics writer persists it.

    Scores are ``None`` when they were not computed (for example a request that
    failed before scoring). ``created_at`` defaults to now, in UTC.
    """

    message_id: str
    agent_id: str
    user_id: str
    deployment_id: str | None = None
    channel: str = "agent"
    input: str = ""
    response: str = ""
    status: str = "ok"
    trust_score: float | None = None
    compliance_rate: float | None = None
    constitutional_adherence: float | None = None
    policy_violations: list[dict[str, Any]] = field(default_factory=list)
    governance_interventions: int = 0
    response_time_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    created_at: datetime = field(default_factory=utcnow)

    def __post_init__(self) -> None:
        if self.channel not in CHANNELS:
            raise ValueError(f"channel must be one of {CHANNELS}, got {self.channel!r}")
        if self.status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {self.status!r}")
        object.__setattr__(self, "created_at", as_utc(self.created_at))

    @property
    def violation_count(self) -> int:
        """Number of policy violations recorded on this interaction."""
        return len(self.policy_violations)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict; ``created_at`` becomes an ISO-8601 string.

        Shallow (nested lists are shared, not copied): it is on the writer's hot path,
        where `asdict`'s deep copy cost 4x the time of the JSON encoding it feeds.
        """
        data = {name: getattr(self, name) for name in _FIELD_NAMES}
        data["created_at"] = self.created_at.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InteractionRecord:
        """Build a record from :meth:`to_dict` output; unknown keys are ignored.

        Raises ``KeyError`` when a required field is missing and ``ValueError``
        when channel, status or created_at is invalid.
        """
        names = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in names}
        created = kwargs.get("created_at")
        if isinstance(created, str):
            kwargs["created_at"] = datetime.fromisoformat(created.replace("Z", "+00:00"))
        elif created is None:
            kwargs.pop("created_at", None)
        if kwargs.get("policy_violations") is None:
            kwargs["policy_violations"] = []
        for required in ("message_id", "agent_id", "user_id"):
            if required not in kwargs:
                raise KeyError(required)
        return cls(**kwargs)


@dataclass(frozen=True)
class AgentStats:
    """Aggregates over an agent's interactions (optionally since a time).

    Means are ``None`` when no row carries a value; ``first_at``/``last_at`` are
    ``None`` when there are no rows. ``interactions_last_hour`` is relative to
    the time of the query, regardless of ``since``.
    """

    total: int
    ok_count: int
    blocked_count: int
    error_count: int
    mean_trust_score: float | None
    mean_compliance_rate: float | None
    mean_constitutional_adherence: float | None
    violation_count: int
    interactions_with_violations: int
    governance_interventions: int
    mean_response_time_ms: float | None
    interactions_last_hour: int
    first_at: datetime | None
    last_at: datetime | None


_FIELD_NAMES = tuple(f.name for f in fields(InteractionRecord))
