"""LLM replicas: vLLM's async engine, one per replica, reached only through handles."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ray import serve

from serve_app.engine.adapter import EngineAdapter, Generation, SamplingRequest


@serve.deployment(
    name="LLMServer",
    ray_actor_options={"num_cpus": 1},
    max_ongoing_requests=64,
    health_check_period_s=10,
    health_check_timeout_s=30,
)
class LLMServer:
    """Generates chat completions with the served model."""

    def __init__(self, model_path: str, engine: dict[str, Any] | None = None) -> None:
        self.adapter = EngineAdapter(model_path, **(engine or {}))
        self.adapter.start()

    async def generate(
        self, messages: list[dict[str, str]], sampling: dict[str, Any], request_id: str
    ) -> Generation:
        """The completion; raises PromptTooLong when it cannot fit the context window."""
        return await self.adapter.generate(messages, SamplingRequest(**sampling), request_id)

    def model_info(self) -> dict[str, Any]:
        assert self.adapter.info is not None
        return asdict(self.adapter.info)

    async def check_health(self) -> None:
        await self.adapter.check_health()

    def __del__(self) -> None:
        self.adapter.shutdown()
