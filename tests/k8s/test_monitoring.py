"""k8s/monitoring: every metric the dashboard and alerts query is one /metrics exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from serve_app.observability.metrics import SPECS

MONITORING = Path(__file__).resolve().parents[2] / "k8s" / "monitoring"
GAUGES = {"promethios_active_deployments", "promethios_component_up"}


def _exposed() -> set[str]:
    names = set(GAUGES)
    for name, spec in SPECS.items():
        if spec.kind == "counter":
            names.add(name + "_total")
        else:
            names |= {name + "_bucket", name + "_sum", name + "_count"}
    return names


def _used(expr: str) -> set[str]:
    return set(re.findall(r"\bpromethios_[a-z_]+", expr))


def test_dashboard_queries_known_metrics() -> None:
    dash = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    assert dash["uid"] == "promethios-native" and dash["panels"]
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for word in ("latency", "trust", "tokens", "error", "deployments", "findings"):
        assert word in titles
    for panel in dash["panels"]:
        for target in panel["targets"]:
            used = _used(target["expr"])
            assert used and used <= _exposed(), (panel["title"], used - _exposed())


def test_alerts_cover_slo_errors_trust_and_components() -> None:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {
        "PromethiosChatLatencyP95OverSLO",
        "PromethiosHighErrorRate",
        "PromethiosTrustScoreDrop",
        "PromethiosScorerDown",
        "PromethiosMetricsWriterDown",
    } <= names
    for r in rules:
        assert _used(r["expr"]) <= _exposed(), r["alert"]
        assert r["labels"]["severity"] and r["annotations"]["summary"]


def test_service_monitor_scrapes_serve_and_ray_metrics() -> None:
    docs = list(yaml.safe_load_all((MONITORING / "servicemonitor.yaml").read_text()))
    svc = next(d for d in docs if d["kind"] == "Service")
    mon = next(d for d in docs if d["kind"] == "ServiceMonitor")
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert ports == {"serve": 8002, "metrics": 8080}
    assert set(mon["spec"]["selector"]["matchLabels"].items()) <= set(
        svc["metadata"]["labels"].items()
    )
    assert {e["port"] for e in mon["spec"]["endpoints"]} == {"serve", "metrics"}
    assert all(e["path"] == "/metrics" for e in mon["spec"]["endpoints"])
    kustom = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    listed = set(kustom["resources"]) | {
        f for g in kustom["configMapGenerator"] for f in g["files"]
    }
    assert listed == {p.name for p in MONITORING.iterdir()} - {"kustomization.yaml"}
