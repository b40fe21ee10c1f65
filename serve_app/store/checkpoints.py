"""Signed checkpoints of each agent's audit-chain head, kept outside the database.

After every batch the store writes, it appends one line per agent touched to an
append-only file (`<audit dir>/<database>/checkpoints.jsonl`, synced to disk) and logs
it: the head record's id, message id and hash, the time, and an HMAC over those under
the operator's current audit key. Someone who can rewrite the database but not this file
(put it on storage the database's users cannot write: a volume of the writer's, an
object store with retention, the log pipeline) cannot hide a truncation: `verify` finds
the checkpointed head missing, or its hash changed. A checkpoint whose HMAC does not
verify is reported as forged.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from serve_app.store.audit import AuditKeys

log = logging.getLogger("promethios.audit")


def checkpoint_dir_for(database_url: str, base: Path) -> Path:
    """The checkpoint directory of one database under `base` (as the spool's)."""
    return base / hashlib.sha256(database_url.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Checkpoint:
    agent_id: str
    head_id: int
    head_message_id: str
    head_hash: str
    at: str
    key_id: str
    mac: str = ""

    def payload(self) -> bytes:
        body = {k: v for k, v in asdict(self).items() if k != "mac"}
        return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()

    def signed(self, keys: AuditKeys) -> Checkpoint:
        unsigned = Checkpoint(**{**asdict(self), "key_id": keys.current, "mac": ""})
        return Checkpoint(**{**asdict(unsigned), "mac": keys.mac(keys.current, unsigned.payload())})

    def genuine(self, keys: AuditKeys) -> bool:
        if self.key_id not in keys.keys:
            return False
        return hmac.compare_digest(self.mac, keys.mac(self.key_id, self.payload()))


class CheckpointLog:
    """The append-only checkpoint file of one database."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / "checkpoints.jsonl"
        self._lock = threading.Lock()

    def append(self, checkpoints: list[Checkpoint]) -> None:
        if not checkpoints:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lines = "".join(json.dumps(asdict(c), sort_keys=True) + "\n" for c in checkpoints)
        with self._lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fdatasync(f.fileno())
        for c in checkpoints:
            log.info(
                "audit checkpoint %s head %d %s",
                c.agent_id,
                c.head_id,
                c.head_hash,
                extra={"checkpoint": asdict(c)},
            )

    def latest(self, agent_id: str) -> Checkpoint | None:
        """The newest checkpoint of `agent_id` in the file (None: none yet)."""
        if not self.path.exists():
            return None
        found: Checkpoint | None = None
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if f'"agent_id": "{agent_id}"' not in line:
                    continue
                try:
                    found = Checkpoint(**json.loads(line))
                except (ValueError, TypeError):
                    continue  # a line cut short by a crash
        return found


def new_checkpoints(heads: dict[str, tuple[int, str, str]], keys: AuditKeys) -> list[Checkpoint]:
    """Signed checkpoints for `heads` ({agent: (row id, message id, hash)})."""
    at = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return [
        Checkpoint(agent, rid, mid, h, at, keys.current).signed(keys)
        for agent, (rid, mid, h) in sorted(heads.items())
    ]


def check_against(cp: Checkpoint | None, keys: AuditKeys | None, head: Any) -> dict | None:
    """Compare the database's record at the checkpoint (`head`: the row with the
    checkpoint's id, as a mapping, or None when absent) with the checkpoint."""
    if cp is None:
        return None
    out: dict[str, Any] = {
        "at": cp.at,
        "head_id": cp.head_id,
        "head_message_id": cp.head_message_id,
        "ok": False,
        "reason": None,
    }
    if keys is None or not cp.genuine(keys):
        out["reason"] = "the checkpoint's signature does not verify (forged or another key)"
    elif head is None:
        out["reason"] = (
            "the checkpointed head record is missing: records were deleted after it "
            "was written (truncation)"
        )
    elif head["message_id"] != cp.head_message_id or head["content_sha256"] != cp.head_hash:
        out["reason"] = "the checkpointed head record was rewritten"
    else:
        out["ok"] = True
    return out
