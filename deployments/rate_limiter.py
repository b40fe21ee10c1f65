"""The rate limiter: one replica holding every bucket, so all ingress replicas share limits."""

from __future__ import annotations

from ray import serve

from serve_app.ratelimit import Charges, Decision, Limit, LimiterSnapshot, RateLimiter
from serve_app.recording import spool_dir_for
from serve_app.settings import get_settings


@serve.deployment(
    name="RateLimiter",
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=1000,
)
class RateLimiterDeployment:
    """Token buckets per scope: `acquire` applies the ingress's pending token charges and
    admits a request; `charge_many` applies charges that no acquire carried."""

    def __init__(self, database_url: str | None = None) -> None:
        self.limiter = RateLimiter()
        # On the shared spool volume, beside the writer's spool of the same database: a
        # replica restarted or moved to another node goes on from the buckets the last one
        # left (serve_app/ratelimit.py, "Durability").
        settings = get_settings()
        spool = settings.spool_dir or settings.var_dir / "spool"
        key = database_url or settings.resolved_database_url()
        self.state = LimiterSnapshot(spool_dir_for(key, spool) / "ratelimit.json")
        self.state.load(self.limiter)

    # async: microseconds of work, answered on the replica's loop with no thread-pool hop.
    async def acquire(self, scopes: dict[str, Limit], charges: Charges | None = None) -> Decision:
        decision = self.limiter.acquire(scopes, charges)
        self.state.maybe_save(self.limiter)
        return decision

    async def acquire_many(
        self, calls: list[tuple[dict[str, Limit], Charges | None]]
    ) -> list[Decision]:
        """`acquire` for each call in order (concurrent requests of an ingress replica
        arrive in one call: serve_app/coalesce.py)."""
        decisions = [self.limiter.acquire(scopes, charges) for scopes, charges in calls]
        self.state.maybe_save(self.limiter)
        return decisions

    async def charge_many(self, charges: Charges) -> None:
        self.limiter.charge_many(charges)
        self.state.maybe_save(self.limiter)
