"""Issue 5 on the real graph: /metrics moves with chats, time series, reports, logs."""

from __future__ import annotations

import csv
import io
import json
import time
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import Graph

pytestmark = pytest.mark.slow
CHAT_ROUTE = "/native-llm/agent/{agent_id}/chat"


def _scrape(graph: Graph) -> dict[tuple[str, tuple], float]:
    with graph.client() as c:
        resp = c.get("/metrics")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    out = {}
    for fam in text_string_to_metric_families(resp.text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _sum(samples: dict, name: str, **labels: str) -> float:
    return sum(v for (n, lv), v in samples.items() if n == name and set(labels.items()) <= set(lv))


@pytest.fixture(scope="module")
def agent(graph: Graph, alice: str) -> str:
    config = {"name": "Observed", "compliance_mode": "standard", "max_tokens": 24}
    with graph.client(alice) as c:
        resp = c.post("/native-llm/agent/create", json={"config": config})
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]["agent_id"]


def test_metrics_move_after_chats(graph: Graph, alice: str, agent: str) -> None:
    before = _scrape(graph)
    with graph.client(alice) as c:
        for message in ("Hello, can you help me?", "Mail me at jane.doe@example.com please"):
            resp = c.post(f"/native-llm/agent/{agent}/chat", json={"message": message})
            assert resp.status_code == 200, resp.text
        assert c.post(f"/native-llm/agent/{agent}/deploy", json={}).status_code == 200
    after = _scrape(graph)

    def delta(name: str, **labels: str) -> float:
        return _sum(after, name, **labels) - _sum(before, name, **labels)

    assert delta("promethios_requests_total", route=CHAT_ROUTE, status="200") == 2
    assert delta("promethios_request_duration_seconds_count", route=CHAT_ROUTE) == 2
    assert delta("promethios_governance_duration_seconds_count", direction="input") == 2
    assert delta("promethios_model_duration_seconds_count") >= 1
    assert delta("promethios_tokens_total", direction="input") > 0
    assert delta("promethios_tokens_total", direction="output") > 0
    assert delta("promethios_governance_verdicts_total") >= 3
    found = delta("promethios_governance_verdicts_total") - delta(
        "promethios_governance_verdicts_total", policy="none"
    )
    assert found >= 1  # the e-mail address is a finding of some PII policy
    assert delta("promethios_trust_score_count") == 2
    assert delta("promethios_interactions_total", channel="agent") == 2
    assert _sum(after, "promethios_active_deployments") >= 1
    assert _sum(after, "promethios_component_up", component="governance") == 1
    # the writer's backlog, from its own stats: nothing refused, below its cap
    assert _sum(after, "promethios_writer_max_pending") == 100_000
    assert 0 <= _sum(after, "promethios_writer_pending") < 100_000
    assert _sum(after, "promethios_writer_refused") == 0
    # a histogram's +Inf bucket equals its count
    inf = _sum(after, "promethios_request_duration_seconds_bucket", route=CHAT_ROUTE, le="+Inf")
    assert inf == _sum(after, "promethios_request_duration_seconds_count", route=CHAT_ROUTE)


def test_timeseries_and_report(graph: Graph, alice: str, bob: str, agent: str) -> None:
    with graph.client(alice) as c:
        resp = c.get(f"/native-llm/agent/{agent}/timeseries", params={"bucket": 60})
        assert resp.status_code == 200, resp.text
        ts = resp.json()["data"]
        assert len(ts["buckets"]) == 60 and ts["summary"]["interactions"] >= 2
        filled = [b for b in ts["buckets"] if b["interactions"]]
        assert filled and all(b["latency_ms_p95"] >= b["latency_ms_p50"] > 0 for b in filled)
        assert any(b["trust_score"] is not None for b in filled)

        resp = c.get(f"/native-llm/agent/{agent}/report", params={"format": "json"})
        assert resp.status_code == 200
        assert "attachment" in resp.headers["content-disposition"]
        report = resp.json()["data"]
        assert report["agent_id"] == agent and len(report["interactions"]) >= 2
        assert sum(report["summary"]["violations_by_category"].values()) >= 1
        assert report["summary"]["interactions"] == len(report["interactions"])

        resp = c.get(f"/native-llm/agent/{agent}/report", params={"format": "csv"})
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
        rows = list(csv.DictReader(io.StringIO(resp.text)))
        assert len(rows) == len(report["interactions"])
        assert any(r["violations"] for r in rows)

        future = {"from": "2099-01-01T00:00:00Z", "to": "2099-01-01T01:00:00Z"}
        empty = c.get(f"/native-llm/agent/{agent}/report", params=future).json()["data"]
        assert empty["interactions"] == [] and empty["summary"]["trust_score_mean"] is None
        bad = c.get(f"/native-llm/agent/{agent}/report", params={"from": "yesterday"})
        assert bad.status_code == 400 and bad.json()["error"]["code"] == "bad_request"
        too_many = c.get(f"/native-llm/agent/{agent}/timeseries", params={"bucket": 1})
        assert too_many.status_code == 400
    with graph.client(bob) as c:
        for path in ("report", "timeseries"):
            resp = c.get(f"/native-llm/agent/{agent}/{path}")
            assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"
    with graph.client() as c:
        assert c.get(f"/native-llm/agent/{agent}/report").status_code == 401


def test_one_request_id_through_every_component(graph: Graph, alice: str, agent: str) -> None:
    rid = f"test-{uuid.uuid4().hex}"
    with graph.client(alice) as c:
        resp = c.post(
            f"/native-llm/agent/{agent}/chat",
            json={"message": "What are your opening hours?"},
            headers={"X-Request-ID": rid},
        )
    assert resp.status_code == 200 and resp.headers["x-request-id"] == rid
    log_dir = graph.log_path.parent / "logs"
    wanted = {"Ingress", "GovernanceScorer", "LLMServer", "MetricsWriter"}
    seen: set[str] = set()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and seen != wanted:
        seen = set()
        for line in (log_dir / "native_llm.log").read_text().splitlines():
            entry = json.loads(line)
            # A scorer or writer call can carry several requests: one line names them all.
            if rid == entry["request_id"] or rid in entry.get("request_ids", []):
                seen.add(entry["component"])
        time.sleep(0.5)
    assert seen == wanted
    assert (log_dir / "metrics_integration.log").exists() and (log_dir / "errors.log").exists()
    metrics_lines = (log_dir / "metrics_integration.log").read_text().splitlines()
    assert any(json.loads(x)["request_id"] == rid for x in metrics_lines)


def test_console_is_served(graph: Graph) -> None:
    with graph.client() as c:
        page = c.get("/dashboard/native-llm")
        assert page.status_code == 200 and "chart-trust" in page.text
        js = c.get("/dashboard/native-llm/static/vendor/chart.umd.min.js")
        assert js.status_code == 200 and "Chart.js" in js.text[:200]
        assert c.get("/dashboard/native-llm/static/../../settings.py").status_code == 404
        moved = c.get("/monitoring/native-llm", follow_redirects=False)
        assert moved.status_code == 307 and moved.headers["location"] == "/dashboard/native-llm"
