"""No answer without its record, streaming included (issue 23, item 2).

A stream's record is reserved with the writer (spooled and synced) before its first chunk
and completed when it ends. The attack is the writer refusing: at the start (the client
must get no text at all) or mid-stream (the text already sent must have a record). Real
parts: the governed chat, the shipped scorer and policies, the recorder with its spool and
a real database, and an upstream model behind real HTTP (a wrapped agent, so no vLLM
engine is needed in-process)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone
from pathlib import Path

import pytest
import yaml

from serve_app.backends import LocalBackends
from serve_app.errors import AuditUnavailable
from serve_app.governance.policy import PolicySet
from serve_app.governance.scorer import GovernanceScorer
from serve_app.governed_chat import GovernedChat
from serve_app.recording import INTERRUPTED, InteractionRecorder, Spool
from serve_app.store import Store
from serve_app.store.records import AgentRecord, InteractionRecord
from serve_app.upstream import UpstreamClient
from serve_app.upstream_registry import Registry
from tests.support.upstreams import start_faulty_upstream


@pytest.fixture(scope="module")
def upstream():
    up = start_faulty_upstream()
    yield up
    up.stop()


def _parts(tmp_path: Path, up) -> tuple[GovernedChat, InteractionRecorder, Store, AgentRecord]:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    store.ensure_user("u")
    registry_file = tmp_path / "upstreams.yaml"
    registry_file.write_text(yaml.safe_dump({"upstreams": {"m": {"base_url": up.base_url}}}))
    recorder = InteractionRecorder(store.insert_interactions, spool_dir=tmp_path / "spool")
    policies = PolicySet.load()
    backends = LocalBackends(
        engine=None,  # type: ignore[arg-type]  # a wrapped agent: the upstream answers
        scorer=GovernanceScorer(policies),
        recorder=recorder,
        upstream=UpstreamClient(upstreams=Registry(registry_file)),
    )
    agent = AgentRecord(
        agent_id="native-stream01",
        user_id="u",
        name="s",
        description=None,
        config={"backend": {"type": "openai", "upstream": "m", "model": "echo"}},
        created_at=datetime.now(timezone.utc),
    )
    return GovernedChat(backends, policies), recorder, store, agent


async def _collect(chat: GovernedChat, agent: AgentRecord, texts: list[str]) -> None:
    stream = chat.stream(agent, "Where is my order number 42?", max_tokens=16, temperature=0.0)
    async for event in stream:
        if event.text:
            texts.append(event.text)


def test_a_writer_refusing_at_the_start_means_no_text_leaves(tmp_path: Path, upstream) -> None:
    chat, recorder, store, agent = _parts(tmp_path, upstream)
    recorder.max_pending = 0  # the writer refuses everything
    texts: list[str] = []
    with pytest.raises(AuditUnavailable):
        asyncio.run(_collect(chat, agent, texts))
    assert texts == []  # the client got nothing...
    assert store.count_interactions(agent.agent_id) == 0  # ...and nothing needs a record


def test_a_writer_refusing_mid_stream_leaves_no_text_without_a_record(
    tmp_path: Path, upstream
) -> None:
    chat, recorder, store, agent = _parts(tmp_path, upstream)
    texts: list[str] = []

    async def run() -> None:
        recorder.start()
        stream = chat.stream(agent, "Where is my order number 42?", max_tokens=16, temperature=0)
        first = await stream.__anext__()  # the reservation is accepted before this
        texts.append(first.text)
        recorder.max_pending = 0  # the writer refuses from here on
        with pytest.raises(AuditUnavailable):
            async for event in stream:
                texts.append(event.text)

    asyncio.run(run())
    assert "".join(texts).strip()  # text reached the client
    recorder.flush_now()  # the writer shuts down: what it accepted is written
    with store.engine.connect() as conn:
        from sqlalchemy import text

        rows = conn.execute(
            text("SELECT status, response FROM interactions WHERE agent_id = :a"),
            {"a": agent.agent_id},
        ).all()
    assert len(rows) == 1 and rows[0].status == "error"  # the exchange has its record


def test_a_writer_killed_mid_stream_leaves_the_reservation_for_the_next(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    store.ensure_user("u")
    spool = tmp_path / "spool"
    rec = InteractionRecord(message_id="m-1", agent_id="native-x", user_id="u", input="hi")
    dying = InteractionRecorder(store.insert_interactions, spool_dir=spool)
    dying.reserve(rec)  # accepted; the chunks went out; then the writer was killed
    dying._spool.close()  # noqa: SLF001 - its lock is freed as at process death

    async def next_writer() -> None:
        nxt = InteractionRecorder(store.insert_interactions, spool_dir=spool)
        nxt.start()
        await nxt.flush()

    asyncio.run(next_writer())
    with store.engine.connect() as conn:
        from sqlalchemy import text

        row = conn.execute(text("SELECT status, response FROM interactions")).one()
    assert row.status == "error" and row.response == INTERRUPTED


def test_a_completed_record_wins_over_its_reservation_on_replay(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    spool = Spool(spool_dir)
    rec = InteractionRecord(message_id="m-2", agent_id="a", user_id="u", input="hi")
    spool.append([rec], reserved=True)
    spool.seal()  # the completion lands in a later segment
    spool.append([InteractionRecord(message_id="m-2", agent_id="a", user_id="u", input="hi",
                                    response="the answer")])  # fmt: skip
    spool.close()
    replayed: list[InteractionRecord] = []
    recorder = InteractionRecorder(lambda r: len(r), spool_dir=spool_dir)

    async def start() -> None:
        recorder.start()
        replayed.extend(recorder._buffer)  # noqa: SLF001

    asyncio.run(start())
    assert [(r.message_id, r.response) for r in replayed] == [("m-2", "the answer")]


def test_a_segment_holding_an_open_reservation_is_not_released(tmp_path: Path) -> None:
    written: list[InteractionRecord] = []
    recorder = InteractionRecorder(lambda r: written.extend(r) or len(r), spool_dir=tmp_path)
    rec = InteractionRecord(message_id="m-3", agent_id="a", user_id="u")

    async def run() -> None:
        recorder.reserve(rec)
        recorder.add([InteractionRecord(message_id="other", agent_id="a", user_id="u")])
        await recorder.flush()
        assert [p for p in tmp_path.glob("*.jsonl")], "released with the reservation open"
        recorder.add([rec])  # completed
        await recorder.flush()

    asyncio.run(run())
    assert list(tmp_path.glob("*.jsonl")) == []
    assert [r.message_id for r in written] == ["other", "m-3"]


def test_an_expired_reservation_is_written_even_when_the_backlog_is_full(tmp_path: Path) -> None:
    """Expiry runs in the flush loop: it must not raise (a full backlog would have killed
    the loop) and the reservation, already accepted, must still be written."""
    written: list[InteractionRecord] = []
    recorder = InteractionRecorder(lambda r: written.extend(r) or len(r), spool_dir=tmp_path)
    recorder.reserve(InteractionRecord(message_id="m-4", agent_id="a", user_id="u"))
    recorder.max_pending = 0  # the backlog is full from here on
    recorder._expire_reservations(max_age_s=0.0)  # noqa: SLF001
    recorder.flush_now()
    assert [(r.message_id, r.response) for r in written] == [("m-4", INTERRUPTED)]
    assert list(tmp_path.glob("*.jsonl")) == []  # its segment is released once written


def test_the_in_process_health_is_asked_of_the_parts(tmp_path: Path, upstream) -> None:
    """LocalBackends.health was hard-coded "ok": it now reports what the parts say (a
    writer whose backlog is full is unavailable, as the replica's stats would show)."""
    chat, recorder, _store, _agent = _parts(tmp_path, upstream)
    backends = chat.backends
    assert asyncio.run(backends.health()) == {
        "model": "ok",
        "governance": "ok",
        "metrics_writer": "ok",
    }
    recorder.max_pending = 0
    assert asyncio.run(backends.health())["metrics_writer"] == "unavailable: AuditBacklogFull"
