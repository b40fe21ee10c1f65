"""A Python client for the Promethios Native API: the seed's NativeLLMService in Python.

    from serve_app.client import NativeLLMClient
    client = NativeLLMClient("http://127.0.0.1:8002", api_key="pn_...")
    agent = client.create_native_agent("Support Bot", "Handles inquiries", compliance_mode="strict")
    reply = client.chat_with_agent(agent["agent_id"], "How do I reset my password?")
    for text in client.stream_chat(agent["agent_id"], "Where is my package?"):
        print(text, end="")

Requests are validated with the server's own pydantic models before they are sent;
errors come back as `NativeLLMError` carrying the envelope's code and message.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx

from serve_app.api.native.protocol import AgentConfig, ChatRequest, DeployRequest, RateLimitConfig
from serve_app.settings import get_settings


class NativeLLMError(Exception):
    """An error answer from the API (status, the envelope's code and message)."""

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code, self.code, self.message = status_code, code, message


class NativeLLMClient:
    """Creates agents, chats (whole or streamed), reads scorecards and metrics, deploys."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout_s: float = 120.0,
    ) -> None:
        settings = get_settings()
        key = api_key or settings.api_key
        if not key:
            raise ValueError("an API key is needed: pass api_key or set PROMETHIOS_API_KEY")
        self._http = httpx.Client(
            base_url=(base_url or settings.api_url).rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout_s,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> NativeLLMClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        resp = self._http.request(method, path, **kwargs)
        return _data(resp)

    def get_model_info(self) -> dict[str, Any]:
        return self._call("GET", "/native-llm/model/info")

    def create_native_agent(
        self, name: str, description: str | None = None, **config: Any
    ) -> dict[str, Any]:
        """Create an agent; `config` takes AgentConfig's fields (compliance_mode, ...)."""
        cfg = AgentConfig(name=name, description=description, **config)
        body = {"config": cfg.model_dump(exclude_none=True)}
        return self._call("POST", "/native-llm/agent/create", json=body)

    def list_agents(self, limit: int = 20, after: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"limit": limit}
        if after:
            params["after"] = after
        return self._call("GET", "/native-llm/agents", params=params)

    def chat_with_agent(
        self,
        agent_id: str,
        message: str,
        *,
        conversation_id: str | None = None,
        context: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> dict[str, Any]:
        """One governed exchange; the answer with its governance metrics."""
        body = ChatRequest(
            message=message,
            conversation_id=conversation_id,
            context=context,
            max_tokens=max_tokens,
            temperature=temperature,
        )
        return self._call(
            "POST", f"/native-llm/agent/{agent_id}/chat", json=body.model_dump(exclude_none=True)
        )

    def stream_chat(
        self,
        agent_id: str,
        message: str,
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
    ) -> Iterator[str]:
        """Text as governance releases it (OpenAI-compatible SSE under the hood)."""
        body: dict[str, Any] = {
            "model": agent_id,
            "messages": [{"role": "user", "content": message}],
            "stream": True,
        }
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        if temperature is not None:
            body["temperature"] = temperature
        with self._http.stream("POST", "/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                resp.read()
                _data(resp)
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[len("data: ") :]
                if payload == "[DONE]":
                    return
                event = json.loads(payload)
                if "error" in event:
                    err = event["error"]
                    raise NativeLLMError(500, str(err.get("code")), str(err.get("message")))
                for choice in event.get("choices", []):
                    text = (choice.get("delta") or {}).get("content")
                    if text:
                        yield text

    def get_agent_scorecard(self, agent_id: str) -> dict[str, Any]:
        return self._call("GET", f"/native-llm/agent/{agent_id}/scorecard")

    def deploy_agent(
        self, agent_id: str, rate_limit: dict[str, int] | None = None
    ) -> dict[str, Any]:
        body = DeployRequest(rate_limit=RateLimitConfig(**rate_limit) if rate_limit else None)
        return self._call(
            "POST", f"/native-llm/agent/{agent_id}/deploy", json=body.model_dump(exclude_none=True)
        )

    def get_agent_metrics(self, agent_id: str) -> dict[str, Any]:
        return self._call("GET", f"/native-llm/agent/{agent_id}/metrics")


def _data(resp: httpx.Response) -> Any:
    """The envelope's data, or NativeLLMError from its error (or OpenAI's error shape)."""
    try:
        body = resp.json()
    except ValueError as exc:
        raise NativeLLMError(resp.status_code, "invalid_response", resp.text[:200]) from exc
    if resp.status_code < 400 and body.get("success") is True:
        return body["data"]
    err = body.get("error") or {}
    raise NativeLLMError(
        resp.status_code, str(err.get("code") or err.get("type")), str(err.get("message"))
    )
