"""Rate limits at the HTTP edge: per API key and per deployment, through the shared limiter.

The buckets live in one place (the RateLimiter deployment, or an in-process
`RateLimiter` for tests without Ray); every ingress replica asks it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from serve_app.coalesce import Coalescer
from serve_app.errors import RateLimited, ServiceUnavailable
from serve_app.ratelimit import Charges, Decision, Limit, RateLimiter
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
    """Admits chat requests under the key's and the deployment's limits; charges tokens.

    Charges are not a call of their own: `charge` adds the tokens to this replica's
    pending charges, which travel with the next `acquire` (applied before it is decided)
    or, when no request comes for `flush_after_s`, in one `charge_many` call. One call to
    the shared limiter per request instead of two, and none after the answer; another
    ingress replica sees the tokens at most `flush_after_s` late.
    """

    def __init__(
        self,
        acquire: Any,
        charge_many: Any,
        key_limit: Limit,
        timeout_s: float = 5.0,
        flush_after_s: float = 0.25,
        user_limit: Limit | None = None,
    ):
        self._acquire, self._charge_many = acquire, charge_many
        self.key_limit = key_limit
        self.user_limit = user_limit or Limit(None, None)
        self.timeout_s = timeout_s
        self.flush_after_s = flush_after_s
        self._pending: Charges = {}
        self._flusher: asyncio.Task | None = None

    @classmethod
    def for_handle(cls, handle: Any, settings: Settings) -> RateLimits:
        """Through the RateLimiter deployment (shared by all ingress replicas): concurrent
        admissions of this replica travel in one call (serve_app/coalesce.py)."""

        async def acquire_many(calls: list[tuple[dict[str, Limit], Charges]]) -> list[Decision]:
            return await handle.acquire_many.remote(calls)

        admissions: Coalescer[tuple, Decision] = Coalescer(acquire_many, max_batch=128)

        async def acquire(scopes: dict[str, Limit], charges: Charges) -> Decision:
            return await admissions.call((scopes, charges))

        async def charge_many(charges: Charges) -> None:
            await handle.charge_many.remote(charges)

        return cls(
            acquire,
            charge_many,
            _key_limit(settings),
            timeout_s=settings.limiter_timeout_s,
            user_limit=_user_limit(settings),
        )

    @classmethod
    def local(
        cls, limiter: RateLimiter, key_limit: Limit, user_limit: Limit | None = None
    ) -> RateLimits:
        """In-process (tests, tools without Ray)."""

        async def acquire(scopes: dict[str, Limit], charges: Charges) -> Decision:
            return limiter.acquire(scopes, charges)

        async def charge_many(charges: Charges) -> None:
            limiter.charge_many(charges)

        return cls(acquire, charge_many, key_limit, user_limit=user_limit)

    def _take_pending(self) -> Charges:
        pending, self._pending = self._pending, {}
        return pending

    def _restore(self, charges: Charges) -> None:
        """Add charges that could not be delivered back to the pending ones (summed per scope)."""
        for key, (lim, tokens) in charges.items():
            self._add(key, lim, tokens)

    def _add(self, key: str, lim: Limit, tokens: int) -> None:
        held = self._pending.get(key)
        self._pending[key] = (lim, tokens + (held[1] if held else 0))

    async def admit(
        self, api_key: str, deployment: DeploymentRecord | None, user: str | None = None
    ) -> Admission:
        """Take one request from each scope (the key, its user over all their keys, the
        deployment); raises RateLimited (429) when any is empty."""
        scopes = {f"key:{hash_api_key(api_key)[:24]}": self.key_limit}
        if user is not None and not self.user_limit.unlimited:
            scopes[f"user:{hashlib.sha256(user.encode()).hexdigest()[:24]}"] = self.user_limit
        if deployment is not None:
            scopes[f"deployment:{deployment.deployment_id}"] = deployment_limit(
                deployment.rate_limit
            )
        charges = self._take_pending()
        try:
            decision = await asyncio.wait_for(
                self._acquire(scopes, charges), timeout=self.timeout_s
            )
        except Exception as exc:
            self._restore(charges)
            raise ServiceUnavailable(f"rate limiter unavailable: {type(exc).__name__}") from exc
        if not decision.allowed:
            which = (decision.scope or "").split(":")[0] or "request"
            what = {"key": "API key", "user": "user (all their keys)"}.get(which, which)
            raise RateLimited(
                f"rate limit exceeded for this {what}; "
                f"retry after {decision.headers()['retry-after']} s",
                headers=decision.headers(),
            )
        return Admission(scopes, decision)

    async def charge(self, admission: Admission, tokens: int) -> None:
        """Owe the measured tokens to the admission's scopes (sent with the next acquire or
        within `flush_after_s`); never raises."""
        if tokens <= 0:
            return
        for key, lim in admission.scopes.items():
            if lim.tokens_per_minute is not None:
                self._add(key, lim, tokens)
        if self._pending and (self._flusher is None or self._flusher.done()):
            self._flusher = asyncio.get_running_loop().create_task(self._flush_later())

    async def _flush_later(self) -> None:
        """Send what is still pending after `flush_after_s` (no acquire took it along)."""
        await asyncio.sleep(self.flush_after_s)
        await self.flush()

    async def flush(self) -> None:
        """Deliver pending charges now (kept for the next try when the limiter fails)."""
        charges = self._take_pending()
        if not charges:
            return
        try:
            await asyncio.wait_for(self._charge_many(charges), timeout=self.timeout_s)
        except Exception:
            self._restore(charges)
            log.warning("could not charge tokens to %s; retried with the next request",
                        list(charges))  # fmt: skip


def _key_limit(settings: Settings) -> Limit:
    return Limit(settings.key_requests_per_minute, settings.key_tokens_per_minute)


def _user_limit(settings: Settings) -> Limit:
    return Limit(settings.user_requests_per_minute, settings.user_tokens_per_minute)


def bearer_key(authorization: str) -> str:
    """The key of an `Authorization: Bearer <key>` header (already verified by auth)."""
    return authorization.partition(" ")[2].strip()


async def admit(
    services: Any, request: Any, deployment: DeploymentRecord | None, user: str | None = None
) -> Admission | None:
    """Admit the request under the key's, the user's (and deployment's) limits; None without
    a limiter."""
    limits: RateLimits | None = getattr(services, "limiter", None)
    if limits is None:
        return None
    key = bearer_key(request.headers.get("authorization", ""))
    return await limits.admit(key, deployment, user)


def settler(services: Any) -> Any:
    """A coroutine function charging an admission's measured tokens (deferred: RateLimits)."""

    async def settle(admission: Admission | None, tokens: int) -> None:
        limits: RateLimits | None = getattr(services, "limiter", None)
        if limits is not None and admission is not None:
            await limits.charge(admission, tokens)

    return settle
