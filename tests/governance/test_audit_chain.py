"""The audit chain: hashes linked per agent on insert; a direct row edit is detected there."""

from __future__ import annotations

from sqlalchemy import text

from serve_app.store import Store
from serve_app.store.audit import GENESIS
from serve_app.store.records import InteractionRecord


def _rec(i: int, agent: str = "native-a") -> InteractionRecord:
    return InteractionRecord(
        message_id=f"msg-{agent}-{i}",
        agent_id=agent,
        user_id="alice",
        input=f"question {i}",
        response=f"answer {i}",
        trust_score=0.7,
        compliance_rate=0.95,
        constitutional_adherence=0.75,
        policy_violations=[{"policy_id": "pii.email", "span": [0, 3]}],
    )


def test_chain_links_per_agent_and_detects_edits(db_url: str) -> None:
    with Store(db_url) as store:
        store.migrate()
        store.insert_interactions([_rec(0), _rec(0, "native-b"), _rec(1)])
        store.insert_interactions([_rec(2), _rec(1)])  # a duplicate does not join the chain
        report = store.verify_audit_chain("native-a")
        assert report.intact and report.records == 3 and report.first_broken is None
        assert store.verify_audit_chain("native-b").intact
        with store.engine.begin() as conn:
            rows = conn.execute(
                text(
                    "SELECT message_id, prev_sha256, content_sha256 FROM interactions "
                    "WHERE agent_id = 'native-a' ORDER BY id"
                )
            ).all()
            assert rows[0][1] == GENESIS
            assert rows[1][1] == rows[0][2] and rows[2][1] == rows[1][2]
            conn.execute(
                text(
                    "UPDATE interactions SET response = 'edited' "
                    "WHERE message_id = 'msg-native-a-1'"
                )
            )
        report = store.verify_audit_chain("native-a")
        assert not report.intact
        assert report.first_broken["message_id"] == "msg-native-a-1"
        assert report.first_broken["position"] == 2
        assert "altered" in report.first_broken["reason"]
        assert store.verify_audit_chain("native-b").intact


def test_deleting_a_record_breaks_the_next_link(db_url: str) -> None:
    with Store(db_url) as store:
        store.migrate()
        store.insert_interactions([_rec(i) for i in range(4)])
        with store.engine.begin() as conn:
            conn.execute(text("DELETE FROM interactions WHERE message_id = 'msg-native-a-1'"))
        report = store.verify_audit_chain("native-a")
        assert not report.intact and report.first_broken["message_id"] == "msg-native-a-2"
