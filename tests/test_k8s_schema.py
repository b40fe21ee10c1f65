"""Every manifest in k8s/ validates against the real schema of its kind (k8s/schemas/:
the RayService CRD of the KubeRay release we target, the prometheus-operator CRDs,
SchemaStore's kustomization schema), and the check bites: a misspelled field, a wrong
type, a missing required field each fail. tests/support/k8s_schema.py says what is
enforced; scripts/k8s_schemas.py regenerates the schemas.

(serveConfigV2 is configs/gpu.yaml, tests/k8s/test_rayservice.py; configs/gpu.yaml is a
valid ServeDeploySchema, tests/test_configs.py.)
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator

from tests.support.k8s_schema import (
    JSON_SCHEMA_FILES,
    KINDS,
    SCHEMAS,
    all_patterns,
    compiles,
    errors,
    json_schema,
    python_pattern,
)

K8S = Path(__file__).resolve().parents[1] / "k8s"
MANIFESTS = sorted(p for p in K8S.rglob("*.yaml") if SCHEMAS not in p.parents)
DOCS = [
    pytest.param(path, i, doc, id=f"{path.relative_to(K8S)}#{i}:{doc.get('kind')}")
    for path in MANIFESTS
    for i, doc in enumerate(yaml.safe_load_all(path.read_text()))
    if doc is not None
]


def _doc(name: str, kind: str) -> dict[str, Any]:
    docs = yaml.safe_load_all((K8S / name).read_text())
    return copy.deepcopy(next(d for d in docs if d["kind"] == kind))


def rayservice() -> dict[str, Any]:
    return _doc("rayservice.yaml", "RayService")


def cluster(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["rayClusterConfig"]


def head_container(doc: dict[str, Any]) -> dict[str, Any]:
    return cluster(doc)["headGroupSpec"]["template"]["spec"]["containers"][0]


def test_the_manifests_are_the_ones_we_expect() -> None:
    kinds = sorted(
        (p.relative_to(K8S).as_posix(), doc["kind"]) for p, _, doc in (d.values for d in DOCS)
    )
    assert kinds == [
        ("monitoring/kustomization.yaml", "Kustomization"),
        ("monitoring/prometheusrule.yaml", "PrometheusRule"),
        ("monitoring/servicemonitor.yaml", "Service"),
        ("monitoring/servicemonitor.yaml", "ServiceMonitor"),
        ("rayservice.yaml", "RayService"),
    ]


@pytest.mark.parametrize(("path", "index", "doc"), DOCS)
def test_every_manifest_validates_against_its_schema(path: Path, index: int, doc: Any) -> None:
    assert errors(doc) == []


# --- the check bites --------------------------------------------------------------------


def test_a_misspelled_field_fails() -> None:
    doc = rayservice()
    head = cluster(doc)["headGroupSpec"]
    head["rayStartParam"] = head.pop("rayStartParams")
    assert errors(doc) == [
        "$.spec.rayClusterConfig.headGroupSpec: Additional properties are not allowed "
        "('rayStartParam' was unexpected)"
    ]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["spec"].update(serveConfig=d["spec"].pop("serveConfigV2")),
        lambda d: head_container(d).update(volumeMount=head_container(d).pop("volumeMounts")),
        lambda d: head_container(d)["volumeMounts"][0].update(readonly=True),
        lambda d: head_container(d)["env"][0]["valueFrom"].update(secretRef={"name": "x"}),
        lambda d: cluster(d)["workerGroupSpecs"][0]["template"]["spec"].update(volume=[]),
        lambda d: cluster(d)["autoscalerOptions"].update(idleTimeout=300),
    ],
    ids=["spec", "container", "volumeMount", "valueFrom", "podSpec", "autoscalerOptions"],
)
def test_misspelled_fields_fail_at_every_depth(mutate: Any) -> None:
    doc = rayservice()
    mutate(doc)
    (error,) = errors(doc)
    assert "Additional properties are not allowed" in error


def test_a_wrong_type_fails() -> None:
    doc = rayservice()
    cluster(doc)["workerGroupSpecs"][0]["replicas"] = "two"
    assert errors(doc) == [
        "$.spec.rayClusterConfig.workerGroupSpecs[0].replicas: 'two' is not of type 'integer'"
    ]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: cluster(d).pop("headGroupSpec"), "'headGroupSpec' is a required property"),
        (
            lambda d: cluster(d)["workerGroupSpecs"][1].pop("groupName"),
            "'groupName' is a required property",
        ),
        (lambda d: head_container(d).pop("name"), "'name' is a required property"),
        (
            lambda d: head_container(d)["volumeMounts"][1].pop("mountPath"),
            "'mountPath' is a required property",
        ),
        (lambda d: d["metadata"].pop("name"), "'name' is a required property"),
        (lambda d: d.pop("metadata"), "'metadata' is a required property"),
    ],
    ids=["headGroupSpec", "groupName", "container.name", "mountPath", "metadata.name", "metadata"],
)
def test_a_missing_required_field_fails(mutate: Any, message: str) -> None:
    doc = rayservice()
    mutate(doc)
    (error,) = errors(doc)
    assert error.endswith(message)


def test_quantities_ports_and_names_are_checked() -> None:
    doc = rayservice()
    head_container(doc)["resources"]["limits"]["cpu"] = "four cores"
    head_container(doc)["ports"].append({"containerPort": 2**31, "name": "too-big"})
    head_container(doc)["ports"].append({"containerPort": 8002, "name": "serve-again"})
    doc["metadata"]["name"] = "Promethios_Native"
    doc["metadata"]["labels"]["app"] = "promethios native"
    found = " | ".join(errors(doc))
    assert "'four cores' does not match" in found
    assert "2147483648 is not a 'int32'" in found
    assert "have the same keys ['containerPort', 'protocol'] ([8002, \"TCP\"])" in found
    assert "'Promethios_Native' does not match" in found
    assert "'promethios native' does not match" in found
    assert len(errors(doc)) == 5


def test_an_unknown_kind_or_version_has_no_schema_and_fails() -> None:
    doc = rayservice()
    doc["apiVersion"] = "ray.io/v1alpha1"
    assert errors(doc) == [f"$: no schema for ray.io/v1alpha1 RayService in {SCHEMAS}"]
    assert errors({"kind": "RayService"}) == ["$: apiVersion missing"]
    assert errors(["not", "a", "mapping"]) == ["$: a manifest is a mapping, not list"]


def test_service_ports_take_a_name_or_a_number_as_target() -> None:
    doc = _doc("monitoring/servicemonitor.yaml", "Service")
    doc["spec"]["ports"][0]["targetPort"] = "serve"
    assert errors(doc) == []
    doc["spec"]["ports"][0]["targetPort"] = 1.5
    doc["spec"]["ports"][1]["prot"] = 8080
    found = errors(doc)
    assert len(found) == 2 and "$.spec.ports[0].targetPort: 1.5 is not valid" in found[0]
    assert "'prot' was unexpected" in found[1]


def test_service_monitor_endpoints_are_checked() -> None:
    doc = _doc("monitoring/servicemonitor.yaml", "ServiceMonitor")
    doc["spec"]["endpoints"][0]["intervall"] = "15s"
    doc["spec"]["endpoints"][1]["interval"] = "15 seconds"
    found = errors(doc)
    assert len(found) == 2
    assert "$.spec.endpoints[0]: Additional properties" in found[0]
    assert "$.spec.endpoints[1].interval: '15 seconds' does not match" in found[1]


def test_prometheus_rules_are_checked() -> None:
    doc = _doc("monitoring/prometheusrule.yaml", "PrometheusRule")
    rule = doc["spec"]["groups"][0]["rules"][0]
    rule["for"] = "10 minutes"
    rule.pop("expr")
    doc["spec"]["groups"][1]["partial_response_strategy"] = "ABORT"  # RE2's (?i), case-blind
    found = errors(doc)
    assert len(found) == 2
    assert "rules[0].for: '10 minutes' does not match" in found[0]
    assert found[1].endswith("rules[0]: 'expr' is a required property")


def test_the_kustomization_is_checked() -> None:
    doc = _doc("monitoring/kustomization.yaml", "Kustomization")
    doc["resource"] = doc.pop("resources")
    doc["configMapGenerator"][0]["options"]["disableNameSuffixHash"] = "yes"
    found = errors(doc)
    assert len(found) == 2
    assert "'resource' was unexpected" in " ".join(found)
    assert "'yes' is not of type 'boolean'" in " ".join(found)


# --- how the Kubernetes extensions are read ----------------------------------------------


def test_without_the_conversion_a_typo_would_pass() -> None:
    """The CRD's schema as it is, read as plain JSON Schema, lets unknown fields through:
    the conversion is what makes the check real."""
    raw = json.loads((SCHEMAS / KINDS[("ray.io/v1", "RayService")]).read_text())
    doc = rayservice()
    cluster(doc)["headGroupSpec"]["rayStartParam"] = {}
    assert Draft7Validator(raw).is_valid(doc)
    assert errors(doc)


def _valid(schema: dict[str, Any], instance: Any) -> bool:
    return Draft7Validator(json_schema(schema)).is_valid(instance)


def test_preserve_unknown_fields_allows_other_fields_and_nothing_else_does() -> None:
    closed = {"type": "object", "properties": {"a": {"type": "string"}}}
    opened = {**closed, "x-kubernetes-preserve-unknown-fields": True}
    a_map = {"type": "object", "additionalProperties": {"type": "string"}}
    assert _valid(closed, {"a": "x"}) and not _valid(closed, {"a": "x", "b": 1})
    assert _valid(opened, {"a": "x", "b": 1}) and not _valid(opened, {"a": 1})
    assert _valid(a_map, {"any": "x"}) and not _valid(a_map, {"any": 1})


def test_int_or_string_takes_either_and_nothing_else() -> None:
    schema = {"x-kubernetes-int-or-string": True, "pattern": "^[0-9]+%?$"}
    assert _valid(schema, 3) and _valid(schema, "30%")
    assert not _valid(schema, "thirty") and not _valid(schema, 1.5)
    assert not _valid(schema, None) and not _valid(schema, [1])


def test_embedded_resources_need_api_version_and_kind_and_nullable_takes_null() -> None:
    embedded = {"type": "object", "x-kubernetes-embedded-resource": True, "properties": {}}
    assert _valid(embedded, {"apiVersion": "v1", "kind": "Pod", "metadata": {}})
    assert not _valid(embedded, {"kind": "Pod"})
    nullable = {"type": "string", "nullable": True}
    assert _valid(nullable, None) and not _valid({"type": "string"}, None)


def test_list_types_set_and_map_refuse_duplicates() -> None:
    from tests.support.k8s_schema import FORMATS, K8sValidator

    def valid(schema: dict[str, Any], instance: Any) -> bool:
        return K8sValidator(json_schema(schema), format_checker=FORMATS).is_valid(instance)

    a_set = {"type": "array", "items": {"type": "string"}, "x-kubernetes-list-type": "set"}
    assert valid(a_set, ["a", "b"]) and not valid(a_set, ["a", "a"])
    a_map = {
        "type": "array",
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["port", "protocol"],
        "items": {
            "type": "object",
            "properties": {"port": {"type": "integer"}, "protocol": {"default": "TCP"}},
        },
    }
    assert valid(a_map, [{"port": 1}, {"port": 1, "protocol": "UDP"}])
    assert not valid(a_map, [{"port": 1}, {"port": 1, "protocol": "TCP"}])


def test_every_schema_pattern_compiles_in_python() -> None:
    """jsonschema reads `pattern` with Python's re; an RE2-only pattern would raise only
    when a manifest sets that field."""
    for name in set(KINDS.values()):
        raw = json.loads((SCHEMAS / name).read_text())
        patterns = list(all_patterns(raw if name in JSON_SCHEMA_FILES else json_schema(raw)))
        assert all(compiles(p) for p in patterns), name
    assert python_pattern("^(?i)(abort|warn)?$") == "(?i)^(abort|warn)?$"


def test_the_schemas_are_the_pinned_sources_with_their_licence() -> None:
    sources = json.loads((SCHEMAS / "sources.json").read_text())
    assert {s["file"] for s in sources} == set(KINDS.values())
    assert {s["file"] for s in sources} | {"sources.json"} == {
        p.name for p in SCHEMAS.glob("*.json")
    }
    pins = {s["repository"]: s["ref"] for s in sources}
    assert pins["https://github.com/ray-project/kuberay"] == "v1.7.0"
    assert pins["https://github.com/prometheus-operator/prometheus-operator"] == "v0.93.0"
    for s in sources:
        assert s["licence"] == "Apache-2.0" and len(s["commit"]) == 40
    assert "Apache License" in (SCHEMAS / "LICENSE").read_text()
    readme = (SCHEMAS / "README.md").read_text()
    assert "scripts/k8s_schemas.py" in readme
    for s in sources:
        assert s["commit"] in readme, s["file"]


# --- what the schemas cannot check: mounts name declared volumes -------------------------


def test_every_ray_container_mounts_declared_volumes_and_every_volume_is_mounted() -> None:
    doc = rayservice()
    groups = [cluster(doc)["headGroupSpec"], *cluster(doc)["workerGroupSpecs"]]
    for group in groups:
        spec = group["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        for container in spec["containers"]:
            mounted = {m["name"] for m in container["volumeMounts"]}
            assert mounted == set(volumes), (group.get("groupName", "head"), container["name"])
        claims = {v["persistentVolumeClaim"]["claimName"] for v in volumes.values()}
        assert {"promethios-spool", "promethios-governance-artifacts"} <= claims
