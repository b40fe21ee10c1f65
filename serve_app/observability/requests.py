"""The ingress's per-request observation: route/status counts, latency, request id, access log."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.responses import Response

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


class RequestObservation(BaseHTTPMiddleware):
    """Count and time every request by route template and status; log one JSON line each.

    A module-level class (not a closure) so that Serve can pickle the app by reference.
    """

    async def dispatch(
        self, request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        serve_rid = current_request_id()
        rid = serve_rid or request.headers.get("x-request-id") or uuid.uuid4().hex
        token = request_id_var.set(rid)
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            if not serve_rid:  # under Serve the proxy already returns X-Request-ID
                response.headers["X-Request-ID"] = rid
            return response
        except asyncio.CancelledError:
            status = 499  # the client went away before the answer (nginx's convention)
            raise
        finally:
            elapsed = time.perf_counter() - started
            route = route_template(request)
            hub = _hub
            if hub is not None:
                hub.pending.inc("promethios_requests", {"route": route, "status": str(status)})
                hub.pending.observe(
                    "promethios_request_duration_seconds", elapsed, {"route": route}
                )
                hub.start()
            log.info(
                "%s %s %d",
                request.method,
                route,
                status,
                extra={"status": status, "duration_ms": round(elapsed * 1000.0, 3)},
            )
            request_id_var.reset(token)


def add_request_observation(api: FastAPI) -> None:
    api.add_middleware(RequestObservation)
