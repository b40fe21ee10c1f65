"""Wire models of agent lifecycle: PATCH bodies."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_app.api.native.protocol import AgentBackend


class AgentPatch(BaseModel):
    """Fields to change; each is validated as on create (omitted fields keep their value)."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    response_style: str | None = Field(default=None, min_length=1, max_length=50)
    compliance_mode: Literal["strict", "standard", "permissive"] | None = None
    trust_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, gt=0, strict=True)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    system_prompt: str | None = Field(default=None, max_length=4000)
    backend: AgentBackend | None = None


class PatchAgentRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: str | None = None
    config: AgentPatch
