"""Ray Serve's HTTP proxy answers in the API's error shape when a replica is lost.

When the ingress replica serving a request dies (its node is lost, it is OOM-killed),
the proxy has no answer from the application: it sends nothing, and the client gets a
bare `500 Internal Server Error`; its own refusals (backpressure 503, 408 timeout) are
plain text. This ASGI middleware runs inside the proxy (Ray loads it from
`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=serve_app.proxy_guard:middlewares`, set in
the cluster's environment: scripts/cluster.sh, k8s/rayservice.yaml) and turns those into
the shape the route promises: the envelope `{"success": false, "error": {...}}`, or
OpenAI's `{"error": {...}}` under `/v1/`, with 503 `replica_unavailable` (retry: nothing
of the request was recorded as answered). A stream cut after it started cannot change
its status: it ends with an error chunk in OpenAI's shape, never a normal finish.

Plain ASGI, no Ray: tests drive it with a fake inner app.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from starlette.middleware import Middleware

from serve_app.api.openai.protocol import openai_error_body
from serve_app.errors import error_envelope

log = logging.getLogger("promethios.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

LOST = (
    "The replica serving this request was lost (a node or process failed) before it "
    "answered; nothing was recorded as answered. Retry the request."
)
# The proxy's own plain-text refusals, by status: our code for each.
_PROXY_CODES = {408: "timeout", 429: "rate_limit_exceeded", 503: "service_unavailable"}


def _body(path: str, status: int, code: str, message: str) -> bytes:
    if path.startswith("/v1/"):
        return json.dumps(openai_error_body(status, code, message)).encode()
    return json.dumps(error_envelope(code, message)).encode()


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes:
    for key, value in headers:
        if key.lower() == name:
            return value
    return b""


class ReplicaLossGuard:
    """Wraps the proxy's ASGI app (see the module docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        state: dict[str, Any] = {"started": False, "done": False, "sse": False, "held": None}

        async def guarded(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                headers = list(message.get("headers") or [])
                ctype = _header(headers, b"content-type")
                if message["status"] in _PROXY_CODES and ctype.startswith(b"text/plain"):
                    state["held"] = message  # the proxy's own refusal: rewritten below
                    return
                state["started"] = True
                state["sse"] = ctype.startswith(b"text/event-stream")
            elif kind == "http.response.body" and state["held"] is not None:
                held, state["held"] = state["held"], None
                status = held["status"]
                text = bytes(message.get("body") or b"").decode(errors="replace").strip()
                await self._send_error(send, path, status, _PROXY_CODES[status], text, held)
                state["started"] = state["done"] = True
                return
            elif kind == "http.response.body" and not message.get("more_body", False):
                state["done"] = True
            await send(message)

        try:
            await self.app(scope, receive, guarded)
        except Exception:  # the proxy lets a replica's death escape in some versions
            log.warning("request %s failed in the proxy", path, exc_info=True)
        if state["done"]:
            return
        if state["held"] is not None:  # a refusal whose body never came
            status = state["held"]["status"]
            await self._send_error(send, path, status, _PROXY_CODES[status], "", state["held"])
        elif not state["started"]:
            await self._send_error(send, path, 503, "replica_unavailable", LOST, None)
        elif state["sse"]:
            chunk = openai_error_body(503, "replica_unavailable", LOST)
            await send(
                {
                    "type": "http.response.body",
                    "body": f"data: {json.dumps(chunk)}\n\n".encode(),
                    "more_body": False,
                }
            )
        else:  # a JSON body cut half-way: close it; the client sees an incomplete body
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    @staticmethod
    async def _send_error(
        send: Send, path: str, status: int, code: str, message: str, held: Message | None
    ) -> None:
        body = _body(path, status, code, message or LOST)
        headers = [
            (k, v)
            for k, v in (held.get("headers") or [] if held else [])
            if k.lower() not in (b"content-type", b"content-length")
        ]
        headers += [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body, "more_body": False})


def middlewares() -> list[Middleware]:
    """The proxy callback (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`)."""
    return [Middleware(ReplicaLossGuard)]
