"""The tamper-evident audit chain over interaction records, per agent.

Each interaction row stores `content_sha256` = sha256 of its canonical content, which
includes `prev_sha256`, the content hash of the agent's previous record (64 zeros for
the first). Editing, deleting or reordering a stored row breaks the chain at that row
(or at the next one, for a deletion); `verify_chain` recomputes it and names the first
broken record. Links are computed in the store's insert path, in insertion order, while
the agent's chain is locked (PostgreSQL advisory lock; SQLite has one writer).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, Table, func, select, text

from serve_app.store.records import as_utc

GENESIS = "0" * 64
CHAINED_FIELDS = (
    "message_id", "agent_id", "user_id", "deployment_id", "channel", "input", "response",
    "status", "trust_score", "compliance_rate", "constitutional_adherence",
    "policy_violations", "violation_count", "governance_interventions", "response_time_ms",
    "prompt_tokens", "completion_tokens", "created_at", "prev_sha256",
)  # fmt: skip


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return as_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value


def canonical(row: dict[str, Any]) -> bytes:
    """The bytes that are hashed: the chained fields as sorted, compact JSON."""
    content = {k: _plain(row.get(k)) for k in CHAINED_FIELDS}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_hash(row: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(row)).hexdigest()


def link_rows(conn: Connection, table: Table, rows: list[dict[str, Any]]) -> None:
    """Set prev_sha256 and content_sha256 on `rows` (new rows, in insertion order)."""
    agents = sorted({r["agent_id"] for r in rows})
    if conn.dialect.name == "postgresql":
        for agent in agents:  # sorted: no lock-order deadlocks between writers
            conn.execute(text("SELECT pg_advisory_xact_lock(hashtext(:a))"), {"a": agent})
    last: dict[str, str] = {}
    for agent in agents:
        prev = conn.execute(
            select(table.c.content_sha256)
            .where(table.c.agent_id == agent, table.c.content_sha256.is_not(None))
            .order_by(table.c.id.desc())
            .limit(1)
        ).scalar_one_or_none()
        last[agent] = prev or GENESIS
    for row in rows:
        row["prev_sha256"] = last[row["agent_id"]]
        row["content_sha256"] = content_hash(row)
        last[row["agent_id"]] = row["content_sha256"]


@dataclass(frozen=True)
class ChainReport:
    """The result of verifying one agent's chain."""

    agent_id: str
    records: int
    intact: bool
    first_broken: dict[str, Any] | None  # {"message_id", "id", "position", "reason"}

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "records": self.records,
            "intact": self.intact,
            "first_broken": self.first_broken,
        }


def verify_chain(conn: Connection, table: Table, agent_id: str, page: int = 1000) -> ChainReport:
    """Recompute the agent's chain in insertion order; name the first broken record."""
    expected_prev = GENESIS
    position = 0
    last_id = 0
    started = False
    while True:
        result = conn.execute(
            select(table)
            .where(table.c.agent_id == agent_id, table.c.id > last_id)
            .order_by(table.c.id)
            .limit(page)
        ).mappings()
        batch = [dict(r) for r in result]
        if not batch:
            break
        for row in batch:
            position += 1
            last_id = row["id"]
            reason = None
            if row.get("content_sha256") is None:
                if started:
                    reason = "record has no hash (inserted outside the audited path)"
                else:
                    continue  # written before the audit chain existed
            elif row["prev_sha256"] != expected_prev:
                reason = "link to the previous record does not match (a record was removed, "
                reason += "reordered or its hash altered)"
            elif content_hash(row) != row["content_sha256"]:
                reason = "content does not match its hash (the record was altered)"
            if reason is not None:
                broken = {
                    "message_id": row["message_id"],
                    "id": row["id"],
                    "position": position,
                    "reason": reason,
                }
                total = _count(conn, table, agent_id)
                return ChainReport(agent_id, total, False, broken)
            started = True
            expected_prev = row["content_sha256"]
    return ChainReport(agent_id, position, True, None)


def _count(conn: Connection, table: Table, agent_id: str) -> int:
    stmt = select(func.count()).select_from(table).where(table.c.agent_id == agent_id)
    return int(conn.execute(stmt).scalar_one())
