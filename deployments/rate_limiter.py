"""The rate limiter: one replica holding every bucket, so all ingress replicas share limits."""

from __future__ import annotations

from ray import serve

from serve_app.ratelimit import Decision, Limit, RateLimiter


@serve.deployment(
    name="RateLimiter",
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=1000,
)
class RateLimiterDeployment:
    """Token buckets per scope: `acquire` admits a request, `charge` takes its tokens."""

    def __init__(self) -> None:
        self.limiter = RateLimiter()

    # async: microseconds of work, answered on the replica's loop with no thread-pool hop.
    async def acquire(self, scopes: dict[str, Limit]) -> Decision:
        return self.limiter.acquire(scopes)

    async def charge(self, scopes: dict[str, Limit], tokens: int) -> None:
        self.limiter.charge(scopes, tokens)
