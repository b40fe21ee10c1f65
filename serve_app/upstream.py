"""Calls to an upstream OpenAI-compatible chat API, for wrapped agents.

`UpstreamClient` is plain Python (the `UpstreamLLM` deployment wraps it): one pooled
async HTTP client, a per-agent timeout, retries with backoff on 429/5xx and connection
failures (never once a stream has started), and every failure mapped to the API's
errors — 502 for an upstream that fails or answers garbage, 504 for one that is too
slow, 400 when it rejects the request itself. Where a call goes comes from the
operator's registry (serve_app/upstream_registry.py): a registered upstream's key is read
on this side from the variable the operator named and sent only to that upstream's URL;
a tenant's ad-hoc URL goes through a client that connects to checked public addresses
only (serve_app/netguard.py), with no proxy, no redirects and no key. An upstream's error
body never reaches the client: the client gets the status, the operator's log the body
(redacted).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import certifi
import httpcore
import httpx

from serve_app.engine.adapter import Generation, StreamDelta
from serve_app.errors import BadGateway, BadRequest, GatewayTimeout
from serve_app.netguard import AddressRefused, GuardedNetworkBackend, Resolver, system_resolve
from serve_app.observability.logs import redact
from serve_app.upstream_registry import Registry, UpstreamTarget, registry

log = logging.getLogger("promethios.upstream")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
CLIENT_FAULT_STATUSES = frozenset({400, 413, 422})
MAX_ERROR_CHARS = 300


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
    """The upstream's own error message when it sent one, shortened (for the log only)."""
    try:
        err = resp.json().get("error")
        text = err.get("message") if isinstance(err, dict) else str(err or resp.text)
    except (ValueError, AttributeError):
        text = resp.text
    text = " ".join(str(text).split())
    return text[:MAX_ERROR_CHARS] or resp.reason_phrase


def _error_for(target: UpstreamTarget, resp: httpx.Response, request_id: str) -> Exception:
    """A fixed message with the status for the client; the body only in the operator's log
    (redacted): an upstream's error text can carry its internals or another tenant's data."""
    log.warning(
        "upstream %s answered %d: %s",
        target.label,
        resp.status_code,
        redact(_error_text(resp)),
        extra={"message_id": request_id},
    )
    if resp.status_code in CLIENT_FAULT_STATUSES:
        return BadRequest(
            f"upstream {target.label} refused the request ({resp.status_code}); "
            "check the prompt's length and the agent's max_tokens"
        )
    return BadGateway(f"upstream {target.label} answered {resp.status_code}")


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

    def __init__(
        self,
        max_connections: int = 256,
        *,
        upstreams: Registry | None = None,
        resolve: Resolver = system_resolve,
    ) -> None:
        limits = httpx.Limits(
            max_connections=max_connections, max_keepalive_connections=max_connections
        )
        self._upstreams = upstreams
        # The operator's upstreams: the URLs it registered (private ones included).
        self._client = httpx.AsyncClient(limits=limits, follow_redirects=False)
        # Tenants' URLs: public addresses only, checked at each connect; no proxy from the
        # environment (it would connect for us, unchecked), no redirects.
        self.tenant_network = GuardedNetworkBackend(resolve)
        transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
        transport._pool = httpcore.AsyncConnectionPool(  # noqa: SLF001 - httpx has no hook
            ssl_context=ssl.create_default_context(cafile=certifi.where()),
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            network_backend=self.tenant_network,
        )
        self._tenant = httpx.AsyncClient(
            transport=transport, follow_redirects=False, trust_env=False
        )

    async def aclose(self) -> None:
        await self._client.aclose()
        await self._tenant.aclose()

    def target(self, backend: dict[str, Any]) -> UpstreamTarget:
        return (self._upstreams or registry()).target(backend)

    def _http(self, target: UpstreamTarget) -> httpx.AsyncClient:
        return self._tenant if target.guarded else self._client

    async def generate(
        self,
        backend: dict[str, Any],
        messages: list[dict[str, str]],
        sampling: dict[str, Any],
        request_id: str,
    ) -> Generation:
        target = self.target(backend)
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
        target = self.target(backend)
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
            resp = await self._http(target).post(
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
            cm = self._http(target).stream(
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
            if isinstance(exc.__cause__, AddressRefused):
                raise BadRequest(f"config.backend.base_url: {exc}") from exc
            failure: Exception = BadGateway(
                f"upstream {target.label} unreachable: {type(exc).__name__}"
            )
        else:
            if resp.status_code not in RETRY_STATUSES:
                if resp.status_code >= 400:
                    raise _error_for(target, resp, request_id)
                return resp, handle
            failure = _error_for(target, resp, request_id)
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
        log.warning("upstream failed mid-stream: %s", redact(str(msg)[:MAX_ERROR_CHARS]))
        raise BadGateway("upstream model failed mid-stream")
    return chunk
