"""Prometheus metrics as plain, mergeable data: one coherent view across replicas.

Each ingress replica observes into a `MetricsDelta`; deltas are pushed to one
`MetricsAggregate` (held by the MetricsWriter actor) and `/metrics` renders the
aggregate with prometheus_client's exposition. No process-local registry is
scraped, so every replica's requests appear in every scrape.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
TRUST_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


@dataclass(frozen=True)
class Spec:
    """One metric family: kind, help text, label names, histogram buckets."""

    kind: str  # "counter" | "histogram"
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


SPECS: dict[str, Spec] = {
    "promethios_requests": Spec(
        "counter", "HTTP requests served by the ingress, by route template and status code.",
        ("route", "status"),
    ),
    "promethios_request_duration_seconds": Spec(
        "histogram", "End-to-end HTTP request latency at the ingress.", ("route",),
        LATENCY_BUCKETS,
    ),
    "promethios_model_duration_seconds": Spec(
        "histogram", "Time spent in the LLM deployment per generation.", (), LATENCY_BUCKETS
    ),
    "promethios_governance_duration_seconds": Spec(
        "histogram", "Time spent in the governance scorer per screening.", ("direction",),
        LATENCY_BUCKETS,
    ),
    "promethios_tokens": Spec(
        "counter", "Tokens processed by the model (input: prompt, output: completion).",
        ("direction",),
    ),
    "promethios_governance_verdicts": Spec(
        "counter",
        "Governance findings: one per violated policy per screening "
        "(policy=\"none\" for a clean screening).",
        ("policy", "category", "action"),
    ),
    "promethios_trust_score": Spec(
        "histogram", "Trust score of each scored interaction (0-1).", (), TRUST_BUCKETS
    ),
    "promethios_interactions": Spec(
        "counter", "Interactions handed to the metrics writer, by channel and status.",
        ("channel", "status"),
    ),
}  # fmt: skip

Key = tuple[str, tuple[str, ...]]


@dataclass(frozen=True)
class Gauge:
    """A value read at scrape time (not aggregated): name, help, labels, value."""

    name: str
    help: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


def _key(name: str, labels: dict[str, str]) -> Key:
    spec = SPECS[name]
    return name, tuple(str(labels.get(label, "")) for label in spec.labels)


@dataclass
class MetricsDelta:
    """Observations not yet merged: counter increments and histogram bucket counts.

    Histogram values are `[count per bucket..., +Inf count, sum]` (non-cumulative).
    Plain dicts of tuples, so a delta pickles through Ray cheaply.
    """

    counters: dict[Key, float] = field(default_factory=dict)
    histograms: dict[Key, list[float]] = field(default_factory=dict)

    def inc(self, name: str, labels: dict[str, str] | None = None, value: float = 1.0) -> None:
        key = _key(name, labels or {})
        self.counters[key] = self.counters.get(key, 0.0) + value

    def observe(self, name: str, value: float, labels: dict[str, str] | None = None) -> None:
        spec = SPECS[name]
        key = _key(name, labels or {})
        hist = self.histograms.get(key)
        if hist is None:
            hist = self.histograms[key] = [0.0] * (len(spec.buckets) + 2)
        hist[bisect.bisect_left(spec.buckets, value)] += 1
        hist[-1] += value

    def merge(self, other: MetricsDelta) -> None:
        for key, value in other.counters.items():
            self.counters[key] = self.counters.get(key, 0.0) + value
        for key, values in other.histograms.items():
            mine = self.histograms.get(key)
            if mine is None:
                self.histograms[key] = list(values)
            else:
                for i, v in enumerate(values):
                    mine[i] += v

    def take(self) -> MetricsDelta:
        """Return the observations so far and start empty."""
        out = MetricsDelta(self.counters, self.histograms)
        self.counters, self.histograms = {}, {}
        return out

    def __bool__(self) -> bool:
        return bool(self.counters or self.histograms)

    def to_wire(self) -> dict[str, Any]:
        return {
            "counters": [[n, list(lv), v] for (n, lv), v in self.counters.items()],
            "histograms": [[n, list(lv), list(v)] for (n, lv), v in self.histograms.items()],
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> MetricsDelta:
        d = cls()
        for name, labels, value in data.get("counters", []):
            if name in SPECS:
                d.counters[(name, tuple(labels))] = float(value)
        for name, labels, values in data.get("histograms", []):
            spec = SPECS.get(name)
            if spec is not None and len(values) == len(spec.buckets) + 2:
                d.histograms[(name, tuple(labels))] = [float(v) for v in values]
        return d


class MetricsAggregate(MetricsDelta):
    """The merged totals since the aggregating process started (counters only grow)."""


def families(totals: MetricsDelta, gauges: list[Gauge] | None = None) -> Iterator[Metric]:
    """Prometheus metric families for the totals, plus gauges read at scrape time."""
    for name, spec in SPECS.items():
        if spec.kind == "counter":
            fam: Metric = CounterMetricFamily(name, spec.help, labels=list(spec.labels))
            for (n, lv), value in sorted(totals.counters.items()):
                if n == name:
                    fam.add_metric(list(lv), value)
        else:
            fam = HistogramMetricFamily(name, spec.help, labels=list(spec.labels))
            for (n, lv), values in sorted(totals.histograms.items()):
                if n != name:
                    continue
                running, buckets = 0.0, []
                for bound, count in zip((*spec.buckets, float("inf")), values[:-1], strict=True):
                    running += count
                    buckets.append((_le(bound), running))
                fam.add_metric(list(lv), buckets, values[-1])
        yield fam
    by_name: dict[str, GaugeMetricFamily] = {}
    for g in gauges or []:
        fam_g = by_name.get(g.name)
        if fam_g is None:
            fam_g = by_name[g.name] = GaugeMetricFamily(g.name, g.help, labels=list(g.labels))
        fam_g.add_metric(list(g.labels.values()), g.value)
    yield from by_name.values()


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class _Collector:
    def __init__(self, totals: MetricsDelta, gauges: list[Gauge]) -> None:
        self.totals, self.gauges = totals, gauges

    def collect(self) -> Iterator[Metric]:
        return families(self.totals, self.gauges)


def render(totals: MetricsDelta, gauges: list[Gauge] | None = None) -> bytes:
    """The Prometheus text exposition (format 0.0.4) of the totals and gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(totals, gauges or []))  # type: ignore[arg-type]
    return generate_latest(registry)
