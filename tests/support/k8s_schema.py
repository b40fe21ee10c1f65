"""Validate Kubernetes manifests against the schemas in k8s/schemas/, as kubeconform does.

The CRD schemas there are OpenAPI v3 *structural* schemas with Kubernetes' extensions,
stored verbatim (scripts/k8s_schemas.py). `json_schema` turns one into a JSON Schema
(Draft 7) the way kubeconform's openapi2jsonschema does in its strict mode:

- an object that lists `properties` rejects any other field (additionalProperties: false)
  unless it says `x-kubernetes-preserve-unknown-fields` or gives additionalProperties
  itself (a map) — the API server prunes or, with strict field validation, refuses unknown
  fields, so a misspelled field must fail here;
- `x-kubernetes-int-or-string`: an integer or a string (a pattern applies to strings);
- `x-kubernetes-embedded-resource`: apiVersion and kind required;
- `nullable: true`: null is allowed too.

Beyond kubeconform: `x-kubernetes-list-type` set / map (no two items alike / with the same
`x-kubernetes-list-map-keys`, a missing key taking its schema default, as the API server
checks after defaulting) and the int32 / int64 formats (range). Top-level `metadata`
(which a CRD schema leaves as a bare object) is checked against ObjectMeta's fields with
apimachinery's rules for names and labels. Not checked: CEL rules
(`x-kubernetes-validations`; the RayService schema has three, on fields we do not set) and
admission webhooks' checks.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft7Validator, FormatChecker, ValidationError, validators

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "k8s" / "schemas"

# (apiVersion, kind) -> schema file in k8s/schemas/.
KINDS: dict[tuple[str, str], str] = {
    ("ray.io/v1", "RayService"): "rayservice-ray.io-v1.json",
    ("v1", "Service"): "service-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule-monitoring.coreos.com-v1.json",
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"): "kustomization.json",
}
# Files that are JSON Schemas already (SchemaStore's), used as they are.
JSON_SCHEMA_FILES = {"kustomization.json"}

# apimachinery's validation of names and labels (k8s.io/apimachinery/pkg/util/validation).
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
QUALIFIED_NAME = r"^(([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)/)?" + (
    r"([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"

OBJECT_META: dict[str, Any] = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "maxLength": 253, "pattern": DNS1123_SUBDOMAIN},
        "generateName": {"type": "string"},
        "namespace": {"type": "string", "maxLength": 63, "pattern": DNS1123_LABEL},
        "labels": {
            "type": "object",
            "propertyNames": {"maxLength": 316, "pattern": QUALIFIED_NAME},
            "additionalProperties": {"type": "string", "maxLength": 63, "pattern": LABEL_VALUE},
        },
        "annotations": {
            "type": "object",
            "propertyNames": {"pattern": QUALIFIED_NAME},
            "additionalProperties": {"type": "string"},
        },
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
        # Set by the server; allowed in a manifest, not checked.
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"]},
        "deletionTimestamp": {"type": ["string", "null"]},
        "deletionGracePeriodSeconds": {"type": "integer"},
        "selfLink": {"type": "string"},
        "managedFields": {"type": "array"},
    },
}

_INT_RANGES = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
FORMATS = FormatChecker(formats=())
for _name, (_lo, _hi) in _INT_RANGES.items():
    FORMATS.checks(_name)(
        lambda v, lo=_lo, hi=_hi: not isinstance(v, int) or isinstance(v, bool) or lo <= v <= hi
    )


def _item_key(item: Any, keys: list[str], defaults: dict[str, Any]) -> str:
    if not isinstance(item, dict):
        return json.dumps(item, sort_keys=True)
    return json.dumps([item.get(k, defaults.get(k)) for k in keys], sort_keys=True)


def _list_type(
    validator: Any, list_type: str, instance: Any, schema: dict[str, Any]
) -> Iterator[ValidationError]:
    """x-kubernetes-list-type: `set` items are unique, `map` items unique by their keys."""
    if not validator.is_type(instance, "array") or list_type not in ("set", "map"):
        return
    keys: list[str] = schema.get("x-kubernetes-list-map-keys", []) if list_type == "map" else []
    props = schema.get("items", {}).get("properties", {})
    defaults = {k: props.get(k, {}).get("default") for k in keys}
    seen: dict[str, int] = {}
    for i, item in enumerate(instance):
        key = _item_key(item, keys, defaults) if keys else json.dumps(item, sort_keys=True)
        if key in seen:
            what = f"keys {keys}" if keys else "value"
            yield ValidationError(
                f"items {seen[key]} and {i} have the same {what} ({key}) in a list of type "
                f"{list_type}"
            )
        seen.setdefault(key, i)


K8sValidator = validators.extend(Draft7Validator, {"x-kubernetes-list-type": _list_type})


def python_pattern(pattern: str) -> str:
    """A Go (RE2) `pattern` as Python's re reads it: RE2 takes flags after `^`
    (`^(?i)(abort|warn)?$`, PrometheusRule), Python only at the start; same meaning."""
    return re.sub(r"^\^\(\?([a-zA-Z]+)\)", r"(?\1)^", pattern)


def json_schema(node: Any) -> Any:
    """A JSON Schema (Draft 7) for one node of a Kubernetes structural schema."""
    if isinstance(node, list):
        return [json_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {
        k: v for k, v in node.items() if k not in ("properties", "items", "additionalProperties")
    }
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = json_schema(out[key])
    if "not" in out:
        out["not"] = json_schema(out["not"])
    if "properties" in node:
        out["properties"] = {k: json_schema(v) for k, v in node["properties"].items()}
    if "items" in node:
        out["items"] = json_schema(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = json_schema(node["additionalProperties"])
    elif "additionalProperties" in node:
        out["additionalProperties"] = node["additionalProperties"]

    if isinstance(out.get("pattern"), str):
        out["pattern"] = python_pattern(out["pattern"])
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if node.get("x-kubernetes-embedded-resource"):
        out["required"] = sorted(set(out.get("required", [])) | {"apiVersion", "kind"})
        props = out.setdefault("properties", {})
        props.setdefault("apiVersion", {"type": "string"})
        props.setdefault("kind", {"type": "string"})
        props.setdefault("metadata", {"type": "object"})
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    if node.get("nullable") and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        out["type"] = [*types, "null"]
    return out


@cache
def _schema(api_version: str, kind: str) -> dict[str, Any]:
    name = KINDS[(api_version, kind)]
    raw = json.loads((SCHEMAS / name).read_text())
    if name in JSON_SCHEMA_FILES:
        return raw
    schema = json_schema(raw)
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"const": api_version}
    props["kind"] = {"const": kind}
    props["metadata"] = copy.deepcopy(OBJECT_META)
    schema["required"] = sorted(
        set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"}
    )
    schema["additionalProperties"] = False
    return schema


@cache
def _validator(api_version: str, kind: str) -> Any:
    schema = _schema(api_version, kind)
    cls = Draft7Validator if KINDS[(api_version, kind)] in JSON_SCHEMA_FILES else K8sValidator
    cls.check_schema(schema)
    return cls(schema, format_checker=FORMATS)


def errors(doc: Any) -> list[str]:
    """What is wrong with one manifest document, as `path: message` lines (empty: valid)."""
    if not isinstance(doc, dict):
        return [f"$: a manifest is a mapping, not {type(doc).__name__}"]
    missing = [k for k in ("apiVersion", "kind") if not isinstance(doc.get(k), str)]
    if missing:
        return [f"$: {' and '.join(missing)} missing"]
    if (doc["apiVersion"], doc["kind"]) not in KINDS:
        return [f"$: no schema for {doc['apiVersion']} {doc['kind']} in {SCHEMAS}"]
    found = _validator(doc["apiVersion"], doc["kind"]).iter_errors(doc)
    return sorted(f"{e.json_path}: {e.message}" for e in found)


def all_patterns(node: Any) -> Iterator[str]:
    """Every `pattern` in a schema (to check Python's re compiles them all)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "pattern" and isinstance(value, str):
                yield value
            else:
                yield from all_patterns(value)
    elif isinstance(node, list):
        for value in node:
            yield from all_patterns(value)


def compiles(pattern: str) -> bool:
    try:
        re.compile(pattern)
    except re.error:
        return False
    return True
