"""Generate k8s/rayservice.yaml from configs/gpu.yaml, so the two cannot drift.

python -m serve_app.kuberay            # rewrite k8s/rayservice.yaml
python -m serve_app.kuberay --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
GPU_CONFIG = REPO / "configs" / "gpu.yaml"
RAYSERVICE = REPO / "k8s" / "rayservice.yaml"
# The cluster image built from the repo's Dockerfile (README, "Container image"): the one
# place its name and tag are set. RAY_VERSION is the Ray of the Dockerfile's base image.
IMAGE = "promethios/native:0.1.0"
RAY_VERSION = "2.60.0"
# The metrics writer's spool (records accepted, not yet in the database): a ReadWriteMany
# volume on every pod, so a writer that moves to another pod adopts what the dead one left
# (segments are adopted by their owner's file lock, which works across pods on a shared
# volume; PIDs would not). The claim is the operator's (README, "Kubernetes").
SPOOL_DIR = "/var/spool/promethios"
SPOOL_CLAIM = "promethios-spool"
# The governance classifier's artifacts (the files `make governance-weights` builds, with
# their manifest.json): a ReadOnlyMany volume on every pod, so that a rebuilt set is rolled
# out by filling the claim rather than rebuilding the image; the scorer checks every file
# against the manifest at start-up (serve_app/governance/artifacts.py).
ARTIFACTS_DIR = "/var/lib/promethios/governance-artifacts"
ARTIFACTS_CLAIM = "promethios-governance-artifacts"
HEADER = (
    "# Generated from configs/gpu.yaml by `python -m serve_app.kuberay`; do not edit by hand.\n"
)


def _container(name: str, resources: dict[str, Any], ports: list[dict] | None = None) -> dict:
    c: dict[str, Any] = {
        "name": name,
        "image": IMAGE,
        "env": [
            {
                "name": "DATABASE_URL",
                "valueFrom": {"secretKeyRef": {"name": "promethios-db", "key": "url"}},
            },
            {"name": "PROMETHIOS_NATIVE_MODEL_PATH", "value": "/models/lambda-7b"},
            {"name": "PROMETHIOS_SPOOL_DIR", "value": SPOOL_DIR},
            # The audit chain's keys (every pod signs and verifies with the same ones) and
            # the signed checkpoints, on the writer's volume, not in the database.
            {
                "name": "PROMETHIOS_AUDIT_KEYS",
                "valueFrom": {"secretKeyRef": {"name": "promethios-audit", "key": "keys"}},
            },
            {"name": "PROMETHIOS_AUDIT_DIR", "value": f"{SPOOL_DIR}/audit"},
            {"name": "PROMETHIOS_GOVERNANCE_ARTIFACTS", "value": ARTIFACTS_DIR},
            # Serve's proxies answer a lost replica's requests in the API's error shape.
            {
                "name": "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH",
                "value": "serve_app.proxy_guard:middlewares",
            },
            # Calls between deployments, and the proxies' to the ingress, over gRPC
            # instead of Ray actor calls (docs/benchmarks.md, `make bench-gateway`).
            {"name": "RAY_SERVE_USE_GRPC_BY_DEFAULT", "value": "1"},
        ],
        "resources": resources,
        "volumeMounts": [
            {"name": "models", "mountPath": "/models/lambda-7b", "readOnly": True},
            {"name": "spool", "mountPath": SPOOL_DIR},
            {"name": "governance-artifacts", "mountPath": ARTIFACTS_DIR, "readOnly": True},
        ],
    }
    if ports:
        c["ports"] = ports
    return c


def _pod(container: dict) -> dict:
    return {
        "spec": {
            "containers": [container],
            "volumes": [
                {"name": "models", "persistentVolumeClaim": {"claimName": "lambda-7b-model"}},
                {"name": "spool", "persistentVolumeClaim": {"claimName": SPOOL_CLAIM}},
                {
                    "name": "governance-artifacts",
                    "persistentVolumeClaim": {"claimName": ARTIFACTS_CLAIM, "readOnly": True},
                },
            ],
        }
    }


def rayservice(serve_config: dict[str, Any]) -> dict[str, Any]:
    """A KubeRay RayService whose serveConfigV2 is `serve_config`."""
    head_ports = [
        {"containerPort": 6379, "name": "gcs-server"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
        {"containerPort": 8002, "name": "serve"},
        {"containerPort": 8080, "name": "metrics"},
    ]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "promethios-native", "labels": {"app": "promethios-native"}},
        "spec": {
            "serveConfigV2": yaml.safe_dump(serve_config, sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": RAY_VERSION,
                "enableInTreeAutoscaling": True,
                "autoscalerOptions": {"upscalingMode": "Default", "idleTimeoutSeconds": 300},
                "headGroupSpec": {
                    "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                    "template": _pod(
                        _container(
                            "ray-head",
                            {
                                "requests": {"cpu": "2", "memory": "8Gi"},
                                "limits": {"cpu": "4", "memory": "8Gi"},
                            },
                            head_ports,
                        )
                    ),
                },
                "workerGroupSpecs": [
                    {
                        "groupName": "cpu-workers",
                        "replicas": 1,
                        "minReplicas": 1,
                        "maxReplicas": 8,
                        "rayStartParams": {},
                        "template": _pod(
                            _container(
                                "ray-worker",
                                {
                                    "requests": {"cpu": "4", "memory": "8Gi"},
                                    "limits": {"cpu": "4", "memory": "8Gi"},
                                },
                            )
                        ),
                    },
                    {
                        "groupName": "gpu-workers",
                        "replicas": 1,
                        "minReplicas": 1,
                        "maxReplicas": 4,
                        "rayStartParams": {},
                        "template": _pod(
                            _container(
                                "ray-worker",
                                {
                                    "requests": {
                                        "cpu": "8",
                                        "memory": "48Gi",
                                        "nvidia.com/gpu": "1",
                                    },
                                    "limits": {"cpu": "8", "memory": "48Gi", "nvidia.com/gpu": "1"},
                                },
                            )
                        ),
                    },
                ],
            },
        },
    }


def render() -> str:
    serve_config = yaml.safe_load(GPU_CONFIG.read_text())
    return HEADER + yaml.safe_dump(rayservice(serve_config), sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the file is out of date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not RAYSERVICE.exists() or RAYSERVICE.read_text() != text:
            print(f"{RAYSERVICE} is out of date: run python -m serve_app.kuberay", file=sys.stderr)
            return 1
        return 0
    RAYSERVICE.parent.mkdir(parents=True, exist_ok=True)
    RAYSERVICE.write_text(text)
    print(f"wrote {RAYSERVICE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
