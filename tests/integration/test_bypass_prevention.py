"""Bypass prevention on the real graph: a scorer that cannot score fails closed (503,
never unscored text). The scorer is made to fail for real: the agent's policy file is
broken on disk after the agent was created, so the scorer replica raises on load."""

from __future__ import annotations

import shutil

import pytest

from serve_app.governance.library import POLICY_DIR
from serve_app.governance.policy import DEFAULT_POLICY_FILE
from tests.integration.conftest import Graph

pytestmark = pytest.mark.slow
POLICY = "zz-bypass-test"


def test_scorer_failure_gives_503_never_unscored_text(graph: Graph, alice: str) -> None:
    path = POLICY_DIR / f"{POLICY}.yaml"
    shutil.copy(DEFAULT_POLICY_FILE, path)
    try:
        with graph.client(alice) as c:
            r = c.post(
                "/native-llm/agent/create",
                json={"config": {"name": "bypass", "policy": POLICY, "max_tokens": 16}},
            )
            assert r.status_code == 200, r.text
            agent_id = r.json()["data"]["agent_id"]
            ok = c.post(f"/native-llm/agent/{agent_id}/chat", json={"message": "Hello there"})
            assert ok.status_code == 200, ok.text
            path.write_text("version: broken\nprinciples: [}\n")  # the operator breaks it
            for _ in range(2):
                r = c.post(f"/native-llm/agent/{agent_id}/chat", json={"message": "Hello there"})
                assert r.status_code == 503, r.text
                body = r.json()
                assert body == {
                    "success": False,
                    "error": {
                        "code": "governance_unavailable",
                        "message": body["error"]["message"],
                    },
                }
            r = c.post(
                "/native-llm/governance/evaluate",
                json={"text": "hello", "direction": "output", "agent_id": agent_id},
            )
            assert r.status_code == 503 and r.json()["error"]["code"] == "governance_unavailable"
    finally:
        path.unlink(missing_ok=True)


def test_unknown_policy_is_refused_at_create(graph: Graph, alice: str) -> None:
    with graph.client(alice) as c:
        r = c.post("/native-llm/agent/create", json={"config": {"name": "x", "policy": "nope"}})
        assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
        r = c.post("/native-llm/agent/create", json={"config": {"name": "x", "policy": "../x"}})
        assert r.status_code == 422
