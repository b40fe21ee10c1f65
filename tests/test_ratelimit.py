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


def test_charges_folded_into_acquire_are_applied_before_the_decision() -> None:
    clock = Clock()
    rl = RateLimiter(clock)
    lim = Limit(tokens_per_minute=600)
    assert rl.acquire({"k": lim}).allowed
    refused = rl.acquire({"k": lim}, {"k": (lim, 900)})  # the first answer's tokens
    assert not refused.allowed and refused.remaining_tokens == 0
    rl.charge_many({"k": (lim, 0), "other": (Limit(tokens_per_minute=10), 20)})
    assert not rl.acquire({"other": Limit(tokens_per_minute=10)}).allowed


def _admission_limits(limiter: RateLimiter, calls: list[str]):  # noqa: ANN202
    from serve_app.api.limits import RateLimits

    async def acquire(scopes, charges):  # noqa: ANN001, ANN202
        calls.append(f"acquire:{sum(t for _, t in charges.values())}")
        return limiter.acquire(scopes, charges)

    async def charge_many(charges):  # noqa: ANN001, ANN202
        calls.append(f"charge:{sum(t for _, t in charges.values())}")
        limiter.charge_many(charges)

    return RateLimits(acquire, charge_many, Limit(tokens_per_minute=1000), flush_after_s=0.05)


def test_deferred_charges_ride_on_the_next_acquire_or_are_flushed_when_idle() -> None:
    import asyncio

    from serve_app.errors import RateLimited

    async def scenario() -> list[str]:
        calls: list[str] = []
        limits = _admission_limits(RateLimiter(), calls)
        first = await limits.admit("key-a", None)
        await limits.charge(first, 700)
        await limits.charge(await limits.admit("key-a", None), 400)  # carries the 700
        await asyncio.sleep(0.2)  # idle: the 400 is flushed on its own
        try:
            await limits.admit("key-a", None)  # 1000 - 1100 < 0: refused
        except RateLimited:
            calls.append("refused")
        return calls

    assert asyncio.run(scenario()) == ["acquire:0", "acquire:700", "charge:400", "acquire:0",
                                       "refused"]  # fmt: skip


def test_charges_are_kept_when_the_limiter_cannot_be_reached() -> None:
    import asyncio

    from serve_app.api.limits import Admission, RateLimits
    from serve_app.errors import ServiceUnavailable
    from serve_app.ratelimit import Decision

    limiter = RateLimiter()
    up = {"ok": False}

    async def acquire(scopes, charges):  # noqa: ANN001, ANN202
        if not up["ok"]:
            raise ConnectionError("limiter down")
        return limiter.acquire(scopes, charges)

    async def charge_many(charges):  # noqa: ANN001, ANN202
        raise ConnectionError("limiter down")

    async def scenario() -> tuple[bool, bool]:
        limits = RateLimits(acquire, charge_many, Limit(tokens_per_minute=100), flush_after_s=0.01)
        scopes = {"key:x": Limit(tokens_per_minute=100)}
        await limits.charge(Admission(scopes, Decision(True)), 500)
        await asyncio.sleep(0.05)  # the flush fails: kept
        try:
            await limits.admit("x", None)
        except ServiceUnavailable:
            pass
        up["ok"] = True
        admitted = await limits.admit("x", None)  # carries the kept 500 tokens to key:x
        return admitted.decision.allowed, limiter.acquire(scopes).allowed

    # Admitted under its own key's scope; key:x is 400 tokens in debt, so refused.
    assert asyncio.run(scenario()) == (True, False)


def _spent(limiter: RateLimiter, limit: Limit, n: int) -> None:
    for _ in range(n):
        assert limiter.acquire({"user:a": limit}).allowed


def test_a_restarted_limiter_goes_on_from_the_saved_buckets(tmp_path) -> None:  # noqa: ANN001
    """A user who spent the minute's budget is still refused by the next limiter replica
    (restarted or moved), which starts from the file, refilled by the time that passed;
    a fresh limiter (no file: before this existed) would admit at once."""
    from serve_app.ratelimit import LimiterSnapshot

    clock, wall = Clock(), Clock()
    limit = Limit(requests_per_minute=6, tokens_per_minute=600)
    first = RateLimiter(clock=clock, wall=wall)
    state = LimiterSnapshot(tmp_path / "ratelimit.json", clock=clock)
    _spent(first, limit, 6)
    first.charge({"user:a": limit}, 900)  # into debt
    assert state.maybe_save(first)
    wall.t += 5.0  # the replica dies; a new one starts 5 s later (its own monotonic clock)
    second = RateLimiter(clock=Clock(), wall=wall)
    assert LimiterSnapshot(tmp_path / "ratelimit.json").load(second) == 1
    refused = second.acquire({"user:a": limit})
    assert not refused.allowed
    # tokens: 600 - 900 = -300, refilled 5 s x 10/s = -250: 25 s more to reach 1 token
    assert 25.0 <= refused.retry_after_s <= 25.2
    assert RateLimiter(clock=Clock(), wall=wall).acquire({"user:a": limit}).allowed  # fresh


def test_the_snapshot_is_written_at_most_once_a_second_and_only_after_a_change(
    tmp_path,  # noqa: ANN001
) -> None:
    from serve_app.ratelimit import LimiterSnapshot

    clock = Clock()
    limiter = RateLimiter(clock=clock)
    state = LimiterSnapshot(tmp_path / "s.json", every_s=1.0, clock=clock)
    limit = Limit(requests_per_minute=100)
    assert not state.maybe_save(limiter)  # nothing changed
    _spent(limiter, limit, 1)
    assert state.maybe_save(limiter)
    _spent(limiter, limit, 1)
    clock.t += 0.5
    assert not state.maybe_save(limiter)  # within the second
    clock.t += 0.6
    assert state.maybe_save(limiter)
    clock.t += 5
    assert not state.maybe_save(limiter)  # no change since


def test_an_unreadable_snapshot_starts_full_and_does_not_stop_the_limiter(tmp_path) -> None:  # noqa: ANN001
    from serve_app.ratelimit import LimiterSnapshot

    path = tmp_path / "ratelimit.json"
    path.write_text('{"version": 1, "at": "garbage"')
    limiter = RateLimiter()
    assert LimiterSnapshot(path).load(limiter) == 0
    assert limiter.acquire({"user:a": Limit(requests_per_minute=1)}).allowed
    path.write_text('{"version": 99, "at": 0, "scopes": {}}')
    assert LimiterSnapshot(path).load(RateLimiter()) == 0


def test_the_deployment_restores_its_buckets_without_ray(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    """The Serve deployment's class, constructed directly: the second replica goes on from
    what the first saved. The first saved after its first admission and not after the
    second (within the second): the documented bound, one second of admissions, is the
    one request the second replica admits before it refuses. Another database's limiter
    keeps its own file."""
    import asyncio

    from deployments.rate_limiter import RateLimiterDeployment
    from serve_app.settings import get_settings

    monkeypatch.setenv("PROMETHIOS_SPOOL_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        cls = RateLimiterDeployment.func_or_class
        limit = Limit(requests_per_minute=2)
        first = cls("sqlite:///one.db")
        for _ in range(2):
            assert asyncio.run(first.acquire({"user:a": limit})).allowed
        assert len(list(tmp_path.glob("*/ratelimit.json"))) == 1
        assert asyncio.run(cls("sqlite:///other.db").acquire({"user:a": limit})).allowed
        second = cls("sqlite:///one.db")
        assert asyncio.run(second.acquire({"user:a": limit})).allowed  # the unsaved one
        assert not asyncio.run(second.acquire({"user:a": limit})).allowed
        third = cls("sqlite:///one.db")  # the second saved after its admission: none left
        assert not asyncio.run(third.acquire({"user:a": limit})).allowed
    finally:
        get_settings.cache_clear()


def test_admissions_sent_together_are_decided_in_order_under_one_limit(
    tmp_path, monkeypatch
) -> None:  # noqa: ANN001,E501
    """An ingress replica's concurrent admissions arrive in one `acquire_many` call
    (serve_app/coalesce.py): decided one by one, in order, against the same buckets, each
    carrying its pending charges; the limit holds as it does for single calls."""
    import asyncio

    from deployments.rate_limiter import RateLimiterDeployment
    from serve_app.api.limits import RateLimits
    from serve_app.settings import get_settings

    monkeypatch.setenv("PROMETHIOS_SPOOL_DIR", str(tmp_path))
    get_settings.cache_clear()
    try:
        limiter = RateLimiterDeployment.func_or_class("sqlite:///one.db")
        limit = Limit(requests_per_minute=3, tokens_per_minute=1000)
        calls = [({"key:a": limit}, None)] * 4 + [({"key:b": limit}, {"key:b": (limit, 990)})]
        decisions = asyncio.run(limiter.acquire_many(calls))
        assert [d.allowed for d in decisions] == [True, True, True, False, True]
        assert decisions[3].scope == "key:a"
        # key:b was charged 990 tokens with its admission: the next one finds 10 left
        assert asyncio.run(limiter.acquire({"key:b": limit})).allowed
        assert not asyncio.run(limiter.acquire({"key:b": limit}, {"key:b": (limit, 20)})).allowed

        class Handle:  # the deployment's methods as a Serve handle calls them
            class acquire_many:  # noqa: N801
                @staticmethod
                async def remote(batch):  # noqa: ANN001,ANN205
                    sizes.append(len(batch))
                    return await limiter.acquire_many(batch)

        sizes: list[int] = []
        settings = get_settings().model_copy(update={"key_requests_per_minute": 5})
        limits = RateLimits.for_handle(Handle(), settings)

        async def burst() -> list[bool]:
            async def one() -> bool:
                try:
                    await limits.admit("sk-test-key-c", None)
                    return True
                except Exception:
                    return False

            return await asyncio.gather(*(one() for _ in range(8)))

        assert sorted(asyncio.run(burst())) == [False] * 3 + [True] * 5
        assert len(sizes) < 8  # shared calls, not one per admission
    finally:
        get_settings.cache_clear()
