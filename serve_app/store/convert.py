"""Rows to records: the converters the Store and its lifecycle operations share (apart,
so that neither module imports the other)."""

from __future__ import annotations

import json
from typing import Any

from serve_app.store.models import Agent, Deployment
from serve_app.store.records import AgentRecord, DeploymentRecord


def _json_copy(value: dict[str, Any]) -> dict[str, Any]:
    """Return a JSON round-trip copy (what a read returns); TypeError if not serialisable."""
    return json.loads(json.dumps(value))


def _agent_record(row: Agent) -> AgentRecord:
    return AgentRecord(
        agent_id=row.agent_id,
        user_id=row.user_id,
        name=row.name,
        description=row.description,
        config=dict(row.config),
        created_at=row.created_at,
    )


def _deployment_record(row: Deployment) -> DeploymentRecord:
    return DeploymentRecord(
        deployment_id=row.deployment_id,
        agent_id=row.agent_id,
        user_id=row.user_id,
        production_agent_id=row.production_agent_id,
        deployment_url=row.deployment_url,
        status=row.status,
        config=dict(row.config),
        deployed_at=row.deployed_at,
        retired_at=row.retired_at,
        rate_limit=dict(row.rate_limit) if row.rate_limit else None,
    )
