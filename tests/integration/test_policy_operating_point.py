"""A policy file's classifier operating point, end to end: two agents over the same graph,
one on the default policy file and one on a copy that sets `classifier_max_benign_fpr:
0.10`, judge the same prompt differently through the dry-run endpoint and through chat."""

from __future__ import annotations

import pytest
import yaml

from serve_app.governance.dataset import load_items
from serve_app.governance.hazards import HAZARDS
from serve_app.governance.library import POLICY_DIR
from serve_app.governance.policy import DEFAULT_POLICY_FILE
from serve_app.governance.semantic import default_semantic
from tests.integration.conftest import Graph

pytestmark = pytest.mark.slow
POLICY = "zz-loose-classifier-test"


def _between_the_thresholds() -> str:
    """A harmful dev prompt the default threshold lets through and the 10 % one flags,
    found with the classifier the graph serves (the same cache)."""
    semantic = default_semantic()
    clf = semantic.classifier
    dev = [i for i in load_items() if i.split == "dev" and i.label in HAZARDS]
    got = semantic.classify([i.text for i in dev])
    low, high = clf.by_budget[0.10] + 1e-3, clf.threshold - 1e-3
    between = [i.text for i, c in zip(dev, got, strict=True) if low < c.confidence < high]
    assert between, "no dev item between the two thresholds"
    return between[0]


def test_policy_file_chooses_the_classifier_operating_point(graph: Graph, alice: str) -> None:
    path = POLICY_DIR / f"{POLICY}.yaml"
    policy = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    policy["classifier_max_benign_fpr"] = 0.10
    path.write_text(yaml.safe_dump(policy, sort_keys=False))
    text = _between_the_thresholds()
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
