"""Agent lifecycle, conversations and per-key limits' headers on the real graph."""

from __future__ import annotations

import pytest

from tests.integration.conftest import Graph

pytestmark = pytest.mark.slow


def _data(resp) -> dict:
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def test_list_get_patch_delete(graph: Graph, bob: str) -> None:
    with graph.client(bob) as c:
        ids = [
            _data(c.post("/native-llm/agent/create", json={"config": {"name": f"L{i}"}}))[
                "agent_id"
            ]
            for i in range(3)
        ]
        page = _data(c.get("/native-llm/agents", params={"limit": 2}))
        assert page["has_more"] is True and len(page["agents"]) == 2
        rest = _data(c.get("/native-llm/agents", params={"limit": 2, "after": page["next_after"]}))
        listed = [a["agent_id"] for a in page["agents"] + rest["agents"]]
        assert [i for i in listed if i in ids] == ids
        one = _data(c.get(f"/native-llm/agent/{ids[0]}"))
        assert one["name"] == "L0" and one["deployment"] is None
        patched = _data(
            c.patch(f"/native-llm/agent/{ids[0]}", json={"config": {"temperature": 0.1}})
        )
        assert patched["config"]["temperature"] == 0.1 and patched["config"]["name"] == "L0"
        bad = c.patch(f"/native-llm/agent/{ids[0]}", json={"config": {"temperature": 5}})
        assert bad.status_code == 422
        too_long = c.patch(f"/native-llm/agent/{ids[0]}", json={"config": {"max_tokens": 4096}})
        assert too_long.status_code == 400
        # A chat caches its agent in the ingress for key_cache_s; a change or a deletion
        # made through the API is seen by the next chat at once.
        chat = f"/native-llm/agent/{ids[1]}/chat"
        assert c.post(chat, json={"message": "Hi", "max_tokens": 4}).status_code == 200
        assert _data(c.delete(f"/native-llm/agent/{ids[1]}"))["deleted"] is True
        assert c.get(f"/native-llm/agent/{ids[1]}").status_code == 404
        assert c.post(chat, json={"message": "Hi", "max_tokens": 4}).status_code == 404
        assert c.delete(f"/native-llm/agent/{ids[1]}").status_code == 404


def test_conversation_history_is_stored_and_returned(graph: Graph, bob: str) -> None:
    with graph.client(bob) as c:
        aid = _data(
            c.post("/native-llm/agent/create", json={"config": {"name": "C", "max_tokens": 24}})
        )["agent_id"]
        url = f"/native-llm/agent/{aid}/chat"
        first = _data(c.post(url, json={"message": "My order is 1234.", "conversation_id": "c1"}))
        second = _data(c.post(url, json={"message": "What was it?", "conversation_id": "c1"}))
        assert first["history_turns"] == 0 and second["history_turns"] == 2
        conv = _data(c.get(f"/native-llm/agent/{aid}/conversations/c1"))
        assert [t["role"] for t in conv["turns"]] == ["user", "assistant", "user", "assistant"]
        assert conv["turns"][0]["content"] == "My order is 1234."
        assert conv["turns"][1]["content"] == first["response"]
        assert c.get(f"/native-llm/agent/{aid}/conversations/nope").status_code == 404
        plain = c.post(url, json={"message": "Hi"})
        assert plain.headers["x-ratelimit-limit-requests"] == "600"


def test_idempotency_key_on_create_and_deploy(graph: Graph, bob: str) -> None:
    body = {"config": {"name": "Idem"}}
    with graph.client(bob) as c:
        h = {"Idempotency-Key": "create-1"}
        first = _data(c.post("/native-llm/agent/create", json=body, headers=h))
        again = _data(c.post("/native-llm/agent/create", json=body, headers=h))
        assert again == first
        other = c.post("/native-llm/agent/create", json={"config": {"name": "X"}}, headers=h)
        assert other.status_code == 409
        aid = first["agent_id"]
        names = [
            a["name"] for a in _data(c.get("/native-llm/agents", params={"limit": 100}))["agents"]
        ]
        assert names.count("Idem") == 1
        dh = {"Idempotency-Key": "deploy-1"}
        d1 = _data(c.post(f"/native-llm/agent/{aid}/deploy", json={}, headers=dh))
        d2 = _data(c.post(f"/native-llm/agent/{aid}/deploy", json={}, headers=dh))
        assert d1["deployment_id"] == d2["deployment_id"]
