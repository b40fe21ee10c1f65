"""The application builder that the Serve configs name: `serve_app.app:build_app`."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from ray.serve import Application

from serve_app.api.deps import AppInfo
from serve_app.governance.policy import DEFAULT_POLICY_FILE, PolicySet
from serve_app.settings import Settings, get_settings


class EngineConfig(BaseModel):
    """vLLM engine options passed to each LLM replica."""

    model_config = ConfigDict(extra="allow")
    max_model_len: int | None = None
    dtype: str = "auto"
    max_num_seqs: int = 64
    gpu_memory_utilization: float = 0.9


class AppConfig(BaseModel):
    """The `args` of the Serve config's application."""

    model_config = ConfigDict(extra="forbid")
    model_path: str | None = None
    database_url: str | None = None
    policy_file: str | None = None
    engine: EngineConfig = Field(default_factory=EngineConfig)
    writer_flush_interval_s: float = 0.05
    llm_max_replicas: int = 1
    bench_routes: bool = False


def describe_model(model_path: Path, settings: Settings) -> AppInfo:
    """What /model/info reports, read from the model directory and the shipped corpus:
    its name (unless configured), its parameter count, and whether it was built on the
    governance corpus shipped now (its build_info.json names the corpus hash)."""
    from serve_app.model.corpus import corpus_sha256, dataset_count

    base, params, trained = model_path.name, None, False
    name = model_path.name
    build_info = model_path / "build_info.json"
    if build_info.exists():
        meta = json.loads(build_info.read_text())
        params = meta.get("param_count")
        name = meta.get("model_name") or name
        trained = bool(meta.get("dataset_count")) and meta.get("corpus_sha256") == corpus_sha256()
        if params:
            base = f"{model_path.name} (Llama, {params:,} parameters, built by Promethios)"
    if params is None:
        params = _param_count_from_config(model_path)
    return AppInfo(
        model_name=settings.model_name or name,
        model_version=settings.model_version,
        base_model=base,
        dataset_count=dataset_count(),
        dataset_version=settings.dataset_version,
        governance_trained_model=trained,
        param_count=params,
    )


def _param_count_from_config(model_path: Path) -> int | None:
    """A decoder's parameter count from its config.json (embeddings, attention, MLP, norms,
    untied head), for a model directory without our build_info; None when unreadable."""
    try:
        c = json.loads((model_path / "config.json").read_text())
        h, layers, vocab = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
        inter = c.get("intermediate_size", 4 * h)
        kv = h * c.get("num_key_value_heads", c["num_attention_heads"]) // c["num_attention_heads"]
        per_layer = h * h * 2 + h * kv * 2 + 3 * h * inter + 2 * h
        head = 0 if c.get("tie_word_embeddings") else vocab * h
        return int(vocab * h + layers * per_layer + h + head)
    except (OSError, KeyError, ValueError, TypeError, ZeroDivisionError):
        return None


def resolve_model_path(cfg: AppConfig, settings: Settings) -> Path:
    """The configured model directory, or the embedded default (built on first use)."""
    if cfg.model_path:
        path = Path(cfg.model_path)
        if not path.is_dir():
            raise FileNotFoundError(f"Model path not found: {path}")
        return path
    from serve_app.model.build import ensure_default_model

    return ensure_default_model(settings)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Bind the graph: Ingress -> (LLMServer, GovernanceScorer, MetricsWriter, RateLimiter,
    UpstreamLLM for wrapped agents)."""
    from deployments.governance import GovernanceScorerDeployment
    from deployments.ingress import Ingress
    from deployments.llm import LLMServer
    from deployments.metrics_writer import MetricsWriter
    from deployments.rate_limiter import RateLimiterDeployment
    from deployments.upstream import UpstreamLLM
    from serve_app.store import Store
    from serve_app.upstream_registry import registry

    cfg = AppConfig.model_validate(args or {})
    settings = get_settings()
    model_path = resolve_model_path(cfg, settings)
    database_url = cfg.database_url or settings.resolved_database_url
    policy_file = cfg.policy_file or str(DEFAULT_POLICY_FILE)
    PolicySet.load(policy_file)  # a bad policy file stops start-up here, naming the field
    registry().check()  # so does a bad upstreams file (PROMETHIOS_UPSTREAMS_FILE)
    store = Store(database_url)
    store.migrate()
    store.close()
    info = describe_model(model_path, settings)
    info.llm_max_replicas = cfg.llm_max_replicas
    llm = LLMServer.bind(str(model_path), cfg.engine.model_dump(exclude_none=True))
    scorer = GovernanceScorerDeployment.bind(policy_file)
    writer = MetricsWriter.bind(database_url, cfg.writer_flush_interval_s)
    options = {
        "database_url": database_url,
        "policy_file": policy_file,
        "info": asdict(info),
        "bench_routes": cfg.bench_routes,
    }
    return Ingress.bind(
        llm, scorer, writer, options, RateLimiterDeployment.bind(database_url), UpstreamLLM.bind()
    )
