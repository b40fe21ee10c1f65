"""Wire models of the seed's /native-llm API (requests validated here)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class NativeBackend(BaseModel):
    """The served model (the default)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["native"] = "native"


class OpenAIBackend(BaseModel):
    """An upstream OpenAI-compatible chat API that the agent wraps.

    `upstream` names one the operator registered (serve_app/upstream_registry.py): its
    URL and key stay on the server. `base_url`, an ad-hoc URL of the tenant's, only where
    the operator allows it (public https addresses, no key). The agent may ask for less
    time or fewer retries than the registration gives, never more.
    """

    model_config = ConfigDict(extra="forbid")
    type: Literal["openai"]
    upstream: str | None = Field(default=None, min_length=1, max_length=64, examples=["local-vllm"])
    base_url: str | None = Field(default=None, min_length=1, max_length=500)
    model: str = Field(min_length=1, max_length=200)
    timeout_s: float | None = Field(default=None, gt=0, le=600)
    max_retries: int | None = Field(default=None, ge=0, le=5)
    # The upstream model's context window in tokens, when known (bounds max_tokens; a
    # registered upstream's own window wins when smaller).
    context_window: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _registered_or_allowed(self) -> OpenAIBackend:
        from serve_app.errors import BadRequest
        from serve_app.upstream_registry import registry

        if (self.upstream is None) == (self.base_url is None):
            raise ValueError("name exactly one of upstream (registered) or base_url")
        try:
            registry().target(self.model_dump())
        except BadRequest as exc:  # an invalid operator file stays a 503, not the tenant's fault
            raise ValueError(exc.message) from exc
        return self


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
