"""Time series and reports from stored interactions (a real SQLite store, no Ray)."""

from __future__ import annotations

import csv
import io
from datetime import datetime, timedelta, timezone
from pathlib import Path

from serve_app.observability import history
from serve_app.store import InteractionRecord, Store

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
PII = {"policy_id": "pii.email", "category": "privacy", "severity": "medium", "action": "redact",
       "direction": "output", "span": [0, 5], "detector": "email"}  # fmt: skip


def _store(tmp_path: Path) -> Store:
    store = Store(f"sqlite:///{tmp_path / 'h.db'}")
    store.migrate()
    store.ensure_user("u")
    for i, (trust, ms, viol) in enumerate([(1.0, 100, []), (0.7, 300, [PII]), (1.0, 200, [])]):
        store.insert_interactions(
            [
                InteractionRecord(
                    message_id=f"m{i}", agent_id="a1", user_id="u", trust_score=trust,
                    compliance_rate=1.0 if not viol else 0.5, constitutional_adherence=1.0,
                    policy_violations=viol, governance_interventions=len(viol),
                    response_time_ms=ms, prompt_tokens=10, completion_tokens=5,
                    created_at=T0 + timedelta(seconds=30 * i), input="hi, x", response="ok",
                )
            ]
        )  # fmt: skip
    return store


def test_timeseries_buckets(tmp_path: Path) -> None:
    store = _store(tmp_path)
    rows = history.interactions(store, "a1", T0, T0 + timedelta(minutes=2))
    ts = history.timeseries(rows, T0, T0 + timedelta(minutes=2), 60)
    b = ts["buckets"]
    assert [x["interactions"] for x in b] == [2, 1]
    assert b[0]["trust_score"] == 0.85 and b[0]["latency_ms_p50"] == 200.0
    assert b[0]["latency_ms_p95"] == 290.0 and b[0]["violations_by_category"] == {"privacy": 1}
    assert b[1]["interventions"] == 0 and b[0]["throughput_per_min"] == 2.0
    assert history.interactions(store, "other", T0, T0 + timedelta(minutes=2)) == []


def test_report_csv_has_one_line_per_interaction(tmp_path: Path) -> None:
    rows = history.interactions(_store(tmp_path), "a1", T0, T0 + timedelta(hours=1))
    lines = list(csv.DictReader(io.StringIO(history.report_csv(rows))))
    assert [r["message_id"] for r in lines] == ["m0", "m1", "m2"]
    assert lines[1]["violations"] == "pii.email/privacy/medium/redact/output"
    assert lines[0]["input"] == "hi, x"
    s = history.summarize(rows)
    assert s["violations_by_policy"] == {"pii.email": 1} and s["prompt_tokens"] == 30


def test_parse_time() -> None:
    assert history.parse_time("2026-01-01T12:00:00Z", T0) == T0
    assert history.parse_time(None, T0) == T0
    assert history.parse_time("2026-01-01T12:00:00", T0) == T0
