"""The FastAPI application: routers, the error envelope, size limits, health."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serve_app import __version__
from serve_app.api.agents.router import router as agents_router
from serve_app.api.bench import router as bench_router
from serve_app.api.deps import ServicesDep
from serve_app.api.governance.router import router as governance_router
from serve_app.api.native.router import router as native_router
from serve_app.api.openai.protocol import openai_error_body
from serve_app.api.openai.router import router as openai_router
from serve_app.errors import ApiError, error_envelope, success_envelope

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


def create_api(max_body_bytes: int = 65536) -> FastAPI:
    """The ingress's HTTP API; services are installed by the ingress replica."""
    api = FastAPI(title="Promethios Native", version=__version__)

    @api.middleware("http")
    async def limit_body(request: Request, call_next):  # type: ignore[no-untyped-def]
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body_bytes:
            return error_response(
                request, 413, "payload_too_large", f"request body over {max_body_bytes} bytes"
            )
        return await call_next(request)

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
        body = success_envelope(
            {
                "status": "healthy" if healthy else "degraded",
                "components": components,
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
