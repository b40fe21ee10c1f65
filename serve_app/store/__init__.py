"""Persistence: SQLAlchemy tables, Alembic migrations, and the Store that reads and writes them."""

from serve_app.store.records import (
    AgentNotFoundError,
    AgentRecord,
    AgentStats,
    DeploymentRecord,
    InteractionRecord,
    StoreError,
)
from serve_app.store.store import Store, hash_api_key

__all__ = [
    "AgentNotFoundError",
    "AgentRecord",
    "AgentStats",
    "DeploymentRecord",
    "InteractionRecord",
    "Store",
    "StoreError",
    "hash_api_key",
]
