"""A tenant's wrapped agent reaches only what the operator registered (issue 23, item 1).

Each test performs the attack against the real client, schema and address guard, with real
HTTP servers on loopback standing in for what sits beside the server (the metadata service,
the database, an internal API), and fails if the attack gets through: the server behind
the address must see no request."""

from __future__ import annotations

import asyncio
import logging

import httpcore
import pytest
import yaml
from pydantic import ValidationError

from serve_app.api.native.protocol import AgentConfig
from serve_app.errors import BadGateway, BadRequest
from serve_app.netguard import (
    AddressRefused,
    checked_addresses,
    refusal,
    tenant_url_refusal,
)
from serve_app.settings import get_settings
from serve_app.upstream import UpstreamClient
from serve_app.upstream_registry import Registry, RegistryError, load
from tests.support.upstreams import TALKATIVE_ERROR, start_faulty_upstream

MESSAGES = [{"role": "user", "content": "hello there"}]
SAMPLING = {"max_tokens": 16, "temperature": 0.0}
PUBLIC = "93.184.216.34"  # a global unicast address (never connected to: see _Redirect)


@pytest.fixture(scope="module")
def internal():
    """A server on loopback: what a tenant must not reach."""
    up = start_faulty_upstream()
    yield up
    up.stop()


@pytest.fixture
def registry(tmp_path, internal) -> Registry:
    path = tmp_path / "upstreams.yaml"
    path.write_text(yaml.safe_dump({"upstreams": {"ops": {"base_url": internal.base_url}}}))
    return Registry(path)


@pytest.fixture
def tenant_urls(monkeypatch):
    """The operator turned ad-hoc tenant URLs on, plain http included (the loosest setting:
    the address guard must hold even then)."""
    monkeypatch.setenv("PROMETHIOS_TENANT_UPSTREAM_URLS", "1")
    monkeypatch.setenv("PROMETHIOS_TENANT_UPSTREAM_HTTP", "1")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _run(coro_fn, **client_args):
    async def main():
        client = UpstreamClient(**client_args)
        try:
            return await coro_fn(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def _tenant(url: str, model: str = "echo") -> dict:
    return {"type": "openai", "base_url": url, "model": model}


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1", "127.8.9.10", "10.0.0.5", "172.16.3.4", "192.168.1.1",
        "169.254.169.254", "100.64.0.1", "100.127.255.254", "0.0.0.0", "224.0.0.251",
        "255.255.255.255", "198.18.0.1", "::1", "::", "fe80::1", "fe80::1%eth0", "fc00::1",
        "fd12:3456::1", "ff02::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
        "::ffff:10.1.2.3", "2002:7f00:1::1", "2002:a9fe:a9fe::", "64:ff9b::a9fe:a9fe",
        "64:ff9b::7f00:1", "2001:0:4136:e378:8000:63bf:80ff:fffe", "fec0::1",
    ],
)  # fmt: skip
def test_every_non_public_address_form_is_refused(address: str) -> None:
    assert refusal(address) is not None, address


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_pass(address: str) -> None:
    assert refusal(address) is None


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://169.254.169.254/latest/meta-data", "https"),
        ("https://user:pw@api.example.com/v1", "credentials"),
        ("https://api.example.com/v1?x=1", "query"),
        ("https://metadata.google.internal/v1", "metadata"),
        ("https://localhost:8000/v1", "local"),
        ("https://db.svc.cluster.internal/v1", "local"),
        ("https://2130706433/v1", "numeric"),
        ("https://0x7f000001/v1", "numeric"),
        ("https://[::ffff:127.0.0.1]/v1", "loopback"),
        ("https://169.254.169.254/v1", "link-local"),
        ("file:///etc/passwd", "https"),
        ("gopher://127.0.0.1:6379/_SET", "https"),
    ],
)
def test_tenant_urls_are_refused_before_any_lookup(url: str, why: str) -> None:
    reason = tenant_url_refusal(url, allow_http=False)
    assert reason is not None and why in reason, (url, reason)


def test_with_tenant_urls_off_a_metadata_url_cannot_even_be_saved(internal) -> None:
    get_settings.cache_clear()
    for url in ("http://169.254.169.254/latest/meta-data", internal.base_url):
        with pytest.raises(ValidationError, match="does not call URLs that agents name"):
            AgentConfig.model_validate({"name": "x", "backend": _tenant(url)})


def test_a_tenant_cannot_name_a_key_variable_and_the_error_reveals_none(monkeypatch) -> None:
    monkeypatch.setenv("UPSTREAM_REAL_KEY", "sk-operator")
    errors = []
    for env in ("UPSTREAM_REAL_KEY", "UPSTREAM_NO_SUCH_VAR", "DATABASE_URL"):
        backend = {"type": "openai", "upstream": "ops", "model": "m", "api_key_env": env}
        with pytest.raises(ValidationError) as err:
            AgentConfig.model_validate({"name": "x", "backend": backend})
        errors.append(
            [(e["loc"], e["type"]) for e in err.value.errors() if "api_key_env" in e["loc"]]
        )
    assert errors[0] and errors[0] == errors[1] == errors[2]  # same answer, set or not


def test_a_loopback_tenant_url_is_refused_at_connect_and_nothing_is_sent(
    internal, tenant_urls
) -> None:
    port = internal.base_url.rsplit(":", 1)[1]
    for url in (internal.base_url, internal.base_url.replace("127.0.0.1", "localhost")):
        with pytest.raises(BadRequest, match="loopback|local"):  # refused by its spelling
            _run(lambda c, u=url: c.generate(_tenant(u, "loopback"), MESSAGES, SAMPLING, "r"))

    async def to_loopback(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]  # an innocent-looking name whose DNS answers loopback

    url = f"http://internal-api.example.com:{port}"
    with pytest.raises(BadRequest, match="internal-api.example.com refused: 127.0.0.1 is loopback"):
        _run(
            lambda c: c.generate(_tenant(url, "loopback"), MESSAGES, SAMPLING, "r-dns"),
            resolve=to_loopback,
        )
    assert not [k for k in internal.calls if k[0] == "loopback"]


class _Redirect(httpcore.AsyncNetworkBackend):
    """Stands in for the internet: a connect to PUBLIC lands on the loopback server (we
    cannot reach the internet here). Records the address each connect was made to."""

    def __init__(self, port: int) -> None:
        self.port, self.addresses = port, []
        self._real = httpcore.AnyIOBackend()

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        self.addresses.append(host)
        assert host == PUBLIC, f"connected to {host}, not the checked address"
        return await self._real.connect_tcp("127.0.0.1", self.port, timeout)

    async def sleep(self, seconds):
        await self._real.sleep(seconds)


def test_the_connect_goes_to_the_address_that_was_checked_and_rebinding_is_refused(
    internal, tenant_urls
) -> None:
    port = int(internal.base_url.rsplit(":", 1)[1].split("/")[0])
    answers = {"n": 0}

    async def rebinding_dns(host: str, port: int) -> list[str]:
        answers["n"] += 1  # public for the first look-up, loopback afterwards
        return [PUBLIC] if answers["n"] == 1 else ["127.0.0.1"]

    url = f"http://api.example.com:{port}/v1"
    redirect = _Redirect(port)

    async def first_call(client: UpstreamClient):
        client.tenant_network._inner = redirect  # the "internet"
        return await client.generate(_tenant(url), MESSAGES, SAMPLING, "r-pinned")

    gen = _run(first_call, resolve=rebinding_dns)
    assert gen.text == "echo: hello there"
    assert redirect.addresses == [PUBLIC]  # the checked address, resolved once
    # The name now answers loopback: a new connection checks again and is refused.
    before = dict(internal.calls)
    with pytest.raises(BadRequest, match="127.0.0.1 is loopback"):
        _run(
            lambda c: c.generate(_tenant(url), MESSAGES, SAMPLING, "r-rebind"),
            resolve=rebinding_dns,
        )
    assert dict(internal.calls) == before  # nothing reached the loopback server

    # A name with one private address among public ones is refused as a whole.
    async def mixed(host, port):
        return [PUBLIC, "10.0.0.7"]

    with pytest.raises(AddressRefused, match="10.0.0.7 is private"):
        asyncio.run(checked_addresses("api.example.com", 443, mixed))


def test_redirects_are_not_followed(internal, registry) -> None:
    backend = {"type": "openai", "upstream": "ops", "model": "redirect"}
    with pytest.raises(BadGateway):
        _run(lambda c: c.generate(backend, MESSAGES, SAMPLING, "r-redirect"), upstreams=registry)
    assert not [k for k in internal.calls if k[0] == "redirect" and k[1] != "r-redirect"]
    assert internal.calls[("redirect", "r-redirect")] == 1  # the 307 only, never followed


def test_no_key_is_ever_sent_to_a_tenant_url(internal, monkeypatch, tenant_urls) -> None:
    """An agent stored before upstreams were registered may still name a key variable
    beside its URL: the variable is ignored, the upstream sees no Authorization header."""
    monkeypatch.setenv("UPSTREAM_OPS_KEY", "sk-operator-secret")
    port = int(internal.base_url.rsplit(":", 1)[1].split("/")[0])
    legacy = {
        **_tenant(f"http://api.example.com:{port}/v1", "leak"),
        "api_key_env": "UPSTREAM_OPS_KEY",
    }

    async def public_dns(host: str, port: int) -> list[str]:
        return [PUBLIC]

    async def call(client: UpstreamClient):
        client.tenant_network._inner = _Redirect(port)
        return await client.generate(legacy, MESSAGES, SAMPLING, "r-legacy")

    assert _run(call, resolve=public_dns).text == "auth=none"


def test_an_upstream_error_body_never_reaches_the_client(internal, registry, caplog) -> None:
    backend = {"type": "openai", "upstream": "ops", "model": "talkative", "max_retries": 0}
    with caplog.at_level(logging.WARNING, logger="promethios.upstream"):
        with pytest.raises(BadGateway) as err:
            _run(lambda c: c.generate(backend, MESSAGES, SAMPLING, "r-talk"), upstreams=registry)
    message = str(err.value)
    assert message == "upstream ops answered 500"
    for secret in ("10.0.3.7", "svc_llm", "4111", "sk-live", "tenant bob"):
        assert secret not in message
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "svc_llm" in logged  # the operator sees the body...
    assert "4111 1111 1111 1111" not in logged and TALKATIVE_ERROR not in logged  # ...redacted


def test_an_unknown_upstream_or_model_is_refused_and_a_bad_registry_fails_fast(
    tmp_path, internal
) -> None:
    path = tmp_path / "u.yaml"
    path.write_text(
        yaml.safe_dump({"upstreams": {"ops": {"base_url": internal.base_url, "models": ["a"]}}})
    )
    reg = Registry(path)
    with pytest.raises(BadRequest, match="no upstream 'other' is registered; registered: ops"):
        reg.target({"type": "openai", "upstream": "other", "model": "a"})
    with pytest.raises(BadRequest, match="offers a"):
        reg.target({"type": "openai", "upstream": "ops", "model": "b"})
    for bad in (
        {"upstreams": {"x": {"base_url": "ftp://h/"}}},
        {"upstreams": {"x": {"base_url": "http://u:p@h/v1"}}},
        {"upstreams": {"x": {"base_url": "http://h/v1", "api_key_env": "DATABASE_URL"}}},
        {"upstreams": {"bad name": {"base_url": "http://h/v1"}}},
        {"upstream": {}},
    ):
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(RegistryError, match=str(path)):
            load(path)
