"""HTTP routes of governance: the policy dry run and audit verification."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from serve_app.api.deps import CurrentUser, ServicesDep
from serve_app.api.governance.protocol import EvaluateRequest
from serve_app.api.governance.service import GovernanceService
from serve_app.api.limits import admit, settler
from serve_app.errors import success_envelope

router = APIRouter(prefix="/native-llm")


def _service(services: ServicesDep) -> GovernanceService:
    return services.service(GovernanceService)


@router.post("/governance/evaluate")
async def evaluate(
    body: EvaluateRequest,
    request: Request,
    response: Response,
    user: CurrentUser,
    services: ServicesDep,
) -> dict:
    """Rate-limited like a chat (the key's and the user's limits): each call runs the
    classifier, so an unlimited dry run would be a free way to load the scorer."""
    admission = await admit(services, request, None, user)
    data = await _service(services).evaluate(user, body)
    await settler(services)(admission, max(1, len(body.text) // 4))  # ~tokens scored
    if admission is not None:
        response.headers.update(admission.headers())
    return success_envelope(data)


@router.get("/agent/{agent_id}/audit/verify")
async def verify_audit(agent_id: str, user: CurrentUser, services: ServicesDep) -> dict:
    return success_envelope(await _service(services).verify_audit(agent_id, user))
