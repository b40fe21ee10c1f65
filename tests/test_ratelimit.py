"""Token buckets: requests and tokens per minute, atomic across scopes, headers."""

from __future__ import annotations

from serve_app.ratelimit import Limit, RateLimiter, duration


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_requests_per_minute_refill_continuously() -> None:
    clock = Clock()
    rl = RateLimiter(clock)
    lim = {"d:1": Limit(requests_per_minute=3)}
    assert [rl.acquire(lim).allowed for _ in range(4)] == [True, True, True, False]
    refused = rl.acquire(lim)
    assert 19.9 < refused.retry_after_s <= 20.0
    h = refused.headers()
    assert h["retry-after"] == "20"
    assert h["x-ratelimit-limit-requests"] == "3" and h["x-ratelimit-remaining-requests"] == "0"
    clock.t += 20.0
    assert rl.acquire(lim).allowed
    assert not rl.acquire(lim).allowed


def test_remaining_and_reset_headers_on_success() -> None:
    rl = RateLimiter(Clock())
    d = rl.acquire({"k": Limit(requests_per_minute=60, tokens_per_minute=1000)})
    h = d.headers()
    assert h["x-ratelimit-remaining-requests"] == "59"
    assert h["x-ratelimit-reset-requests"] == "1s"
    assert h["x-ratelimit-limit-tokens"] == "1000" and "retry-after" not in h


def test_tokens_are_charged_after_and_may_go_into_debt() -> None:
    clock = Clock()
    rl = RateLimiter(clock)
    lim = {"k": Limit(tokens_per_minute=600)}
    assert rl.acquire(lim).allowed
    rl.charge(lim, 900)  # 300 in debt
    refused = rl.acquire(lim)
    assert not refused.allowed and 30.0 < refused.retry_after_s <= 30.2
    clock.t += 31.0
    assert rl.acquire(lim).allowed


def test_a_refusal_in_one_scope_takes_nothing_from_the_others() -> None:
    rl = RateLimiter(Clock())
    key = Limit(requests_per_minute=10)
    assert rl.acquire({"key": key, "dep": Limit(requests_per_minute=1)}).allowed
    refused = rl.acquire({"key": key, "dep": Limit(requests_per_minute=1)})
    assert not refused.allowed and refused.scope == "dep"
    assert rl.acquire({"key": key}).remaining_requests == 8


def test_a_changed_limit_starts_a_fresh_bucket_and_unlimited_is_free() -> None:
    rl = RateLimiter(Clock())
    assert rl.acquire({"d": Limit(requests_per_minute=1)}).allowed
    assert rl.acquire({"d": Limit(requests_per_minute=5)}).allowed
    assert rl.acquire({"d": Limit()}).allowed


def test_duration_format() -> None:
    assert duration(0.5) == "0.5s" and duration(1) == "1s" and duration(360) == "6m0s"
