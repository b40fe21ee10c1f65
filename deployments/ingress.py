"""The ingress: the only deployment with an HTTP route (FastAPI through @serve.ingress)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve

from serve_app.api.deps import AppInfo, Services, install_services
from serve_app.api.http import create_api
from serve_app.api.limits import RateLimits
from serve_app.api.observability import install_observability
from serve_app.assurance import Assurance, blocking_policies
from serve_app.backends import RayBackends
from serve_app.governance.policy import DEFAULT_POLICY_FILE, PolicySet
from serve_app.observability.instrument import InstrumentedBackends, MetricsHub
from serve_app.observability.logs import configure_from_settings
from serve_app.observability.requests import install_hub
from serve_app.settings import get_settings
from serve_app.store import Store

api = install_observability(create_api(get_settings().max_body_bytes))


async def _llm_replicas_running() -> int | None:
    """RUNNING replicas of the LLMServer deployment, from the Serve controller."""
    status = await asyncio.to_thread(serve.status)
    for app in status.applications.values():
        dep = app.deployments.get("LLMServer")
        if dep is not None:
            states = dep.replica_states.items()  # ReplicaState or its string value
            return sum(n for st, n in states if str(getattr(st, "value", st)) == "RUNNING")
    return None


# A replaced or downscaled replica finishes what it holds: the longest request is bounded
# by the request timeout (PROMETHIOS_REQUEST_TIMEOUT_S, 60 s); Serve's default, 20 s, cut
# chats queued behind a restarting model in a rolling update (tests/cluster/).
@serve.deployment(
    name="Ingress",
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=256,
    graceful_shutdown_timeout_s=75,
)
@serve.ingress(api)
class Ingress:
    """Serves the HTTP API; holds handles to the LLM, the scorer, the metrics writer, the
    rate limiter and the upstream caller (wrapped agents)."""

    def __init__(
        self,
        llm: Any,
        scorer: Any,
        writer: Any,
        options: dict[str, Any],
        limiter: Any = None,
        upstream: Any = None,
    ) -> None:
        settings = get_settings()
        logging.basicConfig(level=logging.DEBUG if settings.debug else logging.INFO)
        configure_from_settings("Ingress")
        hub = MetricsHub.for_writer(writer)
        install_hub(hub)
        store = Store(options["database_url"])
        raw = RayBackends(llm, scorer, writer, settings.request_timeout_s, upstream=upstream)
        services = Services(
            store=store,
            backends=InstrumentedBackends(raw, hub),
            settings=settings,
            policies=PolicySet.load(options.get("policy_file") or DEFAULT_POLICY_FILE),
            info=AppInfo(**options["info"]),
            bench_enabled=bool(options.get("bench_routes", False)),
            limiter=RateLimits.for_handle(limiter, settings) if limiter else None,
        )
        # The evidence behind every governance flag (self-checks through the raw backends,
        # so they do not count as traffic in the metrics).
        services.assurance = Assurance(
            evaluate=raw.evaluate,
            generate=raw.generate,
            writer_stats=raw.writer_stats,
            blocking_policies=blocking_policies(services.policies),
            bench_routes_on=services.bench_enabled,
            governance_trained_model=services.info.governance_trained_model,
            param_count=services.info.param_count,
            llm_replicas=_llm_replicas_running,
        )
        install_services(services)
