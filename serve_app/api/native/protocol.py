"""Wire models of the seed's /native-llm API (requests validated here)."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator


class NativeBackend(BaseModel):
    """The served model (the default)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["native"] = "native"


class OpenAIBackend(BaseModel):
    """An upstream OpenAI-compatible chat API that the agent wraps.

    `api_key_env` names an environment variable on the server holding the key; the key
    itself is never sent to, stored by or returned from this API.
    """

    model_config = ConfigDict(extra="forbid")
    type: Literal["openai"]
    base_url: str = Field(min_length=1, max_length=500, examples=["http://127.0.0.1:8000/v1"])
    model: str = Field(min_length=1, max_length=200)
    api_key_env: str | None = Field(default=None, min_length=1, max_length=128)
    timeout_s: float = Field(default=60.0, gt=0, le=600)
    max_retries: int = Field(default=2, ge=0, le=5)
    # The upstream model's context window in tokens, when known (bounds max_tokens).
    context_window: int | None = Field(default=None, gt=0)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("base_url must be an http(s) URL such as https://host/v1")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("base_url must not carry credentials, a query or a fragment")
        return url.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _allowed_variable(cls, name: str | None) -> str | None:
        from serve_app.settings import upstream_key_env_allowed

        if name is not None and not upstream_key_env_allowed(name):
            raise ValueError(
                f"{name} is not an allowed key variable: use UPSTREAM_* or *_API_KEY "
                "(PROMETHIOS_UPSTREAM_KEY_ENV_PATTERN)"
            )
        return name


AgentBackend = Annotated[NativeBackend | OpenAIBackend, Field(discriminator="type")]


class AgentConfig(BaseModel):
    """An agent's configuration, as the seed's create request carries it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    response_style: str = Field(default="professional", min_length=1, max_length=50)
    compliance_mode: Literal["strict", "standard", "permissive"] = "standard"
    trust_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    max_tokens: int = Field(default=128, gt=0, strict=True)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    system_prompt: str | None = Field(default=None, max_length=4000)
    # A policy file in configs/policies/ (name without .yaml); None: the default file.
    policy: str | None = Field(default=None, max_length=64)
    # Where answers come from: the served model, or an upstream model the agent wraps.
    backend: AgentBackend = Field(default_factory=NativeBackend)

    @field_validator("policy")
    @classmethod
    def _policy_file_loads(cls, name: str | None) -> str | None:
        if name is not None:
            from serve_app.governance.library import PolicyLibrary
            from serve_app.governance.policy import PolicyFileError

            try:
                PolicyLibrary().get(name)
            except PolicyFileError as exc:
                raise ValueError(str(exc)) from exc
        return name


class CreateAgentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | None = None
    config: AgentConfig


class ChatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | None = None
    message: str = Field(min_length=1)
    conversation_id: str | None = Field(
        default=None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$"
    )
    context: dict[str, Any] | None = None
    max_tokens: int | None = Field(default=None, gt=0, strict=True)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)


class RateLimitConfig(BaseModel):
    """A deployment's limits; an absent field means no limit of that kind."""

    model_config = ConfigDict(extra="forbid")
    requests_per_minute: int | None = Field(default=None, gt=0)
    tokens_per_minute: int | None = Field(default=None, gt=0)


class DeployRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | None = None
    rate_limit: RateLimitConfig | None = None
