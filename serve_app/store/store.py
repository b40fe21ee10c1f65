"""The Store: every read and write of the Promethios database goes through it.

Synchronous SQLAlchemy over SQLite (embedded default) or PostgreSQL
(``DATABASE_URL``). Callers receive the frozen records of ``records.py``, never
ORM objects. The schema is created and upgraded by Alembic (:meth:`Store.migrate`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
import secrets
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, TypeVar, cast

from sqlalchemy import Table, case, func, select, update
from sqlalchemy.engine import CursorResult, Engine, Result
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql.dml import Insert
from typing_extensions import Self

from serve_app.store.audit import (
    AuditKeys,
    ChainReport,
    audit_dir,
    link_rows,
    load_audit_keys,
    verify_chain,
)
from serve_app.store.checkpoints import (
    CheckpointLog,
    check_against,
    checkpoint_dir_for,
    new_checkpoints,
)
from serve_app.store.convert import _agent_record, _deployment_record, _json_copy
from serve_app.store.engine import build_engine, check_at_head, upgrade_to_head
from serve_app.store.lifecycle import LifecycleOps
from serve_app.store.models import Agent, ApiKey, Deployment, Interaction, User
from serve_app.store.records import (
    AgentNotFoundError,
    AgentRecord,
    AgentStats,
    DeploymentRecord,
    InteractionRecord,
    as_utc,
    utcnow,
)

API_KEY_PREFIX = "pn_"
API_KEY_RE = re.compile(r"pn_[A-Za-z0-9_-]{40}")
MAX_USER_ID_LEN = 128
_WRITE_ATTEMPTS = 3

T = TypeVar("T")
USERS_TABLE = cast(Table, User.__table__)
INTERACTIONS_TABLE = cast(Table, Interaction.__table__)


def hash_api_key(key: str) -> str:
    """Return the sha256 hex digest under which an API key is stored."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def production_url(production_agent_id: str) -> str:
    """Return the production chat route of a deployed agent."""
    return f"/api/v1/agents/{production_agent_id}/chat"


def _check_user_id(user_id: str) -> None:
    if not isinstance(user_id, str) or not user_id or len(user_id) > MAX_USER_ID_LEN:
        raise ValueError(f"user_id must be a non-empty string of at most {MAX_USER_ID_LEN} chars")


def _rowcount(result: Result[Any]) -> int:
    """Rows matched by an UPDATE (its result is a CursorResult)."""
    return cast(CursorResult[Any], result).rowcount


class Store(LifecycleOps):
    """Users and API keys, agents, deployments and interactions, in one SQL database."""

    def __init__(self, database_url: str, *, create_dirs: bool = True) -> None:
        """Build the engine (no connection is opened yet).

        ``create_dirs`` creates the parent directory of a SQLite file. Raises
        ``ValueError`` for a backend other than SQLite or PostgreSQL.
        """
        self.database_url = database_url
        self._engine, self._sqlite_path = build_engine(database_url, create_dirs)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._migrate_lock = threading.Lock()
        self._keys: AuditKeys | None = None
        self._checkpoints: CheckpointLog | None = None

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for tests and operations tooling)."""
        return self._engine

    @property
    def dialect(self) -> str:
        """``"sqlite"`` or ``"postgresql"``."""
        return self._engine.dialect.name

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema ---------------------------------------------------------------

    def migrate(self) -> None:
        """Upgrade the schema to the newest migration; a no-op when already there.

        Concurrent first calls are serialised: by a PostgreSQL advisory lock, or
        by a lock file beside a SQLite database. Raises on a migration failure
        (the failing migration's transaction is rolled back where the backend
        supports transactional DDL).
        """
        with self._migrate_lock:
            upgrade_to_head(self._engine, self._sqlite_path)

    def check_schema(self) -> None:
        """Raise SchemaOutOfDate unless the schema is at the newest migration (no writes)."""
        check_at_head(self._engine)

    def ping(self) -> None:
        """Run ``SELECT 1``; raises ``SQLAlchemyError`` when the database is unreachable."""
        with self._engine.connect() as conn:
            conn.execute(select(1))

    def close(self) -> None:
        """Close every pooled connection; the Store may not be used afterwards."""
        self._engine.dispose()

    # -- helpers --------------------------------------------------------------

    def _insert_ignore(self, table: Table, conflict_columns: list[str]) -> Insert:
        """Return ``INSERT ... ON CONFLICT (cols) DO NOTHING`` for this dialect."""
        if self.dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            return pg_insert(table).on_conflict_do_nothing(index_elements=conflict_columns)
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert(table).on_conflict_do_nothing(index_elements=conflict_columns)

    def _ensure_user(self, session: Session, user_id: str) -> None:
        _check_user_id(user_id)
        stmt = self._insert_ignore(USERS_TABLE, ["id"]).values(id=user_id, created_at=utcnow())
        session.execute(stmt)

    def _retrying(self, write: Callable[[Session], T]) -> T:
        """Run ``write`` in a transaction, retrying on IntegrityError (id collisions, races)."""
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with self._sessions.begin() as session:
                    return write(session)
            except IntegrityError:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    # -- users and API keys ---------------------------------------------------

    def ensure_user(self, user_id: str) -> None:
        """Create the user unless it exists. Raises ``ValueError`` for a bad user_id."""
        with self._sessions.begin() as session:
            self._ensure_user(session, user_id)

    def create_api_key(self, user_id: str) -> str:
        """Create the user if needed and return a new plaintext key ``pn_`` + 40 chars.

        Only the key's sha256 is stored; the plaintext cannot be recovered later.
        Raises ``ValueError`` for a bad user_id.
        """

        def write(session: Session) -> str:
            self._ensure_user(session, user_id)
            key = API_KEY_PREFIX + secrets.token_urlsafe(30)
            session.add(
                ApiKey(
                    user_id=user_id,
                    key_hash=hash_api_key(key),
                    prefix=key[:8],
                    created_at=utcnow(),
                )
            )
            return key

        return self._retrying(write)

    def user_for_api_key(self, key: str) -> str | None:
        """Return the user owning ``key``; None for a malformed, unknown or revoked key."""
        if not isinstance(key, str) or not API_KEY_RE.fullmatch(key):
            return None
        digest = hash_api_key(key)
        stmt = select(ApiKey.user_id, ApiKey.key_hash).where(
            ApiKey.key_hash == digest, ApiKey.revoked_at.is_(None)
        )
        with self._sessions() as session:
            row = session.execute(stmt).one_or_none()
        # Found by its digest (an index lookup); confirmed in constant time.
        if row is None or not hmac.compare_digest(row.key_hash, digest):
            return None
        return row.user_id

    def revoke_api_key(self, key: str) -> bool:
        """Revoke ``key``; return False when it was malformed, unknown or already revoked."""
        if not isinstance(key, str) or not API_KEY_RE.fullmatch(key):
            return False
        stmt = (
            update(ApiKey)
            .where(ApiKey.key_hash == hash_api_key(key), ApiKey.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        with self._sessions.begin() as session:
            return bool(_rowcount(session.execute(stmt)))

    # -- agents ---------------------------------------------------------------

    def create_agent(
        self, user_id: str, name: str, description: str | None, config: dict[str, Any]
    ) -> AgentRecord:
        """Create an agent ``native-<8 hex>`` owned by ``user_id`` (created if needed).

        ``config`` must be JSON-serialisable (``TypeError`` otherwise); a bad
        user_id raises ``ValueError``.
        """

        def write(session: Session) -> AgentRecord:
            self._ensure_user(session, user_id)
            row = Agent(
                agent_id="native-" + secrets.token_hex(4),
                user_id=user_id,
                name=name,
                description=description,
                config=_json_copy(config),
                created_at=utcnow(),
            )
            session.add(row)
            session.flush()
            return _agent_record(row)

        return self._retrying(write)

    def get_agent(self, agent_id: str, user_id: str) -> AgentRecord | None:
        """Return the agent; None when missing, deleted, or owned by another user."""
        stmt = select(Agent).where(
            Agent.agent_id == agent_id, Agent.user_id == user_id, Agent.deleted_at.is_(None)
        )
        with self._sessions() as session:
            row = session.execute(stmt).scalar_one_or_none()
            return _agent_record(row) if row is not None else None

    def list_agents(self, user_id: str) -> list[AgentRecord]:
        """Return the user's live agents, oldest first."""
        stmt = (
            select(Agent)
            .where(Agent.user_id == user_id, Agent.deleted_at.is_(None))
            .order_by(Agent.created_at, Agent.agent_id)
        )
        with self._sessions() as session:
            return [_agent_record(row) for row in session.execute(stmt).scalars()]

    def delete_agent(self, agent_id: str, user_id: str) -> bool:
        """Soft-delete the agent and retire its deployment; False when not found/owned."""
        now = utcnow()
        with self._sessions.begin() as session:
            deleted = _rowcount(
                session.execute(
                    update(Agent)
                    .where(
                        Agent.agent_id == agent_id,
                        Agent.user_id == user_id,
                        Agent.deleted_at.is_(None),
                    )
                    .values(deleted_at=now)
                )
            )
            if deleted:
                session.execute(
                    update(Deployment)
                    .where(Deployment.agent_id == agent_id, Deployment.retired_at.is_(None))
                    .values(retired_at=now, status="retired")
                )
            return bool(deleted)

    # -- deployments ----------------------------------------------------------

    def create_deployment(
        self,
        agent_id: str,
        user_id: str,
        config: dict[str, Any],
        rate_limit: dict[str, Any] | None = None,
    ) -> DeploymentRecord:
        """Deploy the agent to ``prod-<agent_id>`` and return the new deployment.

        A redeploy retires the active deployment first and keeps the same
        production_agent_id. Raises ``AgentNotFoundError`` when the agent is
        missing, deleted, or owned by another user.
        """

        def write(session: Session) -> DeploymentRecord:
            # FOR UPDATE on the agent row serialises deploys of one agent on
            # PostgreSQL; SQLite serialises writers itself. The partial unique
            # index on active production ids backs both.
            owned = session.execute(
                select(Agent.agent_id)
                .where(
                    Agent.agent_id == agent_id,
                    Agent.user_id == user_id,
                    Agent.deleted_at.is_(None),
                )
                .with_for_update()
            ).first()
            if owned is None:
                raise AgentNotFoundError(agent_id)
            now = utcnow()
            session.execute(
                update(Deployment)
                .where(Deployment.agent_id == agent_id, Deployment.retired_at.is_(None))
                .values(retired_at=now, status="retired")
            )
            production_agent_id = "prod-" + agent_id
            row = Deployment(
                deployment_id="deploy-" + secrets.token_hex(4),
                agent_id=agent_id,
                user_id=user_id,
                production_agent_id=production_agent_id,
                deployment_url=production_url(production_agent_id),
                status="deployed",
                config=_json_copy(config),
                deployed_at=now,
                rate_limit=_json_copy(rate_limit) if rate_limit else None,
            )
            session.add(row)
            session.flush()
            return _deployment_record(row)

        return self._retrying(write)

    def get_active_deployment(self, production_agent_id: str) -> DeploymentRecord | None:
        """Return the deployment serving ``production_agent_id``; None when none is active."""
        stmt = select(Deployment).where(
            Deployment.production_agent_id == production_agent_id,
            Deployment.retired_at.is_(None),
        )
        with self._sessions() as session:
            row = session.execute(stmt).scalar_one_or_none()
            return _deployment_record(row) if row is not None else None

    def get_active_deployment_for_agent(self, agent_id: str) -> DeploymentRecord | None:
        """Return the agent's active deployment; None when it is not deployed."""
        return self.get_active_deployment("prod-" + agent_id)

    # -- interactions ---------------------------------------------------------

    def insert_interactions(self, records: list[InteractionRecord]) -> int:
        """Insert the records in one transaction; return how many rows were new.

        Idempotent by message_id: a record whose message_id is already stored
        (or repeated within the batch) is skipped, on SQLite and PostgreSQL alike.
        """
        rows: dict[str, dict[str, Any]] = {}
        for rec in records:
            if rec.message_id in rows:
                continue
            row = rec.to_dict()
            row["created_at"] = rec.created_at
            row["policy_violations"] = list(rec.policy_violations)
            row["violation_count"] = rec.violation_count
            rows[rec.message_id] = row
        if not rows:
            return 0
        table = INTERACTIONS_TABLE
        stmt = self._insert_ignore(table, ["message_id"]).returning(table.c.message_id, table.c.id)
        keys = self._audit_keys()
        with self._engine.begin() as conn:
            # Only new rows join the audit chain; links are computed in insertion order.
            known = set(
                conn.execute(
                    select(table.c.message_id).where(table.c.message_id.in_(list(rows)))
                ).scalars()
            )
            new_rows = [r for m, r in rows.items() if m not in known]
            if not new_rows:
                return 0
            link_rows(conn, table, new_rows, keys)
            inserted = {m: i for m, i in conn.execute(stmt, new_rows).all()}
        # Committed: publish each touched agent's new head outside the database.
        heads: dict[str, tuple[int, str, str]] = {}
        for row in new_rows:
            if row["message_id"] in inserted:
                heads[row["agent_id"]] = (
                    inserted[row["message_id"]],
                    row["message_id"],
                    row["content_sha256"],
                )
        self.checkpoints().append(new_checkpoints(heads, keys))
        return len(inserted)

    def _audit_keys(self) -> AuditKeys:
        if self._keys is None:
            self._keys = load_audit_keys()
        return self._keys

    def checkpoints(self) -> CheckpointLog:
        """This database's signed checkpoint file (serve_app/store/checkpoints.py)."""
        if self._checkpoints is None:
            from serve_app.settings import get_settings

            base = audit_dir(get_settings())
            self._checkpoints = CheckpointLog(checkpoint_dir_for(self.database_url, base))
        return self._checkpoints

    def verify_audit_chain(self, agent_id: str) -> ChainReport:
        """Recompute the agent's audit chain and compare it with the newest signed
        checkpoint; the report names the first broken record, or the truncation or
        rewrite the checkpoint reveals (then `intact` is false)."""
        keys = self._audit_keys()
        table = INTERACTIONS_TABLE
        with self._engine.connect() as conn:
            report = verify_chain(conn, table, agent_id, keys=keys)
            cp = self.checkpoints().latest(agent_id)
            head = None
            if cp is not None:
                head = (
                    conn.execute(
                        select(table.c.message_id, table.c.content_sha256).where(
                            table.c.id == cp.head_id, table.c.agent_id == agent_id
                        )
                    )
                    .mappings()
                    .first()
                )
        checked = check_against(cp, keys, head)
        if checked is not None and not checked["ok"]:
            return dataclasses.replace(report, intact=False, checkpoint=checked)
        return dataclasses.replace(report, checkpoint=checked)

    def count_interactions(self, agent_id: str) -> int:
        """Return the number of stored interactions of the agent."""
        stmt = select(func.count()).select_from(Interaction).where(Interaction.agent_id == agent_id)
        with self._engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def agent_stats(self, agent_id: str, since: datetime | None = None) -> AgentStats:
        """Return aggregates over the agent's interactions, computed in one SQL query.

        With ``since``, only rows created at or after it count (for every field,
        ``interactions_last_hour`` included; the hour is measured from now).
        """
        i = Interaction
        hour_ago = utcnow() - timedelta(hours=1)

        def count_where(condition: Any) -> Any:
            return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

        stmt = select(
            func.count(i.id),
            count_where(i.status == "ok"),
            count_where(i.status == "blocked"),
            count_where(i.status == "error"),
            func.avg(i.trust_score),
            func.avg(i.compliance_rate),
            func.avg(i.constitutional_adherence),
            func.coalesce(func.sum(i.violation_count), 0),
            count_where(i.violation_count > 0),
            func.coalesce(func.sum(i.governance_interventions), 0),
            func.avg(i.response_time_ms),
            count_where(i.created_at >= hour_ago),
            func.min(i.created_at),
            func.max(i.created_at),
        ).where(i.agent_id == agent_id)
        if since is not None:
            stmt = stmt.where(i.created_at >= as_utc(since))
        with self._engine.connect() as conn:
            r = conn.execute(stmt).one()

        def mean(value: Any) -> float | None:
            return None if value is None else float(value)

        return AgentStats(
            total=int(r[0]),
            ok_count=int(r[1]),
            blocked_count=int(r[2]),
            error_count=int(r[3]),
            mean_trust_score=mean(r[4]),
            mean_compliance_rate=mean(r[5]),
            mean_constitutional_adherence=mean(r[6]),
            violation_count=int(r[7]),
            interactions_with_violations=int(r[8]),
            governance_interventions=int(r[9]),
            mean_response_time_ms=mean(r[10]),
            interactions_last_hour=int(r[11]),
            first_at=r[12],
            last_at=r[13],
        )
