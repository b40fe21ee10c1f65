"""The coalescer: concurrent callers share calls, each gets its own result or error."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.coalesce import Coalescer


class Remote:
    """A deployment's batch method: answers after `delay_s`; fails items that say so."""

    def __init__(self, delay_s: float = 0.01, fail_call: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.delay_s, self.fail_call = delay_s, fail_call

    async def __call__(self, items: list[int]) -> list[object]:
        self.batches.append(list(items))
        await asyncio.sleep(self.delay_s)
        if self.fail_call:
            raise ConnectionError("replica gone")
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


def test_a_lone_call_goes_at_once_and_concurrent_ones_share_calls() -> None:
    async def main() -> None:
        remote = Remote(delay_s=0.02)
        c: Coalescer[int, int] = Coalescer(remote, max_batch=8)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        assert await c.call(1) == 10
        assert loop.time() - t0 < 0.2 and remote.batches == [[1]]
        results = await asyncio.gather(*(c.call(i) for i in range(2, 22)))
        assert results == [i * 10 for i in range(2, 22)]  # each its own, in its place
        later = remote.batches[1:]
        assert sorted(i for b in later for i in b) == list(range(2, 22))
        assert len(later) < 20 and max(len(b) for b in later) <= 8  # shared, bounded
        assert c.calls == len(remote.batches) and c.items == 21

    asyncio.run(main())


def test_an_items_error_reaches_only_its_caller_and_a_failed_call_all_of_its_callers() -> None:
    async def main() -> None:
        c: Coalescer[int, int] = Coalescer(Remote(), max_batch=8)
        out = await asyncio.gather(c.call(1), c.call(-2), c.call(3), return_exceptions=True)
        assert out[0] == 10 and out[2] == 30
        assert isinstance(out[1], ValueError) and "bad -2" in str(out[1])
        broken: Coalescer[int, int] = Coalescer(Remote(fail_call=True))
        out = await asyncio.gather(*(broken.call(i) for i in range(5)), return_exceptions=True)
        assert all(isinstance(o, ConnectionError) for o in out)
        with pytest.raises(ConnectionError):  # and the next call tries again
            await broken.call(9)
        assert broken.calls >= 2

    asyncio.run(main())


def test_a_caller_that_stops_waiting_does_not_cancel_the_others_or_its_item() -> None:
    async def main() -> None:
        remote = Remote(delay_s=0.05)
        c: Coalescer[int, int] = Coalescer(remote)
        first = asyncio.ensure_future(c.call(1))
        await asyncio.sleep(0)
        others = [asyncio.ensure_future(c.call(i)) for i in (2, 3)]
        await asyncio.sleep(0)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.call(4), timeout=0.01)  # gives up while queued
        first.cancel()
        assert await asyncio.gather(*others) == [20, 30]
        assert 4 in [i for b in remote.batches for i in b]  # still sent (a record is kept)

    asyncio.run(main())


def test_calls_in_flight_are_bounded() -> None:
    async def main() -> None:
        in_flight = peak = 0

        async def send(items: list[int]) -> list[int]:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.01)
            in_flight -= 1
            return items

        c: Coalescer[int, int] = Coalescer(send, max_batch=2, max_in_flight=2)
        assert await asyncio.gather(*(c.call(i) for i in range(30))) == list(range(30))
        assert peak == 2

    asyncio.run(main())


def test_a_batch_with_a_missing_result_fails_its_callers() -> None:
    async def main() -> None:
        async def short(items: list[int]) -> list[int]:
            return items[:-1]

        c: Coalescer[int, int] = Coalescer(short)
        with pytest.raises(RuntimeError, match="results for"):
            await c.call(1)
        with pytest.raises(ValueError):
            Coalescer(short, max_batch=0)

    asyncio.run(main())
