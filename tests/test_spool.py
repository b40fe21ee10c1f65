"""The recorder's spool: an accepted record survives its writer being killed and the
database being unreachable, and is written exactly once when a writer can."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import text

from serve_app.recording import AuditBacklogFull, InteractionRecorder, Spool, spool_dir_for
from serve_app.store import Store
from serve_app.store.records import InteractionRecord


def _records(n: int, start: int = 0) -> list[InteractionRecord]:
    return [
        InteractionRecord(message_id=f"msg-{i:06d}", agent_id="native-0000000a", user_id="u")
        for i in range(start, start + n)
    ]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _insert_unless_down(store: Store) -> tuple[Callable, dict[str, bool]]:
    """The store's insert, failing as an unreachable database while `up["db"]` is False."""
    up = {"db": False}

    def insert(records: list[InteractionRecord]) -> int:
        if not up["db"]:
            raise ConnectionError("database unreachable")
        return store.insert_interactions(records)

    return insert, up


def _store(db_url: str) -> Store:
    store = Store(db_url)
    store.migrate()
    store.ensure_user("u")
    return store


def test_segments_of_a_killed_writer_are_replayed_once(db_url: str, tmp_path: Path) -> None:
    store = _store(db_url)
    spool = tmp_path / "spool"
    # A writer that accepted 30 records (5 already written) and was killed before flushing.
    dead = Spool(spool)
    dead.append(_records(30))
    dead.seal()
    store.insert_interactions(_records(5))
    orphan = next(spool.glob("*.jsonl"))
    orphan.rename(spool / f"{_dead_pid()}-00000001.jsonl")
    with open(spool / f"{_dead_pid()}-00000002.jsonl", "w") as f:
        f.write('{"message_id": "msg-cut')  # a line cut short by the kill: never accepted

    async def run() -> None:
        rec = InteractionRecorder(store.insert_interactions, flush_interval_s=0.01, spool_dir=spool)
        rec.start()
        assert rec.pending == 30
        await rec.flush()

    asyncio.run(run())
    assert store.count_interactions("native-0000000a") == 30
    assert list(spool.glob("*.jsonl")) == []


def test_database_outage_keeps_records_until_it_returns(db_url: str, tmp_path: Path) -> None:
    store = _store(db_url)
    insert, up = _insert_unless_down(store)

    spool = spool_dir_for(db_url, tmp_path)

    async def run() -> None:
        rec = InteractionRecorder(
            insert, flush_interval_s=0.01, retry_backoff_s=0.01, spool_dir=spool
        )
        rec.start()
        rec.add(_records(10))
        rec.add(_records(10, start=10))
        await asyncio.sleep(0.2)
        assert rec.pending == 20 and rec.failures > 0
        assert sum(len(Spool.load(p)) for p in spool.glob("*.jsonl")) == 20
        up["db"] = True
        for _ in range(200):
            if rec.pending == 0 and not list(spool.glob("*.jsonl")):
                break
            await asyncio.sleep(0.02)

    asyncio.run(run())
    assert store.count_interactions("native-0000000a") == 20
    assert list(spool.glob("*.jsonl")) == []


def test_live_writers_segments_are_left_alone(tmp_path: Path) -> None:
    live = Spool(tmp_path)
    live.append(_records(3))
    other = Spool(tmp_path)  # same pid: the segment belongs to a live writer
    assert other.adopt_orphans() == []
    assert len(list(tmp_path.glob("*.jsonl"))) == 1


def test_a_record_the_store_refuses_does_not_block_the_others(db_url: str, tmp_path: Path) -> None:
    store = _store(db_url)

    def insert(records: list[InteractionRecord]) -> int:
        if any(r.message_id == "msg-000003" for r in records):
            raise ValueError("A string literal cannot contain NUL (0x00) characters.")
        return store.insert_interactions(records)

    async def run() -> InteractionRecorder:
        rec = InteractionRecorder(insert, flush_interval_s=0.01, spool_dir=tmp_path)
        rec.start()
        rec.add(_records(8))
        await rec.flush()
        return rec

    rec = asyncio.run(run())
    assert store.count_interactions("native-0000000a") == 7
    assert rec.pending == 0 and rec.dead_letters == 1
    dead = Spool.load(tmp_path / "dead-letter.jsonl")
    assert [r.message_id for r in dead] == ["msg-000003"]


def test_a_full_backlog_refuses_new_records_and_keeps_the_accepted(
    db_url: str, tmp_path: Path
) -> None:
    store = _store(db_url)
    insert, up = _insert_unless_down(store)

    async def run() -> InteractionRecorder:
        rec = InteractionRecorder(
            insert, flush_interval_s=0.01, retry_backoff_s=0.01, spool_dir=tmp_path, max_pending=25
        )
        rec.start()
        rec.add(_records(20))
        with pytest.raises(AuditBacklogFull) as refused:
            rec.add(_records(10, start=20))  # 30 > 25: none of the ten is accepted
        assert refused.value.status_code == 503 and refused.value.code == "audit_unavailable"
        assert "database unreachable" in str(refused.value) or rec.last_error is None
        rec.add(_records(5, start=40))  # still room for five
        stats = rec.stats()
        assert stats["pending"] == 25 and stats["refused"] == 10
        assert stats["spool_segments"] >= 1 and stats["spool_bytes"] > 0
        up["db"] = True
        for _ in range(200):
            if rec.pending == 0:
                break
            await asyncio.sleep(0.02)
        return rec

    rec = asyncio.run(run())
    with store.engine.connect() as conn:
        ids = set(conn.execute(text("SELECT message_id FROM interactions")).scalars())
    assert ids == {f"msg-{i:06d}" for i in [*range(20), *range(40, 45)]}
    assert rec.stats()["spool_segments"] == 0 and rec.stats()["pending"] == 0


def test_flush_now_writes_the_buffer_at_shutdown(db_url: str, tmp_path: Path) -> None:
    store = _store(db_url)
    rec = InteractionRecorder(store.insert_interactions, spool_dir=tmp_path)
    rec.add(_records(7))  # accepted, the background loop never ran (a clean shutdown)
    assert rec.flush_now() == 7
    assert store.count_interactions("native-0000000a") == 7
    assert list(tmp_path.glob("*.jsonl")) == [] and rec.pending == 0
