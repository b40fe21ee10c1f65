"""A policy file's classifier operating point, end to end: two agents over the same graph,
one on the default policy file and one on a copy that sets `classifier_max_benign_fpr:
0.10`, judge the same prompt differently through the dry-run endpoint and through chat."""

from __future__ import annotations

import pytest
import yaml

from serve_app.governance.library import POLICY_DIR
from serve_app.governance.policy import DEFAULT_POLICY_FILE
from serve_app.governance.semantic import default_semantic
from tests.integration.conftest import Graph
from tests.support.governance import dev_prompts_between_thresholds

pytestmark = pytest.mark.slow
POLICY = "zz-loose-classifier-test"
LOOSE = 0.10  # the policy's classifier_max_benign_fpr


def test_policy_file_chooses_the_classifier_operating_point(graph: Graph, alice: str) -> None:
    # Found with the classifier the graph serves (the same cache).
    between = dev_prompts_between_thresholds(default_semantic(), LOOSE)
    assert between, "no dev item between the two thresholds"
    text = between[0]
    path = POLICY_DIR / f"{POLICY}.yaml"
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    policy["classifier_max_benign_fpr"] = LOOSE
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    try:
        with graph.client(alice) as c:
            agents = {}
            for name, extra in (("default", {}), ("loose", {"policy": POLICY})):
                config = {"name": name, "compliance_mode": "strict", "max_tokens": 8, **extra}
                r = c.post("/native-llm/agent/create", json={"config": config})
                assert r.status_code == 200, r.text
                agents[name] = r.json()["data"]["agent_id"]
            verdicts = {}
            for name, agent_id in agents.items():
                r = c.post(
                    "/native-llm/governance/evaluate",
                    json={"text": text, "direction": "input", "agent_id": agent_id},
                )
                assert r.status_code == 200, r.text
                verdicts[name] = r.json()["data"]
            assert verdicts["default"]["action"] == "allow", verdicts["default"]
            assert verdicts["loose"]["action"] == "block", verdicts["loose"]
            ids = [v["policy_id"] for v in verdicts["loose"]["violations"]]
            assert any(i.startswith("safety.") for i in ids), ids
            # The chat path reads the same policy: the loose agent refuses, the model unasked.
            r = c.post(f"/native-llm/agent/{agents['loose']}/chat", json={"message": text})
            assert r.status_code == 200, r.text
            data = r.json()["data"]
            assert data["governance_metrics"]["action"] == "block", data
            assert data["usage"]["completion_tokens"] == 0
    finally:
        path.unlink(missing_ok=True)
