"""UpstreamClient against real HTTP servers on loopback: retries, timeouts, bad answers."""

from __future__ import annotations

import asyncio
import time

import pytest

from serve_app.errors import BadGateway, BadRequest, GatewayTimeout
from serve_app.launcher import free_port
from serve_app.upstream import UpstreamClient
from tests.support.upstreams import start_faulty_upstream

MESSAGES = [{"role": "user", "content": "hello there"}]
SAMPLING = {"max_tokens": 16, "temperature": 0.0}


@pytest.fixture(scope="module")
def upstream():
    up = start_faulty_upstream()
    yield up
    up.stop()


def backend(up, model: str, **extra) -> dict:
    return {"type": "openai", "base_url": up.base_url, "model": model, **extra}


def run(coro):
    async def main():
        client = UpstreamClient()
        try:
            return await coro(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_completion_text_and_usage_come_from_the_upstream(upstream):
    gen = run(lambda c: c.generate(backend(upstream, "echo"), MESSAGES, SAMPLING, "r-echo"))
    assert gen.text == "echo: hello there"
    assert (gen.prompt_tokens, gen.completion_tokens) == (7, 3)
    assert gen.finish_reason == "stop"


def test_5xx_is_retried_with_backoff_until_it_succeeds(upstream):
    gen = run(lambda c: c.generate(backend(upstream, "flaky-2"), MESSAGES, SAMPLING, "r-flaky"))
    assert gen.text == "echo: hello there"
    assert upstream.calls[("flaky-2", "r-flaky")] == 3


def test_429_is_retried(upstream):
    gen = run(lambda c: c.generate(backend(upstream, "limited"), MESSAGES, SAMPLING, "r-429"))
    assert gen.text.startswith("echo:")
    assert upstream.calls[("limited", "r-429")] == 2


def test_retries_are_bounded_then_502(upstream):
    target = backend(upstream, "flaky-9", max_retries=1)
    with pytest.raises(BadGateway, match="503"):
        run(lambda c: c.generate(target, MESSAGES, SAMPLING, "r-bounded"))
    assert upstream.calls[("flaky-9", "r-bounded")] == 2


@pytest.mark.parametrize("model", ["garbage", "no-choices"])
def test_garbage_answers_are_502(upstream, model):
    with pytest.raises(BadGateway, match="upstream model answered"):
        run(lambda c: c.generate(backend(upstream, model), MESSAGES, SAMPLING, f"r-{model}"))


def test_upstream_rejection_of_the_request_is_400_with_its_reason(upstream):
    with pytest.raises(BadRequest, match="maximum context length"):
        run(lambda c: c.generate(backend(upstream, "reject"), MESSAGES, SAMPLING, "r-400"))


def test_slow_upstream_times_out_within_the_agents_budget(upstream):
    started = time.monotonic()
    with pytest.raises(GatewayTimeout):
        run(
            lambda c: c.generate(
                backend(upstream, "slow", timeout_s=1.0), MESSAGES, SAMPLING, "r-slow"
            )
        )
    assert time.monotonic() - started < 5


def test_unreachable_upstream_is_502_after_retries():
    dead = {"type": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1", "model": "m"}
    with pytest.raises(BadGateway, match="unreachable"):
        run(lambda c: c.generate(dead, MESSAGES, SAMPLING, "r-dead"))


def test_stream_yields_deltas_then_a_final_count(upstream):
    async def collect(c):
        return [d async for d in c.stream(backend(upstream, "echo"), MESSAGES, SAMPLING, "s-1")]

    deltas = run(collect)
    assert "".join(d.text for d in deltas) == "echo: hello there"
    assert deltas[-1].finish_reason == "stop"
    assert (deltas[-1].prompt_tokens, deltas[-1].completion_tokens) == (7, 3)


def test_stream_retries_before_the_first_byte(upstream):
    async def collect(c):
        target = backend(upstream, "flaky-1")
        return [d async for d in c.stream(target, MESSAGES, SAMPLING, "s-flaky")]

    assert "".join(d.text for d in run(collect)) == "echo: hello there"
    assert upstream.calls[("flaky-1", "s-flaky")] == 2


def test_a_stalled_stream_is_a_504(upstream):
    async def collect(c):
        target = backend(upstream, "stall-stream", timeout_s=1.0)
        return [d async for d in c.stream(target, MESSAGES, SAMPLING, "s-stall")]

    with pytest.raises(GatewayTimeout, match="stalled"):
        run(collect)


def test_the_key_is_read_from_the_named_variable_and_sent_as_bearer(upstream, monkeypatch):
    monkeypatch.setenv("UPSTREAM_UNIT_KEY", "sk-unit-123")
    target = backend(upstream, "leak", api_key_env="UPSTREAM_UNIT_KEY")
    gen = run(lambda c: c.generate(target, MESSAGES, SAMPLING, "r-key"))
    assert gen.text == "auth=Bearer sk-unit-123"


def test_a_missing_key_variable_is_a_clear_502(upstream, monkeypatch):
    monkeypatch.delenv("UPSTREAM_UNSET_KEY", raising=False)
    target = backend(upstream, "echo", api_key_env="UPSTREAM_UNSET_KEY")
    with pytest.raises(BadGateway, match="UPSTREAM_UNSET_KEY is not set"):
        run(lambda c: c.generate(target, MESSAGES, SAMPLING, "r-nokey"))


def test_variables_outside_the_allowed_pattern_are_never_read(upstream, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://secret")
    target = backend(upstream, "leak", api_key_env="DATABASE_URL")
    with pytest.raises(BadGateway, match="not set"):
        run(lambda c: c.generate(target, MESSAGES, SAMPLING, "r-db"))
