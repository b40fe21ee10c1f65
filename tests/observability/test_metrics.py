"""The metrics core without Ray: deltas merge across replicas and render as Prometheus text."""

from __future__ import annotations

import asyncio

from prometheus_client.parser import text_string_to_metric_families

from serve_app.observability.instrument import MetricsHub
from serve_app.observability.metrics import Gauge, MetricsAggregate, MetricsDelta, render


def _samples(text: bytes) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_two_replicas_merge_into_one_view() -> None:
    a, b = MetricsDelta(), MetricsDelta()
    a.inc("promethios_requests", {"route": "/r", "status": "200"})
    b.inc("promethios_requests", {"route": "/r", "status": "200"}, 2)
    a.observe("promethios_request_duration_seconds", 0.02, {"route": "/r"})
    b.observe("promethios_request_duration_seconds", 3.0, {"route": "/r"})
    agg = MetricsAggregate()
    for d in (a, b):
        agg.merge(MetricsDelta.from_wire(d.to_wire()))
    s = _samples(render(agg, [Gauge("promethios_active_deployments", "h", 3)]))
    assert s[("promethios_requests_total", (("route", "/r"), ("status", "200")))] == 3
    le = lambda v: ("promethios_request_duration_seconds_bucket", (("le", v), ("route", "/r")))  # noqa: E731
    assert s[le("0.025")] == 1 and s[le("2.5")] == 1 and s[le("5.0")] == 2 and s[le("+Inf")] == 2
    assert s[("promethios_request_duration_seconds_sum", (("route", "/r"),))] == 3.02
    assert s[("promethios_active_deployments", ())] == 3


def test_bucket_bounds_are_inclusive_and_wire_is_validated() -> None:
    d = MetricsDelta()
    d.observe("promethios_trust_score", 1.0)
    d.observe("promethios_trust_score", 0.5)
    s = _samples(render(d))
    assert s[("promethios_trust_score_bucket", (("le", "0.5"),))] == 1
    assert s[("promethios_trust_score_bucket", (("le", "1.0"),))] == 2
    bad = {
        "counters": [["not_a_metric", [], 1]],
        "histograms": [["promethios_trust_score", [], [1]]],
    }
    assert not MetricsDelta.from_wire(bad)


def test_hub_keeps_observations_when_the_push_fails() -> None:
    sent: list[dict] = []
    fail = [True]

    async def push(wire: dict) -> None:
        if fail[0]:
            raise ConnectionError("writer down")
        sent.append(wire)

    async def fetch() -> dict:
        return sent[-1]

    async def run() -> MetricsDelta:
        hub = MetricsHub(push, fetch)
        hub.pending.inc("promethios_tokens", {"direction": "output"}, 5)
        try:
            await hub.push()
        except ConnectionError:
            pass
        hub.pending.inc("promethios_tokens", {"direction": "output"}, 2)
        fail[0] = False
        return await hub.totals()

    totals = asyncio.run(run())
    assert totals.counters[("promethios_tokens", ("output",))] == 7
