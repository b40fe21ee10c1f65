"""Installs what issue 5 adds to the ingress's API: request observation, /metrics,
time series and reports, and the web console."""

from __future__ import annotations

from fastapi import FastAPI

from serve_app.api.dashboard.router import router as dashboard_router
from serve_app.api.monitoring.router import router as monitoring_router
from serve_app.observability.requests import add_request_observation


def install_observability(api: FastAPI) -> FastAPI:
    """Add the per-request middleware and the monitoring and console routes to `api`."""
    add_request_observation(api)
    api.include_router(monitoring_router)
    api.include_router(dashboard_router)
    return api
