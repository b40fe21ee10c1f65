"""UpstreamClient against real HTTP servers on loopback: retries, timeouts, bad answers.
The upstreams are registered by the operator's file (serve_app/upstream_registry.py)."""

from __future__ import annotations

import asyncio
import time

import pytest
import yaml

from harness.launcher import free_port
from serve_app.errors import BadGateway, BadRequest, GatewayTimeout, ModelUnavailable
from serve_app.upstream import UpstreamClient
from serve_app.upstream_registry import Registry
from tests.support.upstreams import start_faulty_upstream

MESSAGES = [{"role": "user", "content": "hello there"}]
SAMPLING = {"max_tokens": 16, "temperature": 0.0}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    up = start_faulty_upstream()
    path = tmp_path_factory.mktemp("upstreams") / "upstreams.yaml"
    url = up.base_url
    path.write_text(
        yaml.safe_dump(
            {
                "upstreams": {
                    "faulty": {"base_url": url},
                    "keyed": {"base_url": url, "api_key_env": "UPSTREAM_UNIT_KEY"},
                    "unset": {"base_url": url, "api_key_env": "UPSTREAM_UNSET_KEY"},
                    "dead": {"base_url": f"http://127.0.0.1:{free_port()}/v1"},
                }
            }
        )
    )
    global REGISTRY
    REGISTRY = Registry(path)
    yield up
    up.stop()


REGISTRY: Registry | None = None


def backend(up, model: str, upstream: str = "faulty", **extra) -> dict:
    return {"type": "openai", "upstream": upstream, "model": model, **extra}


def run(coro):
    async def main():
        client = UpstreamClient(upstreams=REGISTRY)
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


def test_upstream_rejection_of_the_request_is_400_with_its_status_not_its_body(upstream):
    with pytest.raises(BadRequest, match=r"refused the request \(400\)") as err:
        run(lambda c: c.generate(backend(upstream, "reject"), MESSAGES, SAMPLING, "r-400"))
    assert "maximum context length" not in str(err.value)  # the body goes to the log only


def test_slow_upstream_times_out_within_the_agents_budget(upstream):
    started = time.monotonic()
    with pytest.raises(GatewayTimeout):
        run(
            lambda c: c.generate(
                backend(upstream, "slow", timeout_s=1.0), MESSAGES, SAMPLING, "r-slow"
            )
        )
    assert time.monotonic() - started < 5


def test_unreachable_upstream_is_502_after_retries(upstream):
    dead = backend(upstream, "m", upstream="dead")
    with pytest.raises(BadGateway, match="upstream dead unreachable"):
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


def test_the_registered_key_is_read_from_its_variable_and_sent_as_bearer(upstream, monkeypatch):
    monkeypatch.setenv("UPSTREAM_UNIT_KEY", "sk-unit-123")
    gen = run(lambda c: c.generate(backend(upstream, "leak", "keyed"), MESSAGES, SAMPLING, "r-k"))
    assert gen.text == "auth=Bearer sk-unit-123"
    # The same server registered without a key gets none.
    gen = run(lambda c: c.generate(backend(upstream, "leak"), MESSAGES, SAMPLING, "r-nk"))
    assert gen.text == "auth=none"


def test_a_missing_key_variable_is_a_503_that_does_not_name_the_variable(upstream, monkeypatch):
    monkeypatch.delenv("UPSTREAM_UNSET_KEY", raising=False)
    target = backend(upstream, "echo", "unset")
    with pytest.raises(ModelUnavailable, match="its key is not set") as err:
        run(lambda c: c.generate(target, MESSAGES, SAMPLING, "r-nokey"))
    assert "UPSTREAM_UNSET_KEY" not in str(err.value)


def test_an_agent_may_shorten_the_registered_timeout_but_not_lengthen_it(upstream):
    assert REGISTRY.target(backend(upstream, "m", timeout_s=1.0)).timeout_s == 1.0
    assert REGISTRY.target(backend(upstream, "m", timeout_s=600)).timeout_s == 60.0
    assert REGISTRY.target(backend(upstream, "m", max_retries=5)).max_retries == 2
