"""Initial schema: users, api_keys, agents, deployments, interactions.

Revision ID: 0001
Revises:
Create Date: 2024-01-15 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies of the column types: a migration must not follow later model edits.
TS = sa.DateTime(timezone=True)
JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("revoked_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_api_keys_user_id_users", ondelete="CASCADE"
        ),
        sa.UniqueConstraint("key_hash", name="uq_api_keys_key_hash"),
    )
    op.create_index("ix_api_keys_user_id", "api_keys", ["user_id"])

    op.create_table(
        "agents",
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("name", sa.String(256), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("config", JSONType, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("deleted_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("agent_id", name="pk_agents"),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_agents_user_id_users", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_agents_user_id", "agents", ["user_id"])

    op.create_table(
        "deployments",
        sa.Column("deployment_id", sa.String(64), nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("production_agent_id", sa.String(80), nullable=False),
        sa.Column("deployment_url", sa.String(256), nullable=False),
        sa.Column("status", sa.String(32), nullable=False),
        sa.Column("config", JSONType, nullable=False),
        sa.Column("deployed_at", TS, nullable=False),
        sa.Column("retired_at", TS, nullable=True),
        sa.PrimaryKeyConstraint("deployment_id", name="pk_deployments"),
        sa.ForeignKeyConstraint(
            ["agent_id"],
            ["agents.agent_id"],
            name="fk_deployments_agent_id_agents",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name="fk_deployments_user_id_users", ondelete="CASCADE"
        ),
    )
    op.create_index("ix_deployments_agent_id", "deployments", ["agent_id"])
    op.create_index("ix_deployments_user_id", "deployments", ["user_id"])
    op.create_index("ix_deployments_production_agent_id", "deployments", ["production_agent_id"])
    op.create_index(
        "uq_deployments_active_production_agent_id",
        "deployments",
        ["production_agent_id"],
        unique=True,
        sqlite_where=sa.text("retired_at IS NULL"),
        postgresql_where=sa.text("retired_at IS NULL"),
    )

    op.create_table(
        "interactions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("message_id", sa.String(128), nullable=False),
        sa.Column("agent_id", sa.String(64), nullable=False),
        sa.Column("user_id", sa.String(128), nullable=False),
        sa.Column("deployment_id", sa.String(64), nullable=True),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("input", sa.Text(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("trust_score", sa.Float(), nullable=True),
        sa.Column("compliance_rate", sa.Float(), nullable=True),
        sa.Column("constitutional_adherence", sa.Float(), nullable=True),
        sa.Column("policy_violations", JSONType, nullable=False),
        sa.Column("violation_count", sa.Integer(), server_default="0", nullable=False),
        sa.Column("governance_interventions", sa.Integer(), server_default="0", nullable=False),
        sa.Column("response_time_ms", sa.Float(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("completion_tokens", sa.Integer(), server_default="0", nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_interactions"),
        sa.UniqueConstraint("message_id", name="uq_interactions_message_id"),
    )
    op.create_index("ix_interactions_created_at", "interactions", ["created_at"])
    op.create_index(
        "ix_interactions_agent_id_created_at", "interactions", ["agent_id", "created_at"]
    )


def downgrade() -> None:
    op.drop_table("interactions")
    op.drop_table("deployments")
    op.drop_table("agents")
    op.drop_table("api_keys")
    op.drop_table("users")
