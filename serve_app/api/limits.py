"""Rate limits at the HTTP edge: per API key and per deployment, through the shared limiter.

The buckets live in one place (the RateLimiter deployment, or an in-process
`RateLimiter` for tests without Ray); every ingress replica asks it.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from serve_app.errors import RateLimited, ServiceUnavailable
from serve_app.ratelimit import Decision, Limit, RateLimiter
from serve_app.settings import Settings
from serve_app.store import hash_api_key
from serve_app.store.records import DeploymentRecord

log = logging.getLogger("promethios.ratelimit")


@dataclass(frozen=True)
class Admission:
    """An admitted request: the scopes it counts against and the headers to send."""

    scopes: dict[str, Limit]
    decision: Decision

    def headers(self) -> dict[str, str]:
        return self.decision.headers()


def deployment_limit(rate_limit: dict[str, Any] | None) -> Limit:
    rate_limit = rate_limit or {}
    return Limit(rate_limit.get("requests_per_minute"), rate_limit.get("tokens_per_minute"))


class RateLimits:
    """Admits chat requests under the key's and the deployment's limits; charges tokens."""

    def __init__(self, acquire: Any, charge: Any, key_limit: Limit, timeout_s: float = 5.0):
        self._acquire, self._charge = acquire, charge
        self.key_limit = key_limit
        self.timeout_s = timeout_s

    @classmethod
    def for_handle(cls, handle: Any, settings: Settings) -> RateLimits:
        """Through the RateLimiter deployment (shared by all ingress replicas)."""

        async def acquire(scopes: dict[str, Limit]) -> Decision:
            return await handle.acquire.remote(scopes)

        async def charge(scopes: dict[str, Limit], tokens: int) -> None:
            await handle.charge.remote(scopes, tokens)

        return cls(acquire, charge, _key_limit(settings))

    @classmethod
    def local(cls, limiter: RateLimiter, key_limit: Limit) -> RateLimits:
        """In-process (tests, tools without Ray)."""

        async def acquire(scopes: dict[str, Limit]) -> Decision:
            return limiter.acquire(scopes)

        async def charge(scopes: dict[str, Limit], tokens: int) -> None:
            limiter.charge(scopes, tokens)

        return cls(acquire, charge, key_limit)

    async def admit(self, api_key: str, deployment: DeploymentRecord | None) -> Admission:
        """Take one request from each scope; raises RateLimited (429) when any is empty."""
        scopes = {f"key:{hash_api_key(api_key)[:24]}": self.key_limit}
        if deployment is not None:
            scopes[f"deployment:{deployment.deployment_id}"] = deployment_limit(
                deployment.rate_limit
            )
        try:
            decision = await asyncio.wait_for(self._acquire(scopes), timeout=self.timeout_s)
        except Exception as exc:
            raise ServiceUnavailable(f"rate limiter unavailable: {type(exc).__name__}") from exc
        if not decision.allowed:
            which = (decision.scope or "").split(":")[0] or "request"
            raise RateLimited(
                f"rate limit exceeded for this {'API key' if which == 'key' else which}; "
                f"retry after {decision.headers()['retry-after']} s",
                headers=decision.headers(),
            )
        return Admission(scopes, decision)

    async def charge(self, admission: Admission, tokens: int) -> None:
        """Charge the measured tokens; a failure here is logged by the caller, not raised."""
        if tokens > 0:
            await asyncio.wait_for(self._charge(admission.scopes, tokens), timeout=self.timeout_s)


def _key_limit(settings: Settings) -> Limit:
    return Limit(settings.key_requests_per_minute, settings.key_tokens_per_minute)


def bearer_key(authorization: str) -> str:
    """The key of an `Authorization: Bearer <key>` header (already verified by auth)."""
    return authorization.partition(" ")[2].strip()


async def admit(
    services: Any, request: Any, deployment: DeploymentRecord | None
) -> Admission | None:
    """Admit the request under the key's (and deployment's) limits; None without a limiter."""
    limits: RateLimits | None = getattr(services, "limiter", None)
    if limits is None:
        return None
    return await limits.admit(bearer_key(request.headers.get("authorization", "")), deployment)


def settler(services: Any) -> Any:
    """A coroutine function charging an admission's measured tokens (errors logged)."""

    async def settle(admission: Admission | None, tokens: int) -> None:
        limits: RateLimits | None = getattr(services, "limiter", None)
        if limits is None or admission is None:
            return
        try:
            await limits.charge(admission, tokens)
        except Exception:
            log.warning("could not charge %d tokens to %s", tokens, list(admission.scopes))

    return settle
