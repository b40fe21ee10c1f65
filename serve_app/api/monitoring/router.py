"""Monitoring routes: Prometheus metrics, per-agent time series and audit reports.

Serves:
- GET /metrics                                   Prometheus text format (no key)
- GET /native-llm/agent/{agent_id}/timeseries     bucketed figures for the console's plots
- GET /native-llm/agent/{agent_id}/report         an audit report, JSON or CSV, as a download
"""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta, timezone
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from serve_app.api.deps import CurrentUser, Services, ServicesDep, require_same_user
from serve_app.errors import BadRequest, NotFound, success_envelope
from serve_app.governed_chat import agent_kind
from serve_app.observability import history
from serve_app.observability.metrics import Gauge, MetricsDelta, render
from serve_app.observability.requests import current_hub
from serve_app.store.records import AgentRecord

router = APIRouter()
DEFAULT_WINDOW = timedelta(hours=1)
MAX_WINDOW = timedelta(days=31)


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(services: ServicesDep) -> Response:
    """Every replica's observations merged by the metrics writer, plus gauges read now."""
    hub = current_hub()
    gauges: list[Gauge] = []
    totals = MetricsDelta()
    writer_up = 0.0
    if hub is not None:
        try:
            totals = await hub.totals()
            writer_up = 1.0
        except Exception:
            totals = MetricsDelta()
            totals.merge(hub.pending)  # at least this replica's unsent observations
    try:
        deployments = await asyncio.to_thread(history.active_deployments, services.store)
        gauges.append(
            Gauge(
                "promethios_active_deployments",
                "Agent deployments serving a production route.",
                float(deployments),
            )
        )
    except Exception:
        pass
    gauges.extend(await _writer_gauges(services))
    health = await services.backends.health()
    health["metrics_writer"] = health.get("metrics_writer", "ok") if writer_up else "down"
    for component, state in sorted(health.items()):
        gauges.append(
            Gauge(
                "promethios_component_up",
                "1 when the component answered its health check at scrape time.",
                1.0 if state == "ok" else 0.0,
                {"component": component},
            )
        )
    return Response(render(totals, gauges), media_type=CONTENT_TYPE_LATEST)


WRITER_GAUGES = {
    "pending": "Records accepted by the metrics writer and not yet in the database.",
    "max_pending": "Backlog at which the writer refuses new records (503 audit_unavailable).",
    "refused": "Records refused because the backlog was full, since the writer started.",
    "dead_letters": "Records the database refused, set aside in the dead-letter file.",
    "spool_bytes": "Bytes of spooled records on the writer's disk, not yet in the database.",
    "dead_letter_bytes": "Bytes in the writer's dead-letter file.",
}


async def _writer_gauges(services: Services) -> list[Gauge]:
    """The metrics writer's backlog as gauges (none when it does not answer)."""
    try:
        stats = await services.backends.writer_stats()
    except Exception:
        return []
    return [
        Gauge(f"promethios_writer_{name}", help_, float(stats[name]))
        for name, help_ in WRITER_GAUGES.items()
        if isinstance(stats.get(name), (int, float))
    ]


async def _owned_agent(services: Services, agent_id: str, user: str) -> AgentRecord:
    agent = await asyncio.to_thread(services.store.get_agent, agent_id, user)
    if agent is None:
        raise NotFound(f"agent {agent_id!r} not found")
    return agent


def _window(start: str | None, end: str | None) -> tuple[datetime, datetime]:
    now = datetime.now(timezone.utc)
    try:
        to = history.parse_time(end, now)
        frm = history.parse_time(start, to - DEFAULT_WINDOW)
    except ValueError as exc:
        raise BadRequest(f"from/to must be ISO-8601 times: {exc}") from exc
    if frm >= to:
        raise BadRequest("'from' must be before 'to'")
    if to - frm > MAX_WINDOW:
        raise BadRequest(f"the window may span at most {MAX_WINDOW.days} days")
    return frm, to


FromQuery = Annotated[str | None, Query(alias="from")]
ToQuery = Annotated[str | None, Query(alias="to")]


@router.get("/native-llm/agent/{agent_id}/timeseries")
async def timeseries(
    agent_id: str,
    user: CurrentUser,
    services: ServicesDep,
    start: FromQuery = None,
    end: ToQuery = None,
    bucket: Annotated[int, Query(ge=1, le=86400)] = 60,
    user_id: Annotated[str | None, Query()] = None,
) -> dict:
    """Buckets of `bucket` seconds over [from, to) (default: the last hour); 400 over 1000."""
    require_same_user(user_id, user)
    agent = await _owned_agent(services, agent_id, user)
    frm, to = _window(start, end)
    if (to - frm).total_seconds() / bucket > history.MAX_BUCKETS:
        raise BadRequest(f"at most {history.MAX_BUCKETS} buckets; use a larger 'bucket'")
    await services.backends.flush()
    rows = await asyncio.to_thread(history.interactions, services.store, agent.agent_id, frm, to)
    data = history.timeseries(rows, frm, to, bucket)
    data["agent_id"] = agent.agent_id
    data["summary"] = history.summarize(rows)
    return success_envelope(data)


@router.get("/native-llm/reports/comparison")
async def comparison(
    user: CurrentUser,
    services: ServicesDep,
    start: FromQuery = None,
    end: ToQuery = None,
    user_id: Annotated[str | None, Query()] = None,
) -> dict:
    """The caller's native agents against their wrapped agents over [from, to) (default:
    the last hour): the seed's comparison rows, computed from stored interactions."""
    require_same_user(user_id, user)
    frm, to = _window(start, end)
    await services.backends.flush()
    agents = await asyncio.to_thread(services.store.list_agents, user)
    groups: dict[str, dict] = {}
    for kind in ("native", "wrapped"):
        ids = [a.agent_id for a in agents if agent_kind(a) == kind]
        rows = await asyncio.to_thread(history.interactions, services.store, ids, frm, to)
        groups[kind] = {"agents": len(ids), **history.comparison_row(rows, frm, to)}
    return success_envelope(
        {"user_id": user, "from": history.iso(frm), "to": history.iso(to), "groups": groups}
    )


@router.get("/native-llm/agent/{agent_id}/report")
async def report(
    agent_id: str,
    user: CurrentUser,
    services: ServicesDep,
    start: FromQuery = None,
    end: ToQuery = None,
    format: Literal["json", "csv"] = "json",
    user_id: Annotated[str | None, Query()] = None,
) -> Response:
    """The interactions, violations and scores in [from, to), as an attachment."""
    require_same_user(user_id, user)
    agent = await _owned_agent(services, agent_id, user)
    frm, to = _window(start, end)
    await services.backends.flush()
    rows = await asyncio.to_thread(history.interactions, services.store, agent.agent_id, frm, to)
    stem = f"governance-report-{agent.agent_id}-{frm:%Y%m%dT%H%M%SZ}-{to:%Y%m%dT%H%M%SZ}"
    if format == "csv":
        return Response(
            history.report_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="{stem}.csv"'},
        )
    body = success_envelope(
        {
            "agent_id": agent.agent_id,
            "agent_name": agent.name,
            "config": agent.config,
            "policy_version": services.policies.version,
            "generated_at": history.iso(datetime.now(timezone.utc)),
            "from": history.iso(frm),
            "to": history.iso(to),
            "truncated": len(rows) >= history.MAX_REPORT_ROWS,
            "summary": history.summarize(rows),
            "interactions": [history.row_dict(r) for r in rows],
        }
    )
    return Response(
        json.dumps(body, default=str),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{stem}.json"'},
    )
