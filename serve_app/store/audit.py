"""The tamper-evident audit chain over interaction records, per agent.

Each interaction row stores `content_sha256` = HMAC-SHA256, under the operator's audit
key named by `chain_key_id`, of its canonical content, which includes `prev_sha256`
(the previous record's hash; 64 zeros for the first) and the key id. Editing, deleting
or reordering a stored row breaks the chain at that row (or at the next one, for a
deletion); rewriting a suffix with recomputed hashes needs the key. Deleting the newest
rows leaves an intact shorter chain: the signed checkpoints the writer publishes outside
the database (serve_app/store/checkpoints.py) catch that. `verify_chain` recomputes it
and names the first broken record. Links are computed in the store's insert path, in
insertion order, while the agent's chain is locked (PostgreSQL advisory lock; SQLite has
one writer). Rows written before keys (`chain_key_id` null) are plain SHA-256; an
unkeyed row after a keyed one is a break.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
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
KEYED_FIELDS = (*CHAINED_FIELDS, "chain_key_id")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return as_utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return value


class AuditKeyError(RuntimeError):
    """The audit keys cannot be used (the message names the setting)."""


@dataclass(frozen=True)
class AuditKeys:
    """The operator's audit keys: `current` signs new records and checkpoints; the others
    (earlier keys, kept after a rotation) still verify what they signed."""

    current: str
    keys: dict[str, bytes]

    def mac(self, key_id: str, data: bytes) -> str:
        return hmac.new(self.keys[key_id], data, hashlib.sha256).hexdigest()

    @classmethod
    def parse(cls, spec: str, current: str | None = None) -> AuditKeys:
        """`id:secret[,id:secret...]`; the current key is `current` or the last listed."""
        keys: dict[str, bytes] = {}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            key_id, sep, secret = part.partition(":")
            if not sep or not key_id or len(secret) < 16:
                raise AuditKeyError(
                    "PROMETHIOS_AUDIT_KEYS: each entry is id:secret, the secret 16+ characters"
                )
            keys[key_id] = secret.encode()
        if not keys:
            raise AuditKeyError("PROMETHIOS_AUDIT_KEYS holds no key")
        current = current or list(keys)[-1]
        if current not in keys:
            raise AuditKeyError(f"PROMETHIOS_AUDIT_KEY_ID {current!r} is not among the keys")
        return cls(current, keys)


def load_audit_keys() -> AuditKeys:
    """The operator's audit keys: `PROMETHIOS_AUDIT_KEYS` (`id:secret,...`, the current one
    `PROMETHIOS_AUDIT_KEY_ID` or the last) when set — what a cluster must do, every writer
    and verifier holding the same keys — else a key file under the audit directory,
    created on first use (mode 0600) for a single machine. `promethios audit rotate-key`
    adds a key to that file and makes it current."""
    from serve_app.settings import get_settings

    settings = get_settings()
    if settings.audit_keys:
        return AuditKeys.parse(settings.audit_keys, settings.audit_key_id)
    path = audit_dir(settings) / "keys.json"
    if not path.exists():
        rotate_key_file(path, only_if_missing=True)
    data = json.loads(path.read_text())
    return AuditKeys(data["current"], {k: bytes.fromhex(v) for k, v in data["keys"].items()})


def audit_dir(settings: Any) -> Path:
    return settings.audit_dir or settings.var_dir / "audit"


def rotate_key_file(path: Path, *, only_if_missing: bool = False) -> str:
    """Add a fresh random key to the key file (creating it, 0600) and make it current;
    returns its id. Earlier keys stay, so what they signed still verifies. Serialised by a
    lock file: two processes starting at once never make two first keys."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(path.with_suffix(".lock"), os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        if only_if_missing and path.exists():
            return str(json.loads(path.read_text())["current"])
        return _add_key(path)
    finally:
        os.close(lock_fd)


def _add_key(path: Path) -> str:
    data = json.loads(path.read_text()) if path.exists() else {"keys": {}}
    key_id = f"k{len(data['keys']) + 1}-{secrets.token_hex(3)}"
    data["keys"][key_id] = secrets.token_hex(32)
    data["current"] = key_id
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)  # atomic: concurrent first users keep one file
    return key_id


def canonical(row: dict[str, Any]) -> bytes:
    """The bytes that are hashed: the chained fields (and the key id, for keyed rows) as
    sorted, compact JSON."""
    fields = KEYED_FIELDS if row.get("chain_key_id") else CHAINED_FIELDS
    content = {k: _plain(row.get(k)) for k in fields}
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def content_hash(row: dict[str, Any], keys: AuditKeys | None = None) -> str:
    """The row's hash: HMAC under its key id when it has one, plain SHA-256 otherwise.
    Raises KeyError when the row's key is not among `keys`."""
    key_id = row.get("chain_key_id")
    if key_id:
        if keys is None:
            raise KeyError(key_id)
        return keys.mac(key_id, canonical(row))
    return hashlib.sha256(canonical(row)).hexdigest()


def link_rows(
    conn: Connection, table: Table, rows: list[dict[str, Any]], keys: AuditKeys | None = None
) -> None:
    """Set prev_sha256, chain_key_id and content_sha256 on `rows` (new rows, in insertion
    order), keyed with the current audit key when there are keys."""
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
        row["chain_key_id"] = keys.current if keys is not None else None
        row["content_sha256"] = content_hash(row, keys)
        last[row["agent_id"]] = row["content_sha256"]


@dataclass(frozen=True)
class ChainReport:
    """The result of verifying one agent's chain."""

    agent_id: str
    records: int
    intact: bool
    first_broken: dict[str, Any] | None  # {"message_id", "id", "position", "reason"}
    # Against the newest signed checkpoint outside the database: {"at", "head_id",
    # "head_message_id", "ok", "reason"}; None when there is none for this agent.
    checkpoint: dict[str, Any] | None = None
    keyed: bool = False  # every chained record is keyed (HMAC), none plain SHA-256

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "records": self.records,
            "intact": self.intact,
            "first_broken": self.first_broken,
            "keyed": self.keyed,
            "checkpoint": self.checkpoint,
        }


def verify_chain(
    conn: Connection,
    table: Table,
    agent_id: str,
    page: int = 1000,
    keys: AuditKeys | None = None,
) -> ChainReport:
    """Recompute the agent's chain in insertion order; name the first broken record."""
    expected_prev = GENESIS
    position = 0
    last_id = 0
    started = False
    keyed_seen = False
    all_keyed = True
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
            elif keyed_seen and not row.get("chain_key_id"):
                reason = "an unkeyed record after keyed ones (rewritten without the audit key)"
            else:
                try:
                    good = hmac.compare_digest(content_hash(row, keys), row["content_sha256"])
                except KeyError:
                    reason = f"signed with audit key {row.get('chain_key_id')!r}, which this "
                    reason += "verifier does not hold"
                else:
                    if not good:
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
            keyed_seen = keyed_seen or bool(row.get("chain_key_id"))
            all_keyed = all_keyed and bool(row.get("chain_key_id"))
            expected_prev = row["content_sha256"]
    return ChainReport(agent_id, position, True, None, keyed=started and all_keyed)


def _count(conn: Connection, table: Table, agent_id: str) -> int:
    stmt = select(func.count()).select_from(table).where(table.c.agent_id == agent_id)
    return int(conn.execute(stmt).scalar_one())
