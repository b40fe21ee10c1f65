"""One call for many: concurrent requests' calls to a deployment sent as one batch.

Every Serve handle call costs CPU on both sides (routing, tracing, serialisation, a
task on the replica): `make bench-gateway` profiled the ingress spending more on its five
calls per chat than on the chat itself. A `Coalescer` sends the first item at once (a
lone request waits for nothing) and, while that call is in flight, gathers what arrives
into the next call: at concurrency 16 one call carries several requests' items, and the
replicas see one task each. Each caller still awaits its own result or exception, so no
guarantee changes: a record is accepted before its answer leaves, a verdict is the one
for its own text, an admission is decided in order by the one limiter.

`send` gets the batch's items and returns one result per item, in order; an item's
result may be an exception (raised to that caller only). When `send` itself raises, every
caller of that batch gets the exception. A caller that stops waiting (timeout, client
gone) does not cancel the batch: the others still get their answers, and a record it
carried is still written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Send = Callable[[list[T]], Awaitable[Sequence[Any]]]


class Coalescer(Generic[T, R]):
    """Calls `send` with what queued while earlier calls were in flight.

    `max_in_flight`: concurrent calls (more than one spreads batches over several
    replicas); `max_batch`: items per call at most.
    """

    def __init__(self, send: Send, *, max_batch: int = 64, max_in_flight: int = 1) -> None:
        if max_batch < 1 or max_in_flight < 1:
            raise ValueError("max_batch and max_in_flight must be at least 1")
        self._send = send
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._queue: list[tuple[T, asyncio.Future]] = []
        self._senders: set[asyncio.Task] = set()
        self.calls = 0  # calls made, for the bench and tests
        self.items = 0  # items sent

    async def call(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._queue.append((item, fut))
        if len(self._senders) < self.max_in_flight:
            task = loop.create_task(self._drain())
            self._senders.add(task)
            task.add_done_callback(self._senders.discard)
        return await fut

    async def _drain(self) -> None:
        while self._queue:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            self.calls += 1
            self.items += len(batch)
            try:
                results: Sequence[Any] = await self._send([item for item, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} results for {len(batch)} items")
            except asyncio.CancelledError:
                _settle(batch, [asyncio.CancelledError()] * len(batch))
                raise
            except Exception as exc:  # the whole call failed: each caller of it learns why
                results = [exc] * len(batch)
            _settle(batch, results)


def _settle(batch: list[tuple[Any, asyncio.Future]], results: Sequence[Any]) -> None:
    for (_, fut), result in zip(batch, results, strict=True):
        if fut.done():  # its caller stopped waiting
            continue
        if isinstance(result, BaseException):
            fut.set_exception(result)
        else:
            fut.set_result(result)
