"""Where observations are made: around the backends and around each HTTP request.

`MetricsHub` holds one replica's pending `MetricsDelta` and pushes it to the
aggregate (the MetricsWriter actor, or an in-process aggregate without Ray).
`InstrumentedBackends` wraps any `Backends` and times the scorer and the model,
counts verdicts, tokens and trust scores, without touching the chat logic.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from serve_app.backends import Backends
from serve_app.engine.adapter import Generation
from serve_app.governance.scorer import Verdict
from serve_app.observability.metrics import MetricsAggregate, MetricsDelta
from serve_app.store.records import InteractionRecord

log = logging.getLogger("promethios.metrics")

Push = Callable[[dict[str, Any]], Awaitable[Any]]
Fetch = Callable[[], Awaitable[dict[str, Any]]]


class MetricsHub:
    """One replica's pending observations and the way to the shared aggregate."""

    def __init__(self, push: Push, fetch: Fetch, push_interval_s: float = 1.0) -> None:
        self.pending = MetricsDelta()
        self._push, self._fetch = push, fetch
        self._interval = push_interval_s
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def in_process(cls) -> MetricsHub:
        """A hub whose aggregate lives in this process (tests and tools without Ray)."""
        aggregate = MetricsAggregate()

        async def push(wire: dict[str, Any]) -> None:
            aggregate.merge(MetricsDelta.from_wire(wire))

        async def fetch() -> dict[str, Any]:
            return aggregate.to_wire()

        return cls(push, fetch)

    @classmethod
    def for_writer(cls, writer: Any, timeout_s: float = 5.0) -> MetricsHub:
        """A hub over the MetricsWriter deployment handle (`merge_metrics`, `metrics_totals`)."""

        async def push(wire: dict[str, Any]) -> None:
            await asyncio.wait_for(writer.merge_metrics.remote(wire), timeout=timeout_s)

        async def fetch() -> dict[str, Any]:
            return await asyncio.wait_for(writer.metrics_totals.remote(), timeout=timeout_s)

        return cls(push, fetch)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def push(self) -> None:
        """Send what is pending; on failure keep it for the next push (nothing is lost)."""
        async with self._lock:
            delta = self.pending.take()
            if not delta:
                return
            try:
                await self._push(delta.to_wire())
            except Exception as exc:
                delta.merge(self.pending)
                self.pending = delta
                log.warning("metrics push failed, kept for retry: %s", type(exc).__name__)
                raise

    async def totals(self) -> MetricsDelta:
        """This replica's pending observations pushed, then the aggregate over all replicas."""
        self.start()
        try:
            await self.push()
        except Exception:
            pass
        return MetricsDelta.from_wire(await self._fetch())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.push()
            except Exception:
                await asyncio.sleep(self._interval)


class InstrumentedBackends:
    """A `Backends` that observes every call it forwards."""

    def __init__(self, inner: Backends, hub: MetricsHub) -> None:
        self.inner, self.hub = inner, hub

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def evaluate(self, text: str, direction: str, *args: Any, **kwargs: Any) -> Verdict:
        """The inner verdict (same arguments as `Backends.evaluate`), timed and counted."""
        started = time.perf_counter()
        try:
            verdict = await self.inner.evaluate(text, direction, *args, **kwargs)
        finally:
            self.hub.pending.observe(
                "promethios_governance_duration_seconds",
                time.perf_counter() - started,
                {"direction": direction},
            )
        self.hub.start()
        if not verdict.violations:
            self.hub.pending.inc(
                "promethios_governance_verdicts",
                {"policy": "none", "category": "none", "action": verdict.action},
            )
        for v in verdict.violations:
            self.hub.pending.inc(
                "promethios_governance_verdicts",
                {"policy": v.policy_id, "category": v.category, "action": v.action},
            )
        return verdict

    async def generate(self, *args: Any, **kwargs: Any) -> Generation:
        """The inner generation (same arguments as `Backends.generate`), timed, tokens counted."""
        started = time.perf_counter()
        try:
            gen = await self.inner.generate(*args, **kwargs)
        finally:
            self.hub.pending.observe(
                "promethios_model_duration_seconds", time.perf_counter() - started
            )
        self.hub.pending.inc("promethios_tokens", {"direction": "input"}, gen.prompt_tokens)
        self.hub.pending.inc("promethios_tokens", {"direction": "output"}, gen.completion_tokens)
        return gen

    def stream(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        """The inner stream, timed from the call to its end; tokens counted from the last
        delta. The inner stream is opened now, not at the first item, so its checks (the
        governed-call guard) run in the caller's context."""
        inner = self.inner.stream(*args, **kwargs)  # type: ignore[attr-defined]
        return self._observed(inner, time.perf_counter())

    async def _observed(self, inner: AsyncIterator[Any], started: float) -> AsyncIterator[Any]:
        last = None
        try:
            async for delta in inner:
                last = delta
                yield delta
        finally:
            self.hub.pending.observe(
                "promethios_model_duration_seconds", time.perf_counter() - started
            )
            if last is not None:
                self.hub.pending.inc(
                    "promethios_tokens", {"direction": "input"}, last.prompt_tokens
                )
                self.hub.pending.inc(
                    "promethios_tokens", {"direction": "output"}, last.completion_tokens
                )

    async def record(self, records: list[InteractionRecord]) -> None:
        await self.inner.record(records)
        for r in records:
            self.hub.pending.inc(
                "promethios_interactions", {"channel": r.channel, "status": r.status}
            )
            if r.trust_score is not None:
                self.hub.pending.observe("promethios_trust_score", r.trust_score)
        log.debug("recorded %d interaction(s)", len(records))

    async def reserve(self, record: InteractionRecord) -> None:
        await self.inner.reserve(record)  # type: ignore[attr-defined]

    async def flush(self) -> None:
        await self.inner.flush()

    async def model_info(self) -> dict[str, Any]:
        return await self.inner.model_info()

    async def health(self) -> dict[str, str]:
        return await self.inner.health()
