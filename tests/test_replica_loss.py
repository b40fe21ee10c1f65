"""A replica lost mid-request, without Ray: the proxy middleware (serve_app/proxy_guard.py)
with the messages Ray Serve's proxy produces (nothing at all when the replica died, its
plain-text refusals, a stream cut half-way; the application's own answers pass
untouched), and the ingress's one retry of a scorer call whose replica died. The live
check (a node killed under load) is in tests/cluster/."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from serve_app.proxy_guard import ReplicaLossGuard, middlewares


def _run(inner: Any, path: str = "/native-llm/agent/a/chat") -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "method": "POST", "headers": []}
    asyncio.run(ReplicaLossGuard(inner)(scope, receive, send))
    return sent


def _json(sent: list[dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    assert sent[0]["type"] == "http.response.start"
    body = b"".join(m.get("body", b"") for m in sent[1:])
    headers = dict(sent[0]["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert int(headers[b"content-length"]) == len(body)
    return sent[0]["status"], json.loads(body)


async def _lost(scope, receive, send) -> None:  # noqa: ANN001
    """What the proxy does when the replica died: sends nothing (uvicorn would 500)."""


async def _raises(scope, receive, send) -> None:  # noqa: ANN001
    raise RuntimeError("ActorDiedError")


@pytest.mark.parametrize("inner", [_lost, _raises])
def test_a_lost_replica_gets_503_in_the_envelope(inner: Any) -> None:
    status, body = _json(_run(inner))
    assert status == 503
    assert body["success"] is False and body["error"]["code"] == "replica_unavailable"
    assert "Retry" in body["error"]["message"]


def test_openai_routes_get_openai_s_error_shape() -> None:
    status, body = _json(_run(_lost, "/v1/chat/completions"))
    assert status == 503 and set(body) == {"error"}
    assert body["error"]["code"] == "replica_unavailable"
    assert body["error"]["type"] == "server_error"


def test_the_proxy_s_plain_text_refusals_are_rewritten() -> None:
    async def backpressure(scope, receive, send) -> None:  # noqa: ANN001
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"retry-after", b"2"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b"Request dropped due to backpressure"})

    sent = _run(backpressure)
    status, body = _json(sent)
    assert status == 503 and body["error"]["code"] == "service_unavailable"
    assert body["error"]["message"] == "Request dropped due to backpressure"
    assert dict(sent[0]["headers"])[b"retry-after"] == b"2"  # the proxy's headers are kept


def test_a_stream_cut_half_way_ends_with_an_error_chunk() -> None:
    async def cut(scope, receive, send) -> None:  # noqa: ANN001
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream; charset=utf-8")],
            }
        )
        chunk = {"choices": [{"delta": {"content": "Once"}, "finish_reason": None}]}
        await send(
            {
                "type": "http.response.body",
                "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                "more_body": True,
            }
        )
        raise RuntimeError("ActorDiedError")

    sent = _run(cut, "/v1/chat/completions")
    assert sent[0]["status"] == 200
    last = sent[-1]
    assert last["more_body"] is False
    payload = json.loads(last["body"].decode().removeprefix("data: "))
    assert payload["error"]["code"] == "replica_unavailable"
    assert b"[DONE]" not in b"".join(m.get("body", b"") for m in sent)


def test_the_application_s_own_answers_pass_untouched() -> None:
    own = {"success": False, "error": {"code": "model_unavailable", "message": "m"}}

    async def app(scope, receive, send) -> None:  # noqa: ANN001
        body = json.dumps(own).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    sent = _run(app)
    assert len(sent) == 2
    assert sent[0]["status"] == 503 and json.loads(sent[1]["body"]) == own


def test_a_finished_stream_gets_nothing_appended() -> None:
    async def app(scope, receive, send) -> None:  # noqa: ANN001
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": False})

    sent = _run(app, "/v1/chat/completions")
    assert len(sent) == 2 and sent[-1]["body"] == b"data: [DONE]\n\n"


def test_the_callback_returns_starlette_middleware() -> None:
    from ray.serve._private.http_util import validate_http_proxy_callback_return

    assert validate_http_proxy_callback_return(middlewares())


def test_a_scorer_replica_lost_mid_call_is_retried_once_on_another() -> None:
    """RayBackends.evaluate: the first replica dies (ActorDiedError), the second answers;
    two deaths in a row fail closed with 503 governance_unavailable."""
    from ray.exceptions import ActorDiedError

    from serve_app.backends import RayBackends
    from serve_app.errors import ScorerUnavailable

    class Method:
        def __init__(self, outcomes: list[Any]) -> None:
            self.outcomes, self.calls = outcomes, 0

        def remote(self, calls: list[Any], request_ids: list[str]) -> Any:
            outcome = self.outcomes[self.calls]
            self.calls += 1

            async def answer() -> Any:  # one result per call of the batch
                if isinstance(outcome, Exception):
                    raise outcome
                return [outcome] * len(calls)

            return answer()

    class Scorer:  # the deployment's batch method, as RayBackends calls it
        def __init__(self, outcomes: list[Any]) -> None:
            self.evaluate_many = Method(outcomes)

    scorer = Scorer([ActorDiedError(), "verdict"])
    backends = RayBackends(llm=None, scorer=scorer, writer=None, timeout_s=5)
    assert asyncio.run(backends.evaluate("hi", "input", "standard", 0.5)) == "verdict"
    assert scorer.evaluate_many.calls == 2
    dead = RayBackends(llm=None, scorer=Scorer([ActorDiedError()] * 2), writer=None, timeout_s=5)
    with pytest.raises(ScorerUnavailable):
        asyncio.run(dead.evaluate("hi", "input", "standard", 0.5))
