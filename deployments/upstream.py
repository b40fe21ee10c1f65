"""Upstream model calls for wrapped agents: its own deployment, reached only by handle."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from serve_app.engine.adapter import Generation, StreamDelta
from serve_app.observability.logs import configure_from_settings
from serve_app.upstream import UpstreamClient

log = logging.getLogger("promethios.upstream")


@serve.deployment(
    name="UpstreamLLM",
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=256,
    graceful_shutdown_timeout_s=75,  # upstream calls in flight finish (bounded by their timeout)
)
class UpstreamLLM:
    """Chat completions from the OpenAI-compatible server a wrapped agent names."""

    def __init__(self) -> None:
        configure_from_settings("UpstreamLLM")
        self.client = UpstreamClient()

    async def generate(
        self,
        backend: dict[str, Any],
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        request_id: str,
    ) -> Generation:
        gen = await self.client.generate(backend, messages, sampling, request_id)
        log.debug(  # not per request at INFO: the hot path (issue 25)
            "upstream generated %d tokens",
            gen.completion_tokens,
            extra={"message_id": request_id, "prompt_tokens": gen.prompt_tokens},
        )
        return gen

    async def stream(
        self,
        backend: dict[str, Any],
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        request_id: str,
    ) -> AsyncIterator[StreamDelta]:
        """Deltas as the upstream sends them (call through `handle.options(stream=True)`)."""
        async for delta in self.client.stream(backend, messages, sampling, request_id):
            yield delta
