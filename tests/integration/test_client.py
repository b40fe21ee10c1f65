"""The Python client and the terminal commands against the real graph."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from serve_app.client import NativeLLMClient, NativeLLMError
from tests.integration.conftest import Graph

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def test_client_walks_the_seed_service(graph: Graph, alice: str) -> None:
    with NativeLLMClient(graph.base_url, alice) as client:
        assert client.get_model_info()["status"] == "ready"
        agent = client.create_native_agent(
            "Client Bot", "made by the Python client", compliance_mode="standard", max_tokens=48
        )
        agent_id = agent["agent_id"]
        reply = client.chat_with_agent(agent_id, "How do I reset my password?")
        assert reply["response"].strip() and reply["governance_metrics"]["response_time_ms"] > 0
        streamed = "".join(client.stream_chat(agent_id, "Where is my package?", max_tokens=48))
        assert streamed.strip()
        card = client.get_agent_scorecard(agent_id)
        assert card["performance_metrics"]["total_interactions"] == 2
        dep = client.deploy_agent(agent_id, rate_limit={"requests_per_minute": 100})
        assert dep["production_agent_id"] == f"prod-{agent_id}"
        assert dep["features"]["rate_limiting"] is True
        assert client.get_agent_metrics(agent_id)["real_time_metrics"]["total_interactions"] == 2
        ids = [a["agent_id"] for a in client.list_agents(limit=100)["agents"]]
        assert agent_id in ids
        with pytest.raises(NativeLLMError) as err:
            client.get_agent_scorecard("native-00000000")
        assert err.value.status_code == 404 and err.value.code == "not_found"
        with pytest.raises(ValueError):
            client.create_native_agent("bad", temperature=3.0)


def _cli(graph: Graph, key: str, *args: str, stdin: str | None = None) -> str:
    env = {**os.environ, "PROMETHIOS_API_URL": graph.base_url, "PROMETHIOS_API_KEY": key}
    out = subprocess.run(
        [str(BIN / "promethios"), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cli_creates_lists_and_chats(graph: Graph, alice: str) -> None:
    import json

    created = json.loads(_cli(graph, alice, "agents", "create", "CLI Bot", "--max-tokens", "40"))
    agent_id = created["agent_id"]
    assert agent_id in _cli(graph, alice, "agents", "list", "--limit", "100")
    out = _cli(graph, alice, "chat", agent_id, stdin="How do I reset my password?\n/quit\n")
    assert out.startswith("agent> ") and len(out.strip()) > len("agent>")
