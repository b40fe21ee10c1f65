"""HTTP routes of governance: the policy dry run and audit verification."""

from __future__ import annotations

from fastapi import APIRouter

from serve_app.api.deps import CurrentUser, ServicesDep
from serve_app.api.governance.protocol import EvaluateRequest
from serve_app.api.governance.service import GovernanceService
from serve_app.errors import success_envelope

router = APIRouter(prefix="/native-llm")


def _service(services: ServicesDep) -> GovernanceService:
    return services.service(GovernanceService)


@router.post("/governance/evaluate")
async def evaluate(body: EvaluateRequest, user: CurrentUser, services: ServicesDep) -> dict:
    return success_envelope(await _service(services).evaluate(user, body))


@router.get("/agent/{agent_id}/audit/verify")
async def verify_audit(agent_id: str, user: CurrentUser, services: ServicesDep) -> dict:
    return success_envelope(await _service(services).verify_audit(agent_id, user))
