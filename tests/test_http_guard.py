"""The ingress API's edge, in-process: body limits (declared and chunked), content types,
JSON depth, NUL characters, CORS allow-list; each refusal in the error envelope."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi.testclient import TestClient

from serve_app.api.http import create_api, json_depth_exceeds
from serve_app.api.observability import install_observability


def _client(cors: list[str] | None = None) -> TestClient:
    return TestClient(install_observability(create_api(1000, cors or [])))


def _code(resp, status: int) -> str:  # type: ignore[no-untyped-def]
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["success"] is False and set(body["error"]) == {"code", "message"}
    return body["error"]["code"]


def test_body_limits_declared_and_chunked() -> None:
    c = _client()
    resp = c.post(
        "/native-llm/agent/create",
        content=b"x" * 1001,
        headers={"content-type": "application/json"},
    )
    assert _code(resp, 413) == "payload_too_large"

    def chunks() -> Iterator[bytes]:
        for _ in range(3):
            yield b"x" * 400

    resp = c.post(
        "/native-llm/agent/create", content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in resp.request.headers
    assert _code(resp, 413) == "payload_too_large"


def test_content_type_depth_and_nul() -> None:
    c = _client()
    form = c.post(
        "/native-llm/agent/create",
        content=b"a=b",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert _code(form, 415) == "unsupported_media_type"
    deep = c.post(
        "/native-llm/agent/create",
        content=b"[" * 40 + b"]" * 40,
        headers={"content-type": "application/json"},
    )
    assert _code(deep, 400) == "invalid_json"
    nul = c.post("/native-llm/agent/create", json={"config": {"name": "a\u0000"}})
    assert _code(nul, 400) == "bad_request"
    assert _code(c.get("/native-llm/agent/x%00"), 400) == "bad_request"
    assert json_depth_exceeds(b"[" * 33 + b"]" * 33)
    assert not json_depth_exceeds(b'{"a": "' + b"[" * 100 + b'"}')  # inside a string


def test_cors_closed_by_default_and_open_to_the_allow_list() -> None:
    closed = _client().get("/native-llm/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in closed.headers
    c = _client(["https://console.example"])
    ok = c.get("/native-llm/health", headers={"Origin": "https://console.example"})
    assert ok.headers["access-control-allow-origin"] == "https://console.example"
    other = c.get("/native-llm/health", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers
