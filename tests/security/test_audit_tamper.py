"""Tamper evidence that survives truncation and rewriting (issue 23, item 4), on SQLite and
PostgreSQL: someone with write access to the database deletes the newest records, or
rewrites a suffix and recomputes its hashes; `verify` must report both. The chain is an
HMAC under the operator's audit key; the writer publishes signed checkpoints of each
agent's head outside the database."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from serve_app.settings import get_settings
from serve_app.store import Store
from serve_app.store.audit import canonical
from serve_app.store.records import InteractionRecord

AGENT = "native-tamper01"
K1 = "k1:" + "a" * 32
K2 = "k2:" + "b" * 32


@pytest.fixture
def audit_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("PROMETHIOS_AUDIT_DIR", str(tmp_path / "audit"))
    monkeypatch.setenv("PROMETHIOS_AUDIT_KEYS", K1)
    get_settings.cache_clear()
    yield tmp_path / "audit"
    get_settings.cache_clear()


def _store(db_url: str) -> Store:
    store = Store(db_url)
    store.migrate()
    store.ensure_user("u")
    return store


def _write(store: Store, n: int, start: int = 0) -> None:
    for i in range(start, start + n):  # one batch per record, as a busy writer would
        store.insert_interactions(
            [
                InteractionRecord(
                    message_id=f"m-{i:04d}",
                    agent_id=AGENT,
                    user_id="u",
                    input=f"question {i}",
                    response=f"answer {i}",
                )
            ]  # fmt: skip
        )


def _rows(store: Store) -> list[dict]:
    with store.engine.connect() as conn:
        result = conn.execute(
            text("SELECT * FROM interactions WHERE agent_id = :a ORDER BY id"), {"a": AGENT}
        )
        return [dict(r) for r in result.mappings()]


def test_an_untouched_chain_verifies_keyed_and_at_its_checkpoint(db_url: str, audit_env) -> None:
    store = _store(db_url)
    _write(store, 5)
    report = store.verify_audit_chain(AGENT).to_dict()
    assert report["intact"] and report["keyed"] and report["records"] == 5
    assert report["checkpoint"]["ok"] and report["checkpoint"]["head_message_id"] == "m-0004"


def test_deleting_the_newest_records_is_reported_as_truncation(db_url: str, audit_env) -> None:
    store = _store(db_url)
    _write(store, 10)
    with store.engine.begin() as conn:  # the attack: the chain left is intact by itself
        conn.execute(
            text("DELETE FROM interactions WHERE agent_id = :a AND message_id >= 'm-0007'"),
            {"a": AGENT},
        )
    report = store.verify_audit_chain(AGENT)
    assert report.first_broken is None  # the shorter chain links up...
    assert report.intact is False  # ...but the checkpoint's head is gone
    assert "truncation" in report.checkpoint["reason"]


def test_rewriting_a_suffix_with_recomputed_hashes_is_detected(db_url: str, audit_env) -> None:
    store = _store(db_url)
    _write(store, 8)
    rows = _rows(store)
    # The attack: rewrite the last three answers and recompute the chain from there as a
    # plain SHA-256 chain (the attacker has the database, not the audit key).
    prev = rows[4]["content_sha256"]
    with store.engine.begin() as conn:
        for row in rows[5:]:
            row.update(response="nothing to see here", prev_sha256=prev, chain_key_id=None)
            row["content_sha256"] = hashlib.sha256(canonical(row)).hexdigest()
            conn.execute(
                text(
                    "UPDATE interactions SET response = :r, prev_sha256 = :p, "
                    "content_sha256 = :h, chain_key_id = NULL WHERE id = :i"
                ),
                {"r": row["response"], "p": prev, "h": row["content_sha256"], "i": row["id"]},
            )
            prev = row["content_sha256"]
    report = store.verify_audit_chain(AGENT)
    assert report.intact is False
    assert report.first_broken["message_id"] == "m-0005"
    assert "unkeyed record after keyed ones" in report.first_broken["reason"]
    assert "rewritten" in report.checkpoint["reason"]


def test_rewriting_with_a_guessed_key_is_detected(db_url: str, audit_env) -> None:
    store = _store(db_url)
    _write(store, 4)
    row = _rows(store)[-1]
    row["response"] = "forged"
    forged = hmac.new(b"guess" * 8, canonical(row), hashlib.sha256).hexdigest()
    with store.engine.begin() as conn:
        conn.execute(
            text("UPDATE interactions SET response = 'forged', content_sha256 = :h WHERE id = :i"),
            {"h": forged, "i": row["id"]},
        )
    report = store.verify_audit_chain(AGENT)
    assert report.intact is False and "altered" in report.first_broken["reason"]


def test_a_forged_checkpoint_is_not_believed(db_url: str, audit_env) -> None:
    store = _store(db_url)
    _write(store, 3)
    cp = store.checkpoints().latest(AGENT)
    fake = {**cp.__dict__, "head_id": cp.head_id - 1, "mac": "0" * 64}
    with open(store.checkpoints().path, "a") as f:
        f.write(json.dumps(fake) + "\n")
    report = store.verify_audit_chain(AGENT)
    assert report.intact is False and "signature does not verify" in report.checkpoint["reason"]


def test_keys_rotate_and_old_records_still_verify(
    db_url: str, audit_env, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(db_url)
    _write(store, 3)
    monkeypatch.setenv("PROMETHIOS_AUDIT_KEYS", f"{K1},{K2}")  # k2 current, k1 kept
    get_settings.cache_clear()
    rotated = _store(db_url)
    _write(rotated, 3, start=3)
    assert {r["chain_key_id"] for r in _rows(rotated)} == {"k1", "k2"}
    assert rotated.verify_audit_chain(AGENT).intact
    monkeypatch.setenv("PROMETHIOS_AUDIT_KEYS", K2)  # k1 dropped: its records cannot verify
    get_settings.cache_clear()
    report = _store(db_url).verify_audit_chain(AGENT)
    assert report.intact is False and "does not hold" in report.first_broken["reason"]


def test_without_configured_keys_a_key_file_is_made_once_and_kept_private(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHIOS_AUDIT_DIR", str(tmp_path / "audit"))
    monkeypatch.delenv("PROMETHIOS_AUDIT_KEYS", raising=False)
    get_settings.cache_clear()
    try:
        store = _store(db_url)
        _write(store, 2)
        keyfile = tmp_path / "audit" / "keys.json"
        assert keyfile.stat().st_mode & 0o777 == 0o600
        first = json.loads(keyfile.read_text())["current"]
        _write(_store(db_url), 1, start=2)  # another process: the same key
        assert json.loads(keyfile.read_text())["current"] == first
        assert _store(db_url).verify_audit_chain(AGENT).intact
    finally:
        get_settings.cache_clear()
