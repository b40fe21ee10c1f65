"""Security on the real graph. Tenant isolation: user B (bob) tries every route with user A's
(alice's) agent, production agent, conversation and audit ids and gets 404 in the
error envelope; alice's data is unchanged afterwards.

The routes are read from the graph's own OpenAPI schema, so a new route with a path
parameter fails `test_every_routed_id_is_covered` until this file knows how to fill it.
"""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Graph

pytestmark = pytest.mark.slow

CONVERSATION = "iso-conv-1"
# How each path parameter is filled with one of alice's ids (see the `ids` fixture).
PATH_IDS = {
    "agent_id": "agent_id",
    "production_agent_id": "production_agent_id",
    "conversation_id": "conversation_id",
    "model": "agent_id",
}
# A valid body for routes that need one, so validation cannot answer before ownership.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/native-llm/agent/{agent_id}/chat"): {"message": "Where is my order?"},
    ("post", "/api/v1/agents/{production_agent_id}/chat"): {"message": "Where is my order?"},
    ("post", "/bench/ungoverned/{agent_id}/chat"): {"message": "Where is my order?"},
    ("patch", "/native-llm/agent/{agent_id}"): {"config": {"name": "taken over"}},
    ("post", "/native-llm/agent/{agent_id}/deploy"): {},
}


def _assert_not_found(resp: httpx.Response, what: str) -> None:
    assert resp.status_code == 404, f"{what}: {resp.status_code} {resp.text}"
    body = resp.json()
    if resp.request.url.path.startswith("/v1/"):
        assert set(body) == {"error"} and body["error"]["message"], what
        assert body["error"]["code"] in ("model_not_found", "not_found"), what
    else:
        assert body["success"] is False and set(body) == {"success", "error"}, what
        assert body["error"]["code"] == "not_found" and body["error"]["message"], what


@pytest.fixture(scope="module")
def ids(graph: Graph, alice: str) -> dict[str, str]:
    """Alice's agent (chatted with, in a conversation) and its production deployment."""
    with graph.client(alice) as c:
        resp = c.post(
            "/native-llm/agent/create",
            json={"config": {"name": "Alice private", "max_tokens": 16}},
        )
        assert resp.status_code == 200, resp.text
        agent_id = resp.json()["data"]["agent_id"]
        resp = c.post(
            f"/native-llm/agent/{agent_id}/chat",
            json={"message": "Hello, where is my parcel?", "conversation_id": CONVERSATION},
        )
        assert resp.status_code == 200, resp.text
        resp = c.post(f"/native-llm/agent/{agent_id}/deploy", json={})
        assert resp.status_code == 200, resp.text
        production_agent_id = resp.json()["data"]["production_agent_id"]
    return {
        "agent_id": agent_id,
        "production_agent_id": production_agent_id,
        "conversation_id": CONVERSATION,
    }


@pytest.fixture(scope="module")
def schema(graph: Graph) -> dict[str, Any]:
    with graph.client() as c:
        resp = c.get("/openapi.json")
    assert resp.status_code == 200
    return resp.json()


def _routes_with_ids(schema: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    out = []
    for path, ops in schema["paths"].items():
        params = re.findall(r"{([^}]+)}", path)
        if params:
            out.extend((method, path, params) for method in ops)
    return out


def test_every_routed_id_is_covered(schema: dict[str, Any]) -> None:
    routes = _routes_with_ids(schema)
    assert len(routes) >= 15  # the seed's, lifecycle, governance, monitoring, OpenAI routes
    for method, path, params in routes:
        unknown = [p for p in params if p not in PATH_IDS]
        assert not unknown, f"{method.upper()} {path}: no isolation case for {unknown}"
        op = schema["paths"][path][method]
        if op.get("requestBody", {}).get("required"):
            assert (method, path) in BODIES, f"{method.upper()} {path}: add a body to BODIES"


def test_bob_gets_404_on_every_route_with_alices_ids(
    graph: Graph, bob: str, ids: dict[str, str], schema: dict[str, Any]
) -> None:
    tried = 0
    with graph.client(bob) as c:
        for method, path, _ in _routes_with_ids(schema):
            url = re.sub(r"{([^}]+)}", lambda m: ids[PATH_IDS[m.group(1)]], path)
            body = BODIES.get((method, path))
            resp = c.request(method.upper(), url, json=body)
            _assert_not_found(resp, f"{method.upper()} {url}")
            tried += 1
        # The production id where a plain agent id is expected, and the reverse.
        prod = ids["production_agent_id"]
        _assert_not_found(c.get(f"/v1/models/{prod}"), "model by production id")
        _assert_not_found(
            c.post(f"/native-llm/agent/{prod}/chat", json={"message": "hi"}), "chat by prod id"
        )
    assert tried >= 15


@pytest.mark.parametrize("which", ["agent_id", "production_agent_id"])
@pytest.mark.parametrize("stream", [False, True])
def test_bob_cannot_use_alices_agent_as_openai_model(
    graph: Graph, bob: str, ids: dict[str, str], which: str, stream: bool
) -> None:
    with graph.client(bob) as c:
        resp = c.post(
            "/v1/chat/completions",
            json={
                "model": ids[which],
                "stream": stream,
                "messages": [{"role": "user", "content": "Hello"}],
            },
        )
    _assert_not_found(resp, f"/v1/chat/completions model={which} stream={stream}")


def test_bob_cannot_evaluate_with_alices_agent(graph: Graph, bob: str, ids: dict[str, str]) -> None:
    with graph.client(bob) as c:
        resp = c.post(
            "/native-llm/governance/evaluate",
            json={"text": "hello", "agent_id": ids["agent_id"]},
        )
    _assert_not_found(resp, "governance/evaluate with alice's agent")


def test_listings_never_show_alices_ids(graph: Graph, bob: str, ids: dict[str, str]) -> None:
    with graph.client(bob) as c:
        listings = {
            "/native-llm/agents": c.get("/native-llm/agents", params={"limit": 100}),
            "/native-llm/dashboard/agents": c.get("/native-llm/dashboard/agents"),
            "/v1/models": c.get("/v1/models"),
        }
        # Paging from alice's id is refused like an unknown id: nothing after it is shown.
        after = c.get("/native-llm/agents", params={"after": ids["agent_id"]})
    assert after.status_code in (400, 404), after.text
    assert after.json()["success"] is False and "data" not in after.json()
    for name, resp in listings.items():
        assert resp.status_code == 200, f"{name}: {resp.text}"
        assert ids["agent_id"] not in resp.text, name
        assert ids["production_agent_id"] not in resp.text, name


def test_alices_agent_is_untouched_after_bobs_attempts(
    graph: Graph, alice: str, bob: str, ids: dict[str, str]
) -> None:
    agent_id = ids["agent_id"]
    with graph.client(bob) as c:  # the destructive ones again, to be sure of the order
        c.patch(f"/native-llm/agent/{agent_id}", json={"config": {"name": "taken over"}})
        c.post(f"/native-llm/agent/{agent_id}/undeploy")
        c.delete(f"/native-llm/agent/{agent_id}")
    with graph.client(alice) as c:
        resp = c.get(f"/native-llm/agent/{agent_id}")
        assert resp.status_code == 200, resp.text
        data = resp.json()["data"]
        assert data["config"]["name"] == "Alice private"
        assert ids["production_agent_id"] in resp.text  # still deployed
        conv = c.get(f"/native-llm/agent/{agent_id}/conversations/{CONVERSATION}")
        assert conv.status_code == 200, conv.text
        assert "parcel" in conv.text
        audit = c.get(f"/native-llm/agent/{agent_id}/audit/verify")
        assert audit.status_code == 200 and audit.json()["data"]["intact"] is True, audit.text


# -- CORS and logs ------------------------------------------------------------------------


def test_cors_is_closed_by_default(graph: Graph, alice: str) -> None:
    """No Access-Control-Allow-Origin for a cross-origin call or preflight (no allow-list)."""
    origin = {"Origin": "https://evil.example"}
    with graph.client(alice) as c:
        simple = c.get("/native-llm/agents", headers=origin)
        preflight = c.options(
            "/native-llm/agent/create",
            headers={
                **origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
    assert simple.status_code == 200
    for resp in (simple, preflight):
        assert not any(h.lower().startswith("access-control-allow") for h in resp.headers), (
            resp.headers
        )
    assert preflight.status_code == 405
    assert preflight.json()["success"] is False


PII_MESSAGE = (
    "Please update my account: email jane.roe@example.org, phone +1 415 555 0132, "
    "SSN 078-05-1120, card 4111 1111 1111 1111."
)
PII_VALUES = ("jane.roe@example.org", "415 555 0132", "078-05-1120", "4111 1111 1111 1111")


def _graph_logs(graph: Graph) -> dict[str, str]:
    """Every log file of the graph: serve run's output, PROMETHIOS_LOG_DIR, Ray's session logs."""
    files = [graph.log_path]
    proc = graph.process
    if proc is not None and proc.log_dir is not None:
        files += sorted(p for p in proc.log_dir.rglob("*") if p.is_file())
    session = proc.ray_session_dir() if proc is not None else None
    if session is not None:
        files += sorted(
            p
            for p in (session / "logs").rglob("*")
            if p.is_file() and p.suffix in (".log", ".out", ".err")
        )
    return {str(p): p.read_text(errors="replace") for p in files}


def test_logs_carry_no_pii_and_no_key(graph: Graph, alice: str, ids: dict[str, str]) -> None:
    """With redact_logs on (the default) neither the chat's PII nor the API key is logged,
    whether sent in the header, the message, a query string or a rejected request."""
    assert graph.process is not None and graph.process.log_dir is not None
    request_id = "redaction-check-0001"
    with graph.client(alice) as c:
        chat = c.post(
            f"/native-llm/agent/{ids['agent_id']}/chat",
            json={"message": f"{PII_MESSAGE} My key is {alice}.", "max_tokens": 8},
            headers={"X-Request-ID": request_id},
        )
        assert chat.status_code == 200, chat.text
        c.post(
            "/v1/chat/completions",
            json={
                "model": ids["agent_id"],
                "max_tokens": 8,
                "messages": [{"role": "user", "content": PII_MESSAGE}],
            },
        )
        c.get("/native-llm/agents", params={"user_id": "jane.roe@example.org", "key": alice})
        c.post(  # a refused body that carries the values too
            f"/native-llm/agent/{ids['agent_id']}/chat",
            json={"message": PII_MESSAGE, "unknown": alice},
        )
    with graph.client(alice[:-4] + "XXXX") as c:  # a wrong key near the real one
        assert c.get("/native-llm/agents").status_code == 401
    time.sleep(3)  # Ray's log monitor copies worker output to `serve run` every second
    logs = _graph_logs(graph)
    assert any(request_id in text for text in logs.values()), "the request's lines were read"
    secret_prefix = alice[3:19]  # any part of the key's secret would be a leak
    for path, text in logs.items():
        assert secret_prefix not in text, f"API key in {path}"
        for value in PII_VALUES:
            assert value not in text, f"{value!r} in {path}"
