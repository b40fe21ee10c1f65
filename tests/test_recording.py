"""The interaction recorder batches into a real store and keeps records through failures."""

from __future__ import annotations

import asyncio

from serve_app.recording import InteractionRecorder
from serve_app.store import Store
from serve_app.store.records import InteractionRecord


def _records(n: int, agent: str = "native-00000001") -> list[InteractionRecord]:
    return [
        InteractionRecord(message_id=f"msg-{i:06d}", agent_id=agent, user_id="u", trust_score=1.0)
        for i in range(n)
    ]


def test_batches_are_written_by_the_background_loop(db_url: str) -> None:
    store = Store(db_url)
    store.migrate()
    store.ensure_user("u")
    store.create_agent("u", "a", None, {})

    async def run() -> None:
        rec = InteractionRecorder(store.insert_interactions, flush_interval_s=0.01, max_batch=50)
        rec.start()
        rec.add(_records(120))
        for _ in range(200):
            if rec.pending == 0:
                break
            await asyncio.sleep(0.02)
        assert rec.pending == 0 and rec.written == 120

    asyncio.run(run())
    assert store.count_interactions("native-00000001") == 120


def test_a_failed_write_keeps_the_records_for_retry(tmp_path) -> None:
    calls = {"n": 0}
    written: list[InteractionRecord] = []

    def flaky_insert(batch: list[InteractionRecord]) -> int:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise ConnectionError("database unreachable")
        written.extend(batch)
        return len(batch)

    async def run() -> None:
        rec = InteractionRecorder(flaky_insert, flush_interval_s=0.01, retry_backoff_s=0.01)
        rec.start()
        rec.add(_records(10))
        for _ in range(300):
            if rec.pending == 0:
                break
            await asyncio.sleep(0.01)
        assert rec.pending == 0 and rec.failures == 2
        assert "database unreachable" in (rec.last_error or "")

    asyncio.run(run())
    assert [r.message_id for r in written] == [f"msg-{i:06d}" for i in range(10)]


def test_duplicates_are_written_once(db_url: str) -> None:
    store = Store(db_url)
    store.migrate()

    async def run() -> None:
        rec = InteractionRecorder(store.insert_interactions)
        rec.add(_records(5))
        rec.add(_records(5))
        assert await rec.flush() == 5

    asyncio.run(run())
    assert store.count_interactions("native-00000001") == 5
