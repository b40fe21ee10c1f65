"""Bad input against the real graph: each is a clear 4xx in the error envelope, never a 500.

Oversized bodies (declared and chunked), deeply nested JSON, invalid UTF-8, broken
JSON, huge and negative numbers, unknown fields, wrong JSON types and wrong content
types, on the seed's routes and the OpenAI-compatible ones (whose envelope is OpenAI's).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.integration.conftest import Graph

pytestmark = pytest.mark.slow

MAX_BODY = 65536  # PROMETHIOS_MAX_BODY_BYTES's default, which the test graph uses


def _error(resp: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The error of `resp`, checked to be `status` in the envelope of its route."""
    assert resp.status_code == status, f"{resp.status_code} {resp.text[:500]}"
    body = resp.json()
    if resp.request.url.path.startswith("/v1/"):
        assert set(body) == {"error"}
        err = body["error"]
        assert set(err) == {"message", "type", "param", "code"}
    else:
        assert body["success"] is False and set(body) == {"success", "error"}
        err = body["error"]
        assert set(err) == {"code", "message"}
    assert err["message"] and "Traceback" not in err["message"]
    if code is not None:
        assert err["code"] == code, err
    return err


@pytest.fixture(scope="module")
def client(graph: Graph, alice: str) -> Iterator[httpx.Client]:
    with graph.client(alice) as c:
        yield c


@pytest.fixture(scope="module")
def agent_id(client: httpx.Client) -> str:
    resp = client.post(
        "/native-llm/agent/create", json={"config": {"name": "Bad input", "max_tokens": 8}}
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]["agent_id"]


def _chat_url(agent_id: str) -> str:
    return f"/native-llm/agent/{agent_id}/chat"


def _openai(agent_id: str, **extra: Any) -> dict[str, Any]:
    return {"model": agent_id, "messages": [{"role": "user", "content": "Hi"}], **extra}


# -- sizes ------------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["native", "openai"])
def test_oversized_body_with_content_length_is_413(
    client: httpx.Client, agent_id: str, route: str
) -> None:
    big = "a" * (MAX_BODY + 10)
    if route == "native":
        resp = client.post(_chat_url(agent_id), json={"message": big})
    else:
        resp = client.post(
            "/v1/chat/completions",
            json={"model": agent_id, "messages": [{"role": "user", "content": big}]},
        )
    _error(resp, 413, "payload_too_large")


def test_oversized_chunked_body_without_content_length_is_413(
    client: httpx.Client, agent_id: str
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"message": "'
        for _ in range(20):
            yield b"a" * 8192
        yield b'"}'

    resp = client.post(
        _chat_url(agent_id), content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in resp.request.headers
    _error(resp, 413, "payload_too_large")


def test_message_over_the_character_limit_is_413(client: httpx.Client, agent_id: str) -> None:
    resp = client.post(_chat_url(agent_id), json={"message": "word " * 2000})
    _error(resp, 413, "payload_too_large")


# -- malformed bodies -------------------------------------------------------------------


@pytest.mark.parametrize("depth", [40, 20_000])
def test_deeply_nested_json_is_400(client: httpx.Client, agent_id: str, depth: int) -> None:
    nested = "[" * depth + "]" * depth
    body = f'{{"message": "hi", "context": {{"a": {nested}}}}}'.encode()
    resp = client.post(
        _chat_url(agent_id), content=body, headers={"Content-Type": "application/json"}
    )
    _error(resp, 400, "invalid_json")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"message": "hi \xff\xfe there"}',  # invalid UTF-8
        b'{"message": "hi"',  # truncated
        b'{"message": hi}',  # not JSON
        b"\x00\x01\x02",
    ],
)
@pytest.mark.parametrize("route", ["native", "openai"])
def test_undecodable_bodies_are_400(
    client: httpx.Client, agent_id: str, raw: bytes, route: str
) -> None:
    url = _chat_url(agent_id) if route == "native" else "/v1/chat/completions"
    resp = client.post(url, content=raw, headers={"Content-Type": "application/json"})
    err = _error(resp, 400)
    assert err["code"] in ("invalid_json", "bad_request")


# -- numbers ----------------------------------------------------------------------------


@pytest.mark.parametrize("max_tokens", [4097, 10**6, 10**30])  # the window is 4,096
def test_huge_max_tokens_is_400(client: httpx.Client, agent_id: str, max_tokens: int) -> None:
    resp = client.post(_chat_url(agent_id), json={"message": "hi", "max_tokens": max_tokens})
    err = _error(resp, 400, "bad_request")
    assert "context window" in err["message"]
    resp = client.post("/v1/chat/completions", json=_openai(agent_id, max_tokens=max_tokens))
    _error(resp, 400, "bad_request")


def test_non_integer_max_tokens_is_422(client: httpx.Client, agent_id: str) -> None:
    for value in (1e300, "many", 1.5, [8], {"n": 8}):
        resp = client.post(_chat_url(agent_id), json={"message": "hi", "max_tokens": value})
        _error(resp, 422, "validation_error")


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("chat", {"message": "hi", "max_tokens": -1}),
        ("chat", {"message": "hi", "max_tokens": 0}),
        ("chat", {"message": "hi", "temperature": -0.5}),
        ("chat", {"message": "hi", "temperature": 2.5}),
        ("create", {"config": {"name": "n", "trust_threshold": -0.1}}),
        ("create", {"config": {"name": "n", "max_tokens": -5}}),
        ("deploy", {"rate_limit": {"requests_per_minute": -10}}),
        ("deploy", {"rate_limit": {"tokens_per_minute": 0}}),
    ],
)
def test_negative_and_out_of_range_numbers_are_422(
    client: httpx.Client, agent_id: str, url: str, body: dict[str, Any]
) -> None:
    path = {
        "chat": _chat_url(agent_id),
        "create": "/native-llm/agent/create",
        "deploy": f"/native-llm/agent/{agent_id}/deploy",
    }[url]
    _error(client.post(path, json=body), 422, "validation_error")


def test_negative_numbers_in_queries_are_4xx(client: httpx.Client, agent_id: str) -> None:
    _error(client.get("/native-llm/agents", params={"limit": -1}), 422, "validation_error")
    resp = client.get(f"/native-llm/agent/{agent_id}/timeseries", params={"bucket": -60})
    _error(resp, 422, "validation_error")
    resp = client.post(
        "/v1/chat/completions",
        json=_openai(agent_id, max_tokens=-3, temperature=-1, n=-2),
    )
    _error(resp, 422, "validation_error")


# -- fields and types -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "body"),
    [
        ("chat", {"message": "hi", "admin": True}),
        ("chat", {"message": "hi", "user_id": "alice", "role": "root"}),
        ("create", {"config": {"name": "n", "is_admin": True}}),
        ("create", {"config": {"name": "n"}, "owner": "bob"}),
    ],
)
def test_unknown_fields_are_refused_on_the_seed_api(
    client: httpx.Client, agent_id: str, url: str, body: dict[str, Any]
) -> None:
    path = _chat_url(agent_id) if url == "chat" else "/native-llm/agent/create"
    err = _error(client.post(path, json=body), 422, "validation_error")
    assert "Extra inputs are not permitted" in err["message"]


def test_unknown_fields_are_ignored_on_the_openai_api(client: httpx.Client, agent_id: str) -> None:
    resp = client.post(
        "/v1/chat/completions",
        json=_openai(agent_id, max_tokens=4, logprobs=True, seed=3, frobnicate={"x": 1}),
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["message"]["role"] == "assistant"


@pytest.mark.parametrize(
    "body",
    [
        [{"message": "hi"}],
        "hi",
        42,
        {"message": 42},
        {"message": ["hi"]},
        {"message": ""},
        {"message": "hi", "context": "not an object"},
        {"message": "hi", "conversation_id": "../../etc/passwd"},
        {"message": "hi", "max_tokens": True},  # a boolean is not a token count
        {"message": "hi", "max_tokens": "12"},
    ],
)
def test_wrong_json_types_are_422(client: httpx.Client, agent_id: str, body: Any) -> None:
    _error(client.post(_chat_url(agent_id), json=body), 422, "validation_error")


@pytest.mark.parametrize(
    "body",
    [
        {"model": "x", "messages": []},
        {"model": "x", "messages": "hi"},
        {"model": "", "messages": [{"role": "user", "content": "hi"}]},
        {"model": "x", "messages": [{"role": "wizard", "content": "hi"}]},
        {"messages": [{"role": "user", "content": "hi"}]},
    ],
)
def test_wrong_openai_shapes_are_422(client: httpx.Client, body: Any) -> None:
    _error(client.post("/v1/chat/completions", json=body), 422, "validation_error")


@pytest.mark.parametrize(
    ("content_type", "payload"),
    [
        ("text/plain", b'{"message": "hi"}'),
        ("application/x-www-form-urlencoded", b"message=hi"),
        (
            "multipart/form-data; boundary=xyz",
            b'--xyz\r\nContent-Disposition: form-data; name="message"\r\n\r\nhi\r\n--xyz--\r\n',
        ),
        ("application/xml", b"<message>hi</message>"),
    ],
)
@pytest.mark.parametrize("route", ["native", "openai"])
def test_wrong_content_types_are_415(
    client: httpx.Client, agent_id: str, content_type: str, payload: bytes, route: str
) -> None:
    url = _chat_url(agent_id) if route == "native" else "/v1/chat/completions"
    resp = client.post(url, content=payload, headers={"Content-Type": content_type})
    _error(resp, 415, "unsupported_media_type")


def test_nul_characters_are_400_and_recording_goes_on(client: httpx.Client, agent_id: str) -> None:
    """NUL (which PostgreSQL's text cannot hold) is refused at the edge, in a body, a path
    or a query; other control characters are answered and recorded."""
    for resp in (
        client.post(_chat_url(agent_id), json={"message": "hi\u0000there"}),
        client.post("/native-llm/agent/create", json={"config": {"name": "a\u0000"}}),
        client.get(f"/native-llm/agent/{agent_id}%00/scorecard"),
        client.get("/native-llm/agents", params={"after": "native-\u0000"}),
    ):
        _error(resp, 400, "bad_request")

    def total() -> int:
        resp = client.get(f"/native-llm/agent/{agent_id}/scorecard")
        assert resp.status_code == 200, resp.text
        return int(resp.json()["data"]["performance_metrics"]["total_interactions"])

    before = total()
    odd = client.post(_chat_url(agent_id), json={"message": "hi\u0007\u001b[31m there\u2028"})
    assert odd.status_code == 200, odd.text
    ok = client.post(_chat_url(agent_id), json={"message": "Hello again", "max_tokens": 4})
    assert ok.status_code == 200, ok.text
    deadline = time.monotonic() + 30
    while total() - before < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert total() - before == 2


def test_methods_and_paths_that_do_not_exist(client: httpx.Client, agent_id: str) -> None:
    _error(client.put(_chat_url(agent_id), json={"message": "hi"}), 405, "method_not_allowed")
    _error(client.get("/native-llm/nothing-here"), 404, "not_found")
    _error(client.post("/v1/chat/completions/extra", json={}), 404)


def test_bad_authorization_headers_are_401(graph: Graph, agent_id: str) -> None:
    for header in ("", "Bearer", "Bearer ", "Basic abc", "Bearer pn_" + "x" * 40, "Bearer \u00e9"):
        with httpx.Client(base_url=graph.base_url, timeout=30) as c:
            try:
                resp = c.get("/native-llm/agents", headers={"Authorization": header})
            except (UnicodeEncodeError, httpx.LocalProtocolError):
                continue  # the client refuses to send it; nothing to test
        _error(resp, 401, "unauthorized")
