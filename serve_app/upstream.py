"""Calls to an upstream OpenAI-compatible chat API, for wrapped agents.

`UpstreamClient` is plain Python (the `UpstreamLLM` deployment wraps it): one pooled
async HTTP client, a per-agent timeout, retries with backoff on 429/5xx and connection
failures (never once a stream has started), and every failure mapped to the API's
errors — 502 for an upstream that fails or answers garbage, 504 for one that is too
slow, 400 when it rejects the request itself. The API key is read on this side from
the environment variable the agent names; it is never stored or returned.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from serve_app.engine.adapter import Generation, StreamDelta
from serve_app.errors import BadGateway, BadRequest, GatewayTimeout
from serve_app.settings import upstream_api_key

log = logging.getLogger("promethios.upstream")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
CLIENT_FAULT_STATUSES = frozenset({400, 413, 422})
MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class UpstreamTarget:
    """Where a wrapped agent's model lives (the agent's `backend` config)."""

    base_url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float = 60.0
    max_retries: int = 2

    @classmethod
    def from_config(cls, backend: dict[str, Any]) -> UpstreamTarget:
        return cls(
            base_url=str(backend["base_url"]).rstrip("/"),
            model=str(backend["model"]),
            api_key_env=backend.get("api_key_env"),
            timeout_s=float(backend.get("timeout_s", 60.0)),
            max_retries=int(backend.get("max_retries", 2)),
        )

    @property
    def completions_url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def headers(self) -> dict[str, str]:
        if not self.api_key_env:
            return {}
        key = upstream_api_key(self.api_key_env)
        if not key:
            raise BadGateway(
                f"the upstream API key variable {self.api_key_env} is not set on the server"
            )
        return {"Authorization": f"Bearer {key}"}


def _body(
    target: UpstreamTarget, messages: list[dict[str, str]], sampling: dict[str, Any], stream: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": target.model,
        "messages": messages,
        "max_tokens": int(sampling.get("max_tokens", 128)),
        "temperature": float(sampling.get("temperature", 0.7)),
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


def _error_text(resp: httpx.Response) -> str:
    """The upstream's own error message when it sent one, shortened."""
    try:
        err = resp.json().get("error")
        text = err.get("message") if isinstance(err, dict) else str(err or resp.text)
    except (ValueError, AttributeError):
        text = resp.text
    text = " ".join(str(text).split())
    return text[:MAX_ERROR_CHARS] or resp.reason_phrase


def _error_for(resp: httpx.Response) -> Exception:
    what = f"upstream model answered {resp.status_code}: {_error_text(resp)}"
    if resp.status_code in CLIENT_FAULT_STATUSES:
        return BadRequest(what)
    return BadGateway(what)


def _raise_for(resp: httpx.Response) -> None:
    if resp.status_code >= 400:
        raise _error_for(resp)


def _backoff_s(attempt: int, resp: httpx.Response | None) -> float:
    """Retry-After when the upstream sends one (capped), else exponential with jitter."""
    if resp is not None:
        try:
            return min(float(resp.headers.get("retry-after", "")), 5.0)
        except ValueError:
            pass
    return min(0.2 * (2**attempt), 2.0) * (0.5 + random.random())


def _generation(data: Any, started: float) -> Generation:
    try:
        choice = data["choices"][0]
        text = choice["message"]["content"]
        if not isinstance(text, str):
            raise TypeError("content is not a string")
        usage = data.get("usage") or {}
        return Generation(
            text=text,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            finish_reason=choice.get("finish_reason"),
            engine_ms=(time.perf_counter() - started) * 1000.0,
        )
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise BadGateway(f"upstream model answered an invalid completion ({exc})") from exc


class UpstreamClient:
    """Chat completions from OpenAI-compatible servers, pooled across agents."""

    def __init__(self, max_connections: int = 256) -> None:
        self._client = httpx.AsyncClient(
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            follow_redirects=False,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def generate(
        self,
        backend: dict[str, Any],
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        request_id: str,
    ) -> Generation:
        target = UpstreamTarget.from_config(backend)
        started = time.perf_counter()
        resp = await self._post(target, _body(target, messages, sampling, False), request_id)
        try:
            data = resp.json()
        except ValueError as exc:
            raise BadGateway("upstream model answered a body that is not JSON") from exc
        return _generation(data, started)

    async def stream(
        self,
        backend: dict[str, Any],
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        request_id: str,
    ) -> AsyncIterator[StreamDelta]:
        """Deltas from the upstream's SSE stream; counts from its usage chunk when sent."""
        target = UpstreamTarget.from_config(backend)
        body = _body(target, messages, sampling, True)
        async with self._open_stream(target, body, request_id) as resp:
            prompt_tokens = completion_tokens = 0
            finish: str | None = None
            try:
                async for line in _sse_lines(resp, target.timeout_s):
                    if line == "[DONE]":
                        break
                    chunk = _json_chunk(line)
                    usage = chunk.get("usage") or {}
                    if usage:
                        prompt_tokens = int(usage.get("prompt_tokens") or prompt_tokens)
                        completion_tokens = int(usage.get("completion_tokens") or completion_tokens)
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content") or ""
                        finish = choice.get("finish_reason") or finish
                        if text:
                            yield StreamDelta(text, prompt_tokens, completion_tokens, None)
            except httpx.TimeoutException as exc:
                raise GatewayTimeout(
                    f"upstream model stalled for more than {target.timeout_s:g} s"
                ) from exc
            except httpx.HTTPError as exc:
                raise BadGateway(f"upstream stream broke: {type(exc).__name__}") from exc
            yield StreamDelta("", prompt_tokens, completion_tokens, finish or "stop")

    async def _post(
        self, target: UpstreamTarget, body: dict[str, Any], request_id: str
    ) -> httpx.Response:
        headers = {**target.headers(), "X-Request-Id": request_id}

        async def send(timeout: float) -> tuple[httpx.Response, Any]:
            resp = await self._client.post(
                target.completions_url, json=body, headers=headers, timeout=timeout
            )
            return resp, None

        resp, _ = await _with_retries(target, send, request_id)
        return resp

    @asynccontextmanager
    async def _open_stream(
        self, target: UpstreamTarget, body: dict[str, Any], request_id: str
    ) -> AsyncIterator[httpx.Response]:
        """The streaming response once its status is good. Failures before the first
        byte are retried like a plain request; nothing is retried after that."""
        headers = {**target.headers(), "X-Request-Id": request_id}

        async def send(timeout: float) -> tuple[httpx.Response, Any]:
            cm = self._client.stream(
                "POST", target.completions_url, json=body, headers=headers, timeout=timeout
            )
            resp = await cm.__aenter__()
            if resp.status_code >= 400:
                await resp.aread()
                await cm.__aexit__(None, None, None)
            return resp, cm

        resp, cm = await _with_retries(target, send, request_id)
        try:
            yield resp
        finally:
            await cm.__aexit__(None, None, None)


async def _with_retries(
    target: UpstreamTarget, send: Any, request_id: str
) -> tuple[httpx.Response, Any]:
    """`send(timeout)` until a good answer, retrying 429/5xx and connection failures with
    backoff within the target's time budget; errors mapped to the API's."""
    deadline = time.monotonic() + target.timeout_s
    for attempt in range(target.max_retries + 1):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        resp: httpx.Response | None = None
        try:
            resp, handle = await send(left)
        except httpx.TimeoutException:
            break
        except httpx.HTTPError as exc:
            failure: Exception = BadGateway(
                f"upstream model unreachable at {target.base_url}: {type(exc).__name__}"
            )
        else:
            if resp.status_code not in RETRY_STATUSES:
                _raise_for(resp)
                return resp, handle
            failure = _error_for(resp)
        pause = _backoff_s(attempt, resp)
        if attempt == target.max_retries or time.monotonic() + pause >= deadline:
            raise failure
        log.info(
            "upstream retry %d after %s",
            attempt + 1,
            resp.status_code if resp is not None else "a connection failure",
            extra={"message_id": request_id},
        )
        await asyncio.sleep(pause)
    raise GatewayTimeout(f"upstream model did not answer within {target.timeout_s:g} s")


async def _sse_lines(resp: httpx.Response, stall_s: float) -> AsyncIterator[str]:
    """The `data:` payloads of an SSE response; each line must come within `stall_s`."""
    lines = resp.aiter_lines().__aiter__()
    while True:
        try:
            line = await asyncio.wait_for(lines.__anext__(), timeout=stall_s)
        except StopAsyncIteration:
            return
        except asyncio.TimeoutError as exc:
            raise httpx.ReadTimeout("stream stalled") from exc
        if line.startswith("data:"):
            yield line[5:].strip()


def _json_chunk(line: str) -> dict[str, Any]:
    try:
        chunk = json.loads(line)
    except ValueError as exc:
        raise BadGateway("upstream model streamed a chunk that is not JSON") from exc
    if not isinstance(chunk, dict):
        raise BadGateway("upstream model streamed a chunk that is not an object")
    if "error" in chunk:
        err = chunk["error"]
        msg = err.get("message") if isinstance(err, dict) else str(err)
        raise BadGateway(f"upstream model failed mid-stream: {str(msg)[:MAX_ERROR_CHARS]}")
    return chunk
