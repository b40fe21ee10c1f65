"""One exception hierarchy for the API, mapped once to the error envelope.

Every error the API returns is `{"success": false, "error": {"code", "message"}}`
built by `error_envelope`; handlers raise an `ApiError` subclass and the ingress
maps it in one place.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Base of every error the API reports; carries its HTTP status and code."""

    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ApiError):
    status_code = 400
    code = "bad_request"


class ValidationFailed(ApiError):
    status_code = 422
    code = "validation_error"


class Unauthorized(ApiError):
    status_code = 401
    code = "unauthorized"


class Forbidden(ApiError):
    status_code = 403
    code = "forbidden"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "payload_too_large"


class ServiceUnavailable(ApiError):
    status_code = 503
    code = "service_unavailable"


class ScorerUnavailable(ServiceUnavailable):
    code = "governance_unavailable"


class ModelUnavailable(ServiceUnavailable):
    code = "model_unavailable"


class AuditUnavailable(ServiceUnavailable):
    code = "audit_unavailable"


class Conflict(ApiError):
    status_code = 409
    code = "conflict"


class Gone(ApiError):
    status_code = 410
    code = "gone"


class RateLimited(ApiError):
    """Over a request or token rate limit; carries Retry-After and x-ratelimit-* headers."""

    status_code = 429
    code = "rate_limit_exceeded"


class BadGateway(ApiError):
    """An upstream model (a wrapped agent's) failed, was unreachable or answered garbage."""

    status_code = 502
    code = "upstream_error"


class GatewayTimeout(ApiError):
    status_code = 504
    code = "timeout"


def error_envelope(code: str, message: str) -> dict[str, Any]:
    """The API's error body."""
    return {"success": False, "error": {"code": code, "message": message}}


def success_envelope(data: Any) -> dict[str, Any]:
    """The API's success body."""
    return {"success": True, "data": data}
