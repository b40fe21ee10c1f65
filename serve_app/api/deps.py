"""Dependencies as Annotated aliases: the services the routes use and the current user."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from serve_app.backends import Backends
from serve_app.errors import Forbidden, ServiceUnavailable, Unauthorized
from serve_app.governance.policy import PolicySet
from serve_app.settings import Settings
from serve_app.store import Store
from serve_app.store.store import hash_api_key

T = TypeVar("T")


@dataclass
class AppInfo:
    """Facts about what is served, computed at start-up from the model and corpus."""

    model_name: str
    model_version: str
    base_model: str
    dataset_count: int
    dataset_version: str
    llm_max_replicas: int = 1
    # Built by serve_app.model.build on the governance corpus now shipped (build_info.json).
    governance_trained_model: bool = False
    param_count: int | None = None


@dataclass
class Services:
    store: Store
    backends: Backends
    settings: Settings
    policies: PolicySet
    info: AppInfo
    bench_enabled: bool = False
    limiter: Any = None  # serve_app.api.limits.RateLimits, installed by the ingress
    assurance: Any = None  # serve_app.assurance.Assurance, installed by the ingress
    _key_cache: dict[str, tuple[str, float]] = field(default_factory=dict)
    _agent_cache: dict[tuple[str, str], tuple[Any, float]] = field(default_factory=dict)
    _resources: dict[type, Any] = field(default_factory=dict)

    async def evidence(self) -> Any:
        """What the governance flags rest on (serve_app/assurance.py); all false without it."""
        from serve_app.assurance import Evidence

        if self.assurance is None:
            return Evidence.nothing()
        return await self.assurance.evidence()

    def service(self, cls: type[T]) -> T:
        """The resource service `cls(self)` of these services, made on first use."""
        svc = self._resources.get(cls)
        if svc is None:
            svc = self._resources[cls] = cls(self)  # type: ignore[call-arg]
        return svc

    async def user_for_key(self, key: str) -> str | None:
        """The user a key belongs to, cached for `key_cache_s` (1 s by default) to keep the
        database off the hot path: a revoked key stops working on every replica within it.

        The cache holds the key's sha256 digest, never the key itself.
        """
        digest = hash_api_key(key)
        hit = self._key_cache.get(digest)
        now = time.monotonic()
        if hit and now - hit[1] < self.settings.key_cache_s:
            return hit[0]
        user = await asyncio.to_thread(self.store.user_for_api_key, key)
        if user is not None:
            self._key_cache[digest] = (user, now)
        return user

    async def agent_for_chat(self, agent_id: str, user: str) -> Any:
        """The user's live agent (None when missing), cached for `key_cache_s` as keys are:
        a chat does not wait on the database for it. A change or deletion made through
        this replica is seen at once (`forget_agent`); one made through another replica,
        within `key_cache_s`. Reads that modify the agent go to the database."""
        hit = self._agent_cache.get((agent_id, user))
        now = time.monotonic()
        if hit and now - hit[1] < self.settings.key_cache_s:
            return hit[0]
        agent = await asyncio.to_thread(self.store.get_agent, agent_id, user)
        if len(self._agent_cache) >= 10_000:  # bounded: expired entries would pile up
            self._agent_cache.clear()
        if agent is not None:
            self._agent_cache[(agent_id, user)] = (agent, now)
        return agent

    def forget_agent(self, agent_id: str) -> None:
        for cached in [k for k in self._agent_cache if k[0] == agent_id]:
            self._agent_cache.pop(cached, None)


_services: Services | None = None


def install_services(services: Services) -> None:
    """Called once per ingress replica (or test app) before it serves requests."""
    global _services
    _services = services


def get_services() -> Services:
    if _services is None:
        raise ServiceUnavailable("the service is starting")
    return _services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_current_user(request: Request, services: ServicesDep) -> str:
    """The user of the Bearer key; 401 when it is missing or unknown."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Unauthorized("missing API key: send 'Authorization: Bearer <api key>'")
    user = await services.user_for_key(key.strip())
    if user is None:
        raise Unauthorized("invalid API key")
    request.state.user_id = user
    return user


CurrentUser = Annotated[str, Depends(get_current_user)]


def require_same_user(claimed: Any, user: str) -> None:
    """A user_id in a body or query must be the key's user (403 otherwise)."""
    if claimed is not None and claimed != user:
        raise Forbidden("user_id does not match the API key's user")
