"""The ingress's per-request observation: route/status counts, latency, request id, access log."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from fastapi import FastAPI, Request

from serve_app.observability.instrument import MetricsHub
from serve_app.observability.logs import current_request_id, request_id_var

log = logging.getLogger("promethios.api.access")

_hub: MetricsHub | None = None


def install_hub(hub: MetricsHub | None) -> None:
    """Called once per ingress replica (or test app), like install_services."""
    global _hub
    _hub = hub


def current_hub() -> MetricsHub | None:
    return _hub


def route_template(request: Request) -> str:
    """The matched route's path template (bounded label values); "unmatched" for a 404."""
    route = request.scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class RequestObservation:
    """Count and time every request by route template and status; log one JSON line each.

    A pure ASGI middleware (Starlette's BaseHTTPMiddleware ran each request through a
    task group and memory streams: a share of the ingress's CPU per request in
    `make bench-gateway`'s profile). The duration runs to the response's last byte, a
    stream's included. A module-level class (not a closure) so that Serve can pickle the
    app by reference.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        serve_rid = current_request_id()
        rid = serve_rid or _header(scope, b"x-request-id") or uuid.uuid4().hex
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500

        async def send_observed(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if not serve_rid:  # under Serve the proxy already returns X-Request-ID
                    headers = message.get("headers", [])
                    message["headers"] = [*headers, (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except asyncio.CancelledError:
            status = 499  # the client went away before the answer (nginx's convention)
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            hub = _hub
            if hub is not None:
                hub.pending.inc("promethios_requests", {"route": route, "status": str(status)})
                hub.pending.observe(
                    "promethios_request_duration_seconds", elapsed, {"route": route}
                )
                hub.start()
            log.info(
                "%s %s %d",
                scope["method"],
                route,
                status,
                extra={"status": status, "duration_ms": round(elapsed * 1000.0, 3)},
            )
            request_id_var.reset(token)


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


def add_request_observation(api: FastAPI) -> None:
    api.add_middleware(RequestObservation)
