"""The upstreams the operator registers for wrapped agents, and what an agent may name.

Upstreams belong to the operator: a YAML file (`PROMETHIOS_UPSTREAMS_FILE`) maps a name to
a base URL, the environment variable holding its key, the models tenants may ask for, a
timeout, retries and the context window. A tenant's wrapped agent names a registered
upstream (`{"type": "openai", "upstream": "local-vllm", "model": "tiny"}`); the key goes
only to the URL it is registered with, and a tenant never names a variable. Ad-hoc tenant
URLs (`base_url`) only when the operator turns them on (`PROMETHIOS_TENANT_UPSTREAM_URLS`),
https only unless `PROMETHIOS_TENANT_UPSTREAM_HTTP`, public addresses only
(serve_app/netguard.py), and never with a key.

    upstreams:
      local-vllm:
        base_url: http://127.0.0.1:8001/v1
        api_key_env: UPSTREAM_LOCAL_VLLM_KEY   # optional
        models: [tiny]                          # optional; absent: any model
        timeout_s: 60
        max_retries: 2
        context_window: 4096                    # optional

The file is re-read when it changes (its size and modification time), so registering an
upstream needs no restart. Plain Python, read by the ingress (validation) and by the
UpstreamLLM deployment (calls).
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from serve_app.errors import BadRequest, ModelUnavailable
from serve_app.netguard import tenant_url_refusal, url_shape_refusal
from serve_app.settings import get_settings, upstream_api_key

log = logging.getLogger("promethios.upstream")

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
KEY_ENV = r"^[A-Z_][A-Z0-9_]{0,127}$"
# Variables that never hold an upstream key, whatever the operator's file says.
RESERVED_KEY_ENVS = frozenset({"PROMETHIOS_API_KEY", "DATABASE_URL"})
DEFAULT_TIMEOUT_S = 60.0
DEFAULT_RETRIES = 2


class RegistryError(ValueError):
    """The operator's upstreams file cannot be used (the message names the fix)."""


class Registered(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str = Field(min_length=1, max_length=500)
    api_key_env: str | None = Field(default=None, pattern=KEY_ENV)
    models: list[str] | None = None
    timeout_s: float = Field(default=DEFAULT_TIMEOUT_S, gt=0, le=600)
    max_retries: int = Field(default=DEFAULT_RETRIES, ge=0, le=5)
    context_window: int | None = Field(default=None, gt=0)

    @field_validator("base_url")
    @classmethod
    def _url(cls, url: str) -> str:
        why = url_shape_refusal(url, allow_http=True)  # any host: the operator's choice
        if why:
            raise ValueError(why)
        return url.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _not_reserved(cls, name: str | None) -> str | None:
        if name in RESERVED_KEY_ENVS:
            raise ValueError(f"{name} is never sent to an upstream")
        return name


class RegistryFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    upstreams: dict[str, Registered] = Field(default_factory=dict)

    @field_validator("upstreams")
    @classmethod
    def _names(cls, ups: dict[str, Registered]) -> dict[str, Registered]:
        for name in ups:
            if not re.fullmatch(NAME, name):
                raise ValueError(f"upstream name {name!r} must match {NAME}")
        return ups


@dataclass(frozen=True)
class UpstreamTarget:
    """Where one wrapped agent's call goes, resolved from its backend config."""

    base_url: str
    model: str
    label: str  # what errors name: the registered name, or the tenant URL's host
    api_key_env: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_retries: int = DEFAULT_RETRIES
    context_window: int | None = None
    guarded: bool = False  # a tenant URL: public addresses only, no proxy, no key

    @property
    def completions_url(self) -> str:
        return f"{self.base_url}/chat/completions"

    def headers(self) -> dict[str, str]:
        if not self.api_key_env or self.guarded:
            return {}
        key = upstream_api_key(self.api_key_env)
        if not key:
            log.error("upstream %s: its key variable %s is not set", self.label, self.api_key_env)
            raise ModelUnavailable(
                f"upstream {self.label} is not usable: its key is not set on the server"
            )
        return {"Authorization": f"Bearer {key}"}


class Registry:
    """The operator's file, re-read when it changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._entries: dict[str, Registered] = {}
        self._error: str | None = None

    def entries(self) -> dict[str, Registered]:
        """The registered upstreams; raises ModelUnavailable when the file is invalid."""
        if self.path is None:
            return {}
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        with self._lock:
            if stamp != self._stamp or self._stamp is None:
                self._load(stamp)
            if self._error:
                log.error("upstreams file %s: %s", self.path, self._error)
                raise ModelUnavailable("the operator's upstream registry is invalid")
            return self._entries

    def _load(self, stamp: tuple[int, int] | None) -> None:
        self._stamp = stamp
        try:
            self._entries = load(self.path) if self.path is not None else {}
            self._error = None
        except RegistryError as exc:
            self._entries, self._error = {}, str(exc)

    def check(self) -> None:
        """Raise RegistryError when the file is invalid (start-up fails fast)."""
        if self.path is not None:
            load(self.path)

    def target(self, backend: dict[str, Any]) -> UpstreamTarget:
        """The target a stored backend config names. Raises BadRequest when it names an
        unknown upstream or a model the upstream does not offer, or an ad-hoc URL the
        operator has not allowed (agents created before may still hold one)."""
        model = str(backend.get("model") or "")
        timeout_s = backend.get("timeout_s")
        retries = backend.get("max_retries")
        name = backend.get("upstream")
        if name is not None:
            entry = self.entries().get(str(name))
            if entry is None:
                raise BadRequest(self._unknown(str(name)))
            if entry.models is not None and model not in entry.models:
                raise BadRequest(
                    f"config.backend.model: upstream {name} offers "
                    f"{', '.join(entry.models) or 'no model'}"
                )
            return UpstreamTarget(
                base_url=entry.base_url,
                model=model,
                label=str(name),
                api_key_env=entry.api_key_env,
                # The agent may ask for less time or fewer retries, never more.
                timeout_s=min(float(timeout_s or entry.timeout_s), entry.timeout_s),
                max_retries=min(
                    int(entry.max_retries if retries is None else retries), entry.max_retries
                ),  # fmt: skip
                context_window=_smaller(entry.context_window, backend.get("context_window")),
            )
        url = backend.get("base_url")
        if not url:
            raise BadRequest("config.backend: name an upstream (config.backend.upstream)")
        settings = get_settings()
        if not settings.tenant_upstream_urls:
            raise BadRequest(
                "config.backend.base_url: this server does not call URLs that agents name; "
                "name an upstream the operator registered (config.backend.upstream)"
                + self._available()
            )
        why = tenant_url_refusal(str(url), allow_http=settings.tenant_upstream_http)
        if why:
            raise BadRequest(f"config.backend.base_url {why}")
        return UpstreamTarget(
            base_url=str(url).rstrip("/"),
            model=model,
            label=str(urlsplit(str(url)).hostname),
            timeout_s=min(float(timeout_s or DEFAULT_TIMEOUT_S), 600.0),
            max_retries=int(DEFAULT_RETRIES if retries is None else retries),
            context_window=backend.get("context_window"),
            guarded=True,
        )

    def _available(self) -> str:
        names = sorted(self.entries())
        return f"; registered: {', '.join(names)}" if names else "; none is registered"

    def _unknown(self, name: str) -> str:
        return f"config.backend.upstream: no upstream {name!r} is registered" + self._available()


def _smaller(a: int | None, b: Any) -> int | None:
    values = [int(v) for v in (a, b) if v is not None]
    return min(values) if values else None


def load(path: Path) -> dict[str, Registered]:
    """The file's upstreams; RegistryError names what is wrong."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise RegistryError(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise RegistryError(f"{path} is not YAML: {exc}") from exc
    try:
        return RegistryFile.model_validate(raw).upstreams
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RegistryError(f"{path}: {where}: {first['msg']}") from exc


_registry: Registry | None = None
_registry_lock = threading.Lock()


def registry() -> Registry:
    """This process's registry, from the settings' file."""
    global _registry
    with _registry_lock:
        path = get_settings().upstreams_file
        if _registry is None or _registry.path != path:
            _registry = Registry(path)
        return _registry
