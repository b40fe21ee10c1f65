"""The FastAPI application: routers, the error envelope, size limits, CORS, health.

Request bodies are bounded by `max_body_bytes` whether or not the client sends a
Content-Length (a chunked body is counted as it arrives) and must be JSON
(415 otherwise). CORS is closed unless an allow-list is configured
(`PROMETHIOS_CORS_ALLOW_ORIGINS`): without one, no response carries
Access-Control-Allow-Origin and a browser refuses cross-origin calls.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve_app import __version__
from serve_app.api.agents.router import router as agents_router
from serve_app.api.bench import router as bench_router
from serve_app.api.deps import ServicesDep
from serve_app.api.governance.router import router as governance_router
from serve_app.api.native.router import router as native_router
from serve_app.api.openai.protocol import openai_error_body
from serve_app.api.openai.router import router as openai_router
from serve_app.errors import ApiError, error_envelope, success_envelope
from serve_app.store.engine import database_unreachable

log = logging.getLogger("promethios.api")

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
}


def _describe(errors: list[dict[str, Any]]) -> tuple[int, str, str]:
    """Status, code and message for a request validation failure."""
    for err in errors:
        if err.get("type") == "json_invalid":
            return 400, "invalid_json", f"request body is not valid JSON: {err.get('msg')}"
    parts = []
    for err in errors[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{loc}: {err.get('msg')}")
    return 422, "validation_error", "; ".join(parts)


def error_response(
    request: Request, status: int, code: str, message: str, headers: dict | None = None
) -> JSONResponse:
    """Every error response: OpenAI's shape under /v1/, the envelope elsewhere."""
    if request.url.path.startswith("/v1/"):
        body = openai_error_body(status, code, message)
    else:
        body = error_envelope(code, message)
    return JSONResponse(body, status_code=status, headers=headers)


_BODY_METHODS = {"POST", "PUT", "PATCH"}
MAX_JSON_DEPTH = 32
_NUL_MESSAGE = "NUL characters (\\u0000, %00) are not allowed in requests"


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """True when arrays/objects in `body` nest deeper than `limit` (strings skipped)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth, in_string, escaped = 0, False, False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


async def _send_error(
    scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str
) -> None:
    await error_response(Request(scope), status, code, message)(scope, receive, send)


class RequestBodyGuard:
    """Pure ASGI middleware: 413 over `max_body_bytes` (declared or counted), 415 for a
    body that is not JSON, 400 for JSON nested deeper than MAX_JSON_DEPTH and for NUL
    characters in the path, query or body. The body is read here (it is small by then)
    and replayed to the app.

    A module-level class (not a closure) so that Serve can pickle the app by reference.
    """

    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b""):
            await _send_error(scope, receive, send, 400, "bad_request", _NUL_MESSAGE)
            return
        if scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        too_large = f"request body over {limit} bytes (PROMETHIOS_MAX_BODY_BYTES)"
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        length = headers.get(b"content-length", b"").decode("latin-1").strip()
        if length.isdigit() and int(length) > limit:
            await _send_error(scope, receive, send, 413, "payload_too_large", too_large)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _send_error(scope, receive, send, 413, "payload_too_large", too_large)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        if body.strip() and ctype and ctype != "application/json" and not ctype.endswith("+json"):
            await _send_error(
                scope,
                receive,
                send,
                415,
                "unsupported_media_type",
                f"request body must be application/json, not {ctype!r}",
            )
            return
        if b"\\u0000" in body:  # PostgreSQL's text cannot hold NUL; no client needs one
            await _send_error(scope, receive, send, 400, "bad_request", _NUL_MESSAGE)
            return
        if json_depth_exceeds(body):
            await _send_error(
                scope,
                receive,
                send,
                400,
                "invalid_json",
                f"request body nests deeper than {MAX_JSON_DEPTH} levels",
            )
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def create_api(max_body_bytes: int = 65536, cors_origins: list[str] | None = None) -> FastAPI:
    """The ingress's HTTP API; services are installed by the ingress replica.

    `cors_origins`: the browser origins allowed to call it (None: the settings' list,
    empty by default, so CORS stays closed).
    """
    api = FastAPI(title="Promethios Native", version=__version__)
    if cors_origins is None:
        from serve_app.settings import get_settings

        cors_origins = get_settings().cors_origins
    api.add_middleware(RequestBodyGuard, max_body_bytes=max_body_bytes)
    if cors_origins:
        api.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
        )

    @api.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request, exc.status_code, exc.code, exc.message, exc.headers)

    @api.exception_handler(RequestValidationError)
    async def on_validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        status, code, message = _describe(list(exc.errors()))
        return error_response(request, status, code, message)

    @api.exception_handler(StarletteHTTPException)
    async def on_http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(
            request, exc.status_code, code, str(exc.detail), getattr(exc, "headers", None)
        )

    @api.exception_handler(DBAPIError)
    async def on_database(request: Request, exc: DBAPIError) -> JSONResponse:
        if not database_unreachable(exc):
            return await on_unexpected(request, exc)
        log.warning("database unavailable on %s %s", request.method, request.url.path)
        return error_response(
            request,
            503,
            "database_unavailable",
            "the database is unreachable; try again shortly",
            {"Retry-After": "5"},
        )

    @api.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(
            request, 500, "internal_error", "internal error; the incident was logged"
        )

    @api.get("/native-llm/health")
    async def health(services: ServicesDep) -> JSONResponse:
        components = await services.backends.health()
        try:
            await _ping_store(services)
            components["database"] = "ok"
        except Exception as exc:
            components["database"] = f"unavailable: {type(exc).__name__}"
        healthy = all(v == "ok" for v in components.values())
        ev = await services.evidence()
        body = success_envelope(
            {
                "status": "healthy" if healthy else "degraded",
                "components": components,
                # What the governance flags in other answers rest on (serve_app/assurance.py).
                "assurance": {k: v for k, v in ev.to_dict().items() if k != "checked_at"},
                "version": __version__,
            }
        )
        return JSONResponse(body, status_code=200 if healthy else 503)

    api.include_router(native_router)
    api.include_router(openai_router)
    api.include_router(agents_router)
    api.include_router(governance_router)
    api.include_router(bench_router)
    return api


async def _ping_store(services: Any) -> None:
    import asyncio

    await asyncio.to_thread(services.store.ping)
