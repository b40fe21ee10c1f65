"""The parts the HTTP API calls: the scorer, the model, the writer.

`RayBackends` reaches them through Serve deployment handles; `LocalBackends`
calls plain Python objects in-process (for tests and tools that run without Ray).
Both time-bound every call and translate failures into the API's error types.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

from serve_app.assurance import require_governed
from serve_app.coalesce import Coalescer
from serve_app.engine.adapter import (
    EngineAdapter,
    Generation,
    PromptTooLong,
    SamplingRequest,
    StreamDelta,
)
from serve_app.errors import (
    ApiError,
    AuditUnavailable,
    BadRequest,
    GatewayTimeout,
    ModelUnavailable,
    ScorerUnavailable,
)
from serve_app.governance.scorer import GovernanceScorer, Verdict
from serve_app.observability.logs import current_request_id
from serve_app.recording import InteractionRecorder
from serve_app.store.records import InteractionRecord
from serve_app.upstream import UpstreamClient
from serve_app.upstream_registry import registry


class Backends(Protocol):
    async def evaluate(
        self, text: str, direction: str, mode: str, threshold: float, policy: str | None = None
    ) -> Verdict: ...
    async def generate(
        self,
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        request_id: str,
        upstream: dict[str, Any] | None = None,
    ) -> Generation: ...
    def stream(
        self,
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        request_id: str,
        upstream: dict[str, Any] | None = None,
    ) -> AsyncIterator[StreamDelta]: ...
    async def record(self, records: list[InteractionRecord]) -> None: ...
    async def reserve(self, record: InteractionRecord) -> None: ...
    async def flush(self) -> None: ...
    async def model_info(self) -> dict[str, Any]: ...
    async def health(self) -> dict[str, str]: ...
    async def writer_stats(self) -> dict[str, Any]: ...


async def _bounded(coro: Any, timeout_s: float, what: str, unavailable: type[Exception]) -> Any:
    try:
        return await asyncio.wait_for(coro, timeout=timeout_s)
    except asyncio.TimeoutError as exc:
        raise GatewayTimeout(f"{what} did not answer within {timeout_s:.0f} s") from exc
    except PromptTooLong as exc:
        raise BadRequest(str(exc)) from exc
    except ApiError as exc:
        # Raised inside a replica it arrives wrapped by Ray; the client gets the cause.
        cause = getattr(exc, "cause", None)
        raise (cause if isinstance(cause, ApiError) else exc) from None
    except Exception as exc:
        raise unavailable(f"{what} unavailable: {type(exc).__name__}") from exc


async def _next_or_none(it: Any) -> Any:
    try:
        return await it.__anext__()
    except StopAsyncIteration:
        return None


async def _bounded_stream(
    it: Any, timeout_s: float, close: Any = None
) -> AsyncIterator[StreamDelta]:
    """Each item of `it` within `timeout_s`; failures become the API's errors."""
    try:
        while True:
            item = await _bounded(_next_or_none(it), timeout_s, "model", ModelUnavailable)
            if item is None:
                return
            yield item
    finally:
        if close is not None:
            close()


class RayBackends:
    """Deployment handles to the LLM, scorer and writer deployments."""

    def __init__(
        self,
        llm: Any,
        scorer: Any,
        writer: Any,
        timeout_s: float = 60.0,
        upstream: Any = None,
    ) -> None:
        self.llm, self.scorer, self.writer = llm, scorer, writer
        self.upstream = upstream
        self.timeout_s = timeout_s
        self._model_info: dict[str, Any] | None = None
        # Concurrent requests' texts and records travel together: one scorer call per
        # batch (two at a time, for two scorer replicas), one writer call per batch of
        # records (serve_app/coalesce.py).
        # Each item carries its request's id: the replicas log one line per batch naming
        # every request in it (serve_app/observability/logs.py, `request_ids`).
        self._verdicts: Coalescer[tuple, Verdict] = Coalescer(
            self._evaluate_many, max_batch=32, max_in_flight=2
        )
        self._records: Coalescer[tuple, None] = Coalescer(
            self._record_many, max_batch=256, max_in_flight=1
        )

    async def evaluate(
        self, text: str, direction: str, mode: str, threshold: float, policy: str | None = None
    ) -> Verdict:
        return await _bounded(
            self._evaluate(text, direction, mode, threshold, policy),
            self.timeout_s,
            "governance scorer",
            ScorerUnavailable,
        )

    async def _evaluate(self, *args: Any) -> Verdict:
        return await self._verdicts.call((args, current_request_id()))

    async def _evaluate_many(self, items: list[tuple]) -> list[Any]:
        """A scorer replica that died (its node lost) before answering: once more, on
        another replica (scoring is a pure function of its input; the handle's router has
        dropped the dead one). Within the callers' time bound."""
        from ray.exceptions import RayActorError

        calls, request_ids = [a for a, _ in items], [r for _, r in items]
        try:
            return await self.scorer.evaluate_many.remote(calls, request_ids)
        except RayActorError:
            return await self.scorer.evaluate_many.remote(calls, request_ids)

    async def _record_many(self, items: list[tuple]) -> list[None]:
        records = [r for batch, _ in items for r in batch]
        await self.writer.record.remote(records, [rid for _, rid in items])
        return [None] * len(items)

    def _model(self, upstream: dict[str, Any] | None) -> tuple[Any, tuple[Any, ...], float]:
        """The deployment that answers, the leading call arguments, and the time bound."""
        if upstream is None:
            return self.llm, (), self.timeout_s
        if self.upstream is None:
            raise ModelUnavailable("this application has no upstream deployment")
        # The upstream client enforces the upstream's timeout; allow it to report first.
        return self.upstream, (upstream,), registry().target(upstream).timeout_s + 5.0

    async def generate(
        self,
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        request_id: str,
        upstream: dict[str, Any] | None = None,
    ) -> Generation:
        require_governed("RayBackends.generate")
        target, lead, timeout_s = self._model(upstream)
        call = target.generate.remote(*lead, messages, sampling, request_id)
        try:
            return await _bounded(call, timeout_s, "model", ModelUnavailable)
        except asyncio.CancelledError:
            call.cancel()  # the replica's task is cancelled and the engine aborts the request
            raise

    def stream(
        self,
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        request_id: str,
        upstream: dict[str, Any] | None = None,
    ) -> AsyncIterator[StreamDelta]:
        require_governed("RayBackends.stream")
        target, lead, timeout_s = self._model(upstream)
        gen = target.options(stream=True).stream.remote(*lead, messages, sampling, request_id)
        return _bounded_stream(gen.__aiter__(), timeout_s, gen.cancel)

    async def record(self, records: list[InteractionRecord]) -> None:
        await _bounded(
            self._records.call((records, current_request_id())),
            self.timeout_s,
            "metrics writer",
            AuditUnavailable,
        )

    async def reserve(self, record: InteractionRecord) -> None:
        """A stream's record, accepted (spooled) before its first chunk; completed by
        `record` with the same message id."""
        await _bounded(
            self.writer.reserve.remote(record), self.timeout_s, "metrics writer", AuditUnavailable
        )

    async def flush(self) -> None:
        await _bounded(
            self.writer.flush.remote(), self.timeout_s, "metrics writer", AuditUnavailable
        )

    async def writer_stats(self) -> dict[str, Any]:
        """The metrics writer's backlog, refusals, dead letters and spool (recording.py)."""
        return await _bounded(self.writer.stats.remote(), 5.0, "metrics writer", AuditUnavailable)

    async def model_info(self) -> dict[str, Any]:
        if self._model_info is None:
            self._model_info = await _bounded(
                self.llm.model_info.remote(), self.timeout_s, "model", ModelUnavailable
            )
        return self._model_info

    async def health(self) -> dict[str, str]:
        checks = {
            "model": self.llm.model_info.remote(),
            "governance": self.scorer.policy_set.remote(),
            "metrics_writer": self.writer.stats.remote(),
        }
        out: dict[str, str] = {}
        for name, call in checks.items():
            try:
                await asyncio.wait_for(call, timeout=5.0)
                out[name] = "ok"
            except Exception as exc:
                out[name] = f"unavailable: {type(exc).__name__}"
        return out


class LocalBackends:
    """The same parts as plain objects in this process."""

    def __init__(
        self,
        engine: EngineAdapter,
        scorer: GovernanceScorer,
        recorder: InteractionRecorder,
        upstream: UpstreamClient | None = None,
    ) -> None:
        self.engine, self.scorer, self.recorder = engine, scorer, recorder
        self.upstream = upstream or UpstreamClient()

    async def evaluate(
        self, text: str, direction: str, mode: str, threshold: float, policy: str | None = None
    ) -> Verdict:
        # In-process parts score with their one policy set; per-agent files need the graph.
        return self.scorer.evaluate(text, direction, mode, threshold)  # type: ignore[arg-type]

    async def generate(
        self,
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        request_id: str,
        upstream: dict[str, Any] | None = None,
    ) -> Generation:
        require_governed("LocalBackends.generate")
        if upstream is not None:
            call = self.upstream.generate(upstream, messages, sampling, request_id)
        else:
            call = self.engine.generate(messages, SamplingRequest(**sampling), request_id)
        return await _bounded(call, 60.0, "model", ModelUnavailable)

    def stream(
        self,
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        request_id: str,
        upstream: dict[str, Any] | None = None,
    ) -> AsyncIterator[StreamDelta]:
        require_governed("LocalBackends.stream")
        if upstream is not None:
            gen = self.upstream.stream(upstream, messages, sampling, request_id)
        else:
            gen = self.engine.stream_deltas(messages, SamplingRequest(**sampling), request_id)
        return _bounded_stream(gen.__aiter__(), 60.0)

    async def record(self, records: list[InteractionRecord]) -> None:
        self.recorder.start()
        self.recorder.add(records)

    async def reserve(self, record: InteractionRecord) -> None:
        self.recorder.start()
        self.recorder.reserve(record)

    async def flush(self) -> None:
        await self.recorder.flush()

    async def writer_stats(self) -> dict[str, Any]:
        return self.recorder.stats()

    async def model_info(self) -> dict[str, Any]:
        from dataclasses import asdict

        assert self.engine.info is not None
        return asdict(self.engine.info)

    async def health(self) -> dict[str, str]:
        """Each part's state, asked of the part (as RayBackends asks the replicas)."""
        out: dict[str, str] = {}
        if self.engine is not None and self.engine.info is not None:
            out["model"] = "ok"
        elif self.engine is None and self.upstream is not None:
            out["model"] = "ok"  # wrapped agents only: the upstream answers
        else:
            out["model"] = "unavailable: EngineNotStarted"
        try:
            self.scorer.evaluate("health check", "input", "standard", 0.5)  # type: ignore[arg-type]
            out["governance"] = "ok"
        except Exception as exc:
            out["governance"] = f"unavailable: {type(exc).__name__}"
        stats = self.recorder.stats()
        full = int(stats["pending"]) >= int(stats["max_pending"])  # type: ignore[call-overload]
        out["metrics_writer"] = "unavailable: AuditBacklogFull" if full else "ok"
        return out
