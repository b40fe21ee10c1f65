"""Wire models of the governance endpoints (dry-run evaluation)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EvaluateRequest(BaseModel):
    """A text to screen as the agent would (or with the default policy and mode)."""

    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1)
    direction: Literal["input", "output"] = "input"
    agent_id: str | None = None
    # Without an agent: the mode and threshold to evaluate in (defaults as an agent's).
    compliance_mode: Literal["strict", "standard", "permissive"] | None = None
    trust_threshold: float | None = Field(default=None, ge=0.0, le=1.0)
