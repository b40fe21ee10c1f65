"""Wire models of the seed's /native-llm API (requests validated here)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class AgentConfig(BaseModel):
    """An agent's configuration, as the seed's create request carries it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    response_style: str = Field(default="professional", min_length=1, max_length=50)
    compliance_mode: Literal["strict", "standard", "permissive"] = "standard"
    trust_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    max_tokens: int = Field(default=128, gt=0)
    temperature: float = Field(default=0.7, ge=0.0, le=2.0)
    system_prompt: str | None = Field(default=None, max_length=4000)
    # A policy file in configs/policies/ (name without .yaml); None: the default file.
    policy: str | None = Field(default=None, max_length=64)

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
    max_tokens: int | None = Field(default=None, gt=0)
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
