"""The web console: static files served by the ingress, and the agent cards it shows.

Serves:
- GET /dashboard/native-llm                  the console (HTML; signs in with an API key)
- GET /dashboard/native-llm/static/{path}    its script, style and the vendored Chart.js
- GET /monitoring/native-llm                 the seed's monitoring address: redirects to the console
- GET /native-llm/dashboard/agents           the caller's agents with card figures
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse, RedirectResponse

from serve_app.api.deps import CurrentUser, Services, ServicesDep
from serve_app.errors import NotFound, success_envelope

STATIC = Path(__file__).resolve().parents[2] / "static" / "dashboard"
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".md": "text/plain"}

router = APIRouter()


@router.get("/dashboard/native-llm", include_in_schema=False)
async def console() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html")


@router.get("/dashboard/native-llm/", include_in_schema=False)
@router.get("/monitoring/native-llm", include_in_schema=False)
async def console_redirect() -> RedirectResponse:
    """The seed's "Performance Monitoring" address, and a trailing slash, lead to the console."""
    return RedirectResponse("/dashboard/native-llm")


@router.get("/dashboard/native-llm/static/{path:path}", include_in_schema=False)
async def static_file(path: str) -> FileResponse:
    target = (STATIC / path).resolve()
    if STATIC not in target.parents or not target.is_file():
        raise NotFound(f"no such file: {path}")
    return FileResponse(
        target,
        media_type=_TYPES.get(target.suffix, "application/octet-stream"),
        headers={"Cache-Control": "no-cache"},
    )


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


def _cards(services: Services, user: str) -> list[dict[str, Any]]:
    from serve_app.api.native.service import iso
    from serve_app.governed_chat import agent_kind

    cards = []
    for agent in reversed(services.store.list_agents(user)):
        st = services.store.agent_stats(agent.agent_id)
        dep = services.store.get_active_deployment_for_agent(agent.agent_id)
        answered = st.ok_count + st.blocked_count
        cards.append(
            {
                "agent_id": agent.agent_id,
                "name": agent.name,
                "description": agent.description,
                "created_at": iso(agent.created_at),
                "compliance_mode": agent.config.get("compliance_mode", "standard"),
                "backend": agent_kind(agent),
                "trust_threshold": agent.config.get("trust_threshold"),
                "status": "deployed" if dep else "created",
                "production_agent_id": dep.production_agent_id if dep else None,
                "deployment_url": dep.deployment_url if dep else None,
                "total_interactions": st.total,
                "trust_score": _round(st.mean_trust_score),
                "compliance_rate": _round(st.mean_compliance_rate),
                "violation_count": st.violation_count,
                "governance_interventions": st.governance_interventions,
                "success_rate": None if st.total == 0 else round(answered / st.total, 4),
                "last_interaction_at": iso(st.last_at),
            }
        )
    return cards


@router.get("/native-llm/dashboard/agents")
async def agent_cards(user: CurrentUser, services: ServicesDep) -> dict:
    """The caller's agents, newest first, each with its all-time figures and deployment."""
    await services.backends.flush()
    return success_envelope(
        {"user_id": user, "agents": await asyncio.to_thread(_cards, services, user)}
    )
