"""Governance operations: the policy dry run and audit-chain verification."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from serve_app.api.deps import Services
from serve_app.api.governance.protocol import EvaluateRequest
from serve_app.errors import NotFound, PayloadTooLarge


class GovernanceService:
    """Serves POST /native-llm/governance/evaluate and GET .../audit/verify."""

    def __init__(self, services: Services) -> None:
        self.s = services

    async def evaluate(self, user: str, body: EvaluateRequest) -> dict[str, Any]:
        """The verdict the agent's governance would give `text`; the model is not called."""
        if len(body.text) > self.s.settings.max_message_chars:
            raise PayloadTooLarge(
                f"text is {len(body.text)} characters; the limit is "
                f"{self.s.settings.max_message_chars}"
            )
        config: dict[str, Any] = {}
        if body.agent_id is not None:
            agent = await asyncio.to_thread(self.s.store.get_agent, body.agent_id, user)
            if agent is None:
                raise NotFound(f"agent {body.agent_id!r} not found")
            config = agent.config
        mode = body.compliance_mode or config.get("compliance_mode", "standard")
        threshold = (
            body.trust_threshold
            if body.trust_threshold is not None
            else float(config.get("trust_threshold", 0.0))
        )
        policy = config.get("policy")
        started = time.perf_counter()
        verdict = await self.s.backends.evaluate(body.text, body.direction, mode, threshold, policy)
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        return {
            "agent_id": body.agent_id,
            "direction": body.direction,
            "compliance_mode": mode,
            "trust_threshold": threshold,
            "policy": policy or "default",
            "policy_version": verdict.policy_version,
            "action": verdict.action,
            "text": verdict.text,
            "violations": [v.to_dict() for v in verdict.violations],
            "scores": {
                "trust_score": verdict.trust_score,
                "compliance_rate": round(verdict.compliance_rate, 6),
                "constitutional_adherence": round(verdict.constitutional_adherence, 6),
                "governance_interventions": verdict.governance_interventions,
                "policies_evaluated": verdict.policies_evaluated,
            },
            "classifier": verdict.classifier,
            "scoring_ms": round(elapsed_ms, 3),
        }

    async def verify_audit(self, agent_id: str, user: str) -> dict[str, Any]:
        agent = await asyncio.to_thread(self.s.store.get_agent, agent_id, user)
        if agent is None:
            raise NotFound(f"agent {agent_id!r} not found")
        await self.s.backends.flush()  # records accepted so far are part of the chain
        report = await asyncio.to_thread(self.s.store.verify_audit_chain, agent_id)
        return report.to_dict()
