"""LLM replicas: vLLM's async engine, one per replica, reached only through handles."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from ray import serve

from serve_app.engine.adapter import EngineAdapter, Generation, SamplingRequest, StreamDelta
from serve_app.observability.logs import configure_from_settings

log = logging.getLogger("promethios.model")


@serve.deployment(
    name="LLMServer",
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=64,
    health_check_period_s=10,
    health_check_timeout_s=30,
    graceful_shutdown_timeout_s=70,  # generations in flight finish (bounded by the timeout)
)
class LLMServer:
    """Generates chat completions with the served model."""

    def __init__(self, model_path: str, engine: dict[str, Any] | None = None) -> None:
        configure_from_settings("LLMServer")
        self.adapter = EngineAdapter(model_path, **(engine or {}))
        self.adapter.start()

    async def generate(
        self, messages: list[dict[str, str]], sampling: dict[str, Any], request_id: str
    ) -> Generation:
        """The completion; raises PromptTooLong when it cannot fit the context window."""
        gen = await self.adapter.generate(messages, SamplingRequest(**sampling), request_id)
        log.info(
            "generated %d tokens",
            gen.completion_tokens,
            extra={"message_id": request_id, "prompt_tokens": gen.prompt_tokens},
        )
        return gen

    async def stream(
        self, messages: list[dict[str, str]], sampling: dict[str, Any], request_id: str
    ) -> AsyncIterator[StreamDelta]:
        """Deltas as generated (call through `handle.options(stream=True)`)."""
        async for delta in self.adapter.stream_deltas(
            messages, SamplingRequest(**sampling), request_id
        ):
            yield delta

    def model_info(self) -> dict[str, Any]:
        assert self.adapter.info is not None
        return asdict(self.adapter.info)

    async def check_health(self) -> None:
        await self.adapter.check_health()

    def __del__(self) -> None:
        self.adapter.shutdown()
