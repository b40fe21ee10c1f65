"""k8s/rayservice.yaml is generated from configs/gpu.yaml and has what KubeRay needs."""

from __future__ import annotations

import yaml

from serve_app.kuberay import ARTIFACTS_CLAIM, ARTIFACTS_DIR, GPU_CONFIG, RAYSERVICE, main, render


def test_rayservice_is_up_to_date() -> None:
    assert RAYSERVICE.read_text() == render(), "run python -m serve_app.kuberay"
    assert main(["--check"]) == 0


def test_serve_config_is_the_gpu_config() -> None:
    doc = yaml.safe_load(RAYSERVICE.read_text())
    assert yaml.safe_load(doc["spec"]["serveConfigV2"]) == yaml.safe_load(GPU_CONFIG.read_text())


def test_required_kuberay_fields() -> None:
    doc = yaml.safe_load(RAYSERVICE.read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayService"
    cluster = doc["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert head["image"] and head["volumeMounts"][0]["mountPath"] == "/models/lambda-7b"
    groups = {g["groupName"]: g for g in cluster["workerGroupSpecs"]}
    assert set(groups) == {"cpu-workers", "gpu-workers"}
    gpu = groups["gpu-workers"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "1"
    for g in groups.values():
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        env = {e["name"]: e for e in g["template"]["spec"]["containers"][0]["env"]}
        assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == "promethios-db"


def test_gpu_config_gives_llm_replicas_a_gpu() -> None:
    cfg = yaml.safe_load(GPU_CONFIG.read_text())
    deps = {d["name"]: d for d in cfg["applications"][0]["deployments"]}
    assert deps["LLMServer"]["ray_actor_options"]["num_gpus"] == 1
    assert cfg["applications"][0]["args"]["model_path"] == "/models/lambda-7b"
    for name in ("Ingress", "LLMServer", "GovernanceScorer"):
        auto = deps[name]["autoscaling_config"]
        assert 1 <= auto["min_replicas"] <= auto["max_replicas"]


def test_every_pod_mounts_the_writers_spool_volume_and_points_the_writer_at_it() -> None:
    """Wherever the metrics writer lands, its spool is on the persistent volume (and a
    writer that moves adopts what the dead one left there)."""
    doc = yaml.safe_load(RAYSERVICE.read_text())
    cluster = doc["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for group in pods:
        spec = group["template"]["spec"]
        container = spec["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mounts = {m["name"]: m for m in container["volumeMounts"]}
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert mounts["spool"]["mountPath"] == env["PROMETHIOS_SPOOL_DIR"]
        assert not mounts["spool"].get("readOnly")
        assert volumes["spool"]["persistentVolumeClaim"]["claimName"] == "promethios-spool"


def test_every_pod_signs_the_audit_chain_with_the_same_secret_keys() -> None:
    doc = yaml.safe_load(RAYSERVICE.read_text())
    cluster = doc["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]:
        env = {e["name"]: e for e in group["template"]["spec"]["containers"][0]["env"]}
        assert (
            env["PROMETHIOS_AUDIT_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "promethios-audit"
        )
        assert env["PROMETHIOS_AUDIT_DIR"]["value"].startswith(env["PROMETHIOS_SPOOL_DIR"]["value"])


def test_every_pod_mounts_the_governance_artifacts_read_only_and_the_scorer_reads_them() -> None:
    """The governance artifacts come from their own read-only volume on every pod (a
    rebuilt set is rolled out by filling the claim, not by rebuilding the image)."""
    doc = yaml.safe_load(RAYSERVICE.read_text())
    cluster = doc["spec"]["rayClusterConfig"]
    for group in [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        container = spec["containers"][0]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mount = {m["name"]: m for m in container["volumeMounts"]}["governance-artifacts"]
        volume = {v["name"]: v for v in spec["volumes"]}["governance-artifacts"]
        assert mount["mountPath"] == env["PROMETHIOS_GOVERNANCE_ARTIFACTS"] == ARTIFACTS_DIR
        assert mount["readOnly"] is True
        assert volume["persistentVolumeClaim"] == {"claimName": ARTIFACTS_CLAIM, "readOnly": True}
