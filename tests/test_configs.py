"""The Serve configs are valid Serve deploy configs whose args our builder accepts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from serve_app.app import AppConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["local.yaml", "gpu.yaml"])
def test_serve_config_validates(name: str) -> None:
    raw = yaml.safe_load((CONFIGS / name).read_text())
    schema = (
        ServeDeploySchema.model_validate(raw)
        if hasattr(ServeDeploySchema, "model_validate")
        else ServeDeploySchema.parse_obj(raw)
    )
    (app,) = schema.applications
    assert app.import_path == "serve_app.app:build_app"
    AppConfig.model_validate(app.args)
    names = {d.name for d in app.deployments}
    assert names == {
        "Ingress",
        "LLMServer",
        "GovernanceScorer",
        "UpstreamLLM",
        "MetricsWriter",
        "RateLimiter",
    }


def test_local_config_serves_on_the_seed_port() -> None:
    raw = yaml.safe_load((CONFIGS / "local.yaml").read_text())
    assert raw["http_options"] == {"host": "127.0.0.1", "port": 8002}


@pytest.mark.parametrize("name", ["local.yaml", "gpu.yaml"])
def test_stateless_deployments_autoscale_and_stateful_ones_stay_single(name: str) -> None:
    app = yaml.safe_load((CONFIGS / name).read_text())["applications"][0]
    deps = {d["name"]: d for d in app["deployments"]}
    for dep in ("Ingress", "LLMServer", "GovernanceScorer", "UpstreamLLM"):
        auto = deps[dep]["autoscaling_config"]
        assert 1 <= auto["min_replicas"] <= auto["max_replicas"]
        assert auto["target_ongoing_requests"] <= deps[dep]["max_ongoing_requests"]
        assert {"upscale_delay_s", "downscale_delay_s"} <= set(auto)
        assert "num_replicas" not in deps[dep]
    for dep in ("MetricsWriter", "RateLimiter"):
        assert deps[dep]["num_replicas"] == 1 and "autoscaling_config" not in deps[dep]


def test_the_upstreams_example_loads_as_the_registry_reads_it() -> None:
    from serve_app.upstream_registry import load

    ups = load(CONFIGS / "upstreams.example.yaml")
    assert ups["local-vllm"].models == ["tiny"] and ups["local-vllm"].api_key_env


def test_the_cluster_config_places_replicas_by_node_resources() -> None:
    """configs/cluster.yaml (make cluster): LLM replicas on the node that stands for the GPU
    node, the stateful writer and limiter on the head, ingress and scorer spread."""
    raw = yaml.safe_load((CONFIGS / "cluster.yaml").read_text())
    ServeDeploySchema.model_validate(raw)
    deps = {d["name"]: d for d in raw["applications"][0]["deployments"]}
    assert deps["LLMServer"]["ray_actor_options"]["resources"] == {"llm_node": 0.01}
    for name in ("MetricsWriter", "RateLimiter"):
        assert deps[name]["ray_actor_options"]["resources"] == {"head": 0.01}
        assert deps[name]["num_replicas"] == 1
    for name in ("Ingress", "GovernanceScorer"):
        assert deps[name]["max_replicas_per_node"] == 1
        assert deps[name]["autoscaling_config"]["min_replicas"] >= 2
    script = (CONFIGS.parent / "scripts" / "cluster.sh").read_text()
    # every resource the config asks for exists (the live check: tests/cluster/)
    assert """--resources '{"head": 1}'""" in script
    assert '"{\\"$1_node\\": 1}"' in script
    assert "node_up llm" in script and "node_up cpu" in script
