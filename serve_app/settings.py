"""One settings object, read from the environment once. Nothing else reads os.environ."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Environment configuration (see the README's configuration table)."""

    model_config = SettingsConfigDict(env_file=None, extra="ignore", populate_by_name=True)

    # The seed's variables.
    model_path: str | None = Field(
        default=None, validation_alias=AliasChoices("PROMETHIOS_NATIVE_MODEL_PATH")
    )
    native_llm_enabled: bool = Field(default=True, validation_alias="NATIVE_LLM_ENABLED")
    dataset_version: str = Field(default="5k-v1.0", validation_alias="NATIVE_LLM_DATASET_VERSION")
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")

    # Ours.
    var_dir: Path = Field(default=REPO_ROOT / "var", validation_alias="PROMETHIOS_VAR_DIR")
    # The governance classifier's trained files and manifest (built by training/); None:
    # the ones shipped in the package (serve_app/governance/data/artifacts/).
    governance_artifacts: Path | None = Field(
        default=None, validation_alias="PROMETHIOS_GOVERNANCE_ARTIFACTS"
    )
    # The cascade's shortcuts in front of the governance classifier (the lexical screen and
    # the early exit): ~40 % less scoring time, but on public sources the build never saw
    # they let through ~1.5 % of the harmful texts the classifier flags (README): off.
    governance_shortcuts: bool = Field(
        default=False, validation_alias="PROMETHIOS_GOVERNANCE_SHORTCUTS"
    )
    # The name answers give the served model; None: the model directory's own name (the
    # embedded default is promethios-native-tiny, not a 7B model).
    model_name: str | None = Field(default=None, validation_alias="PROMETHIOS_MODEL_NAME")
    model_version: str = Field(default="1.0.0", validation_alias="PROMETHIOS_MODEL_VERSION")
    max_message_chars: int = Field(default=8000, validation_alias="PROMETHIOS_MAX_MESSAGE_CHARS")
    max_body_bytes: int = Field(default=65536, validation_alias="PROMETHIOS_MAX_BODY_BYTES")
    train_seconds: float = Field(default=150.0, validation_alias="PROMETHIOS_TRAIN_SECONDS")
    train_seed: int = Field(default=1234, validation_alias="PROMETHIOS_TRAIN_SEED")
    request_timeout_s: float = Field(default=60.0, validation_alias="PROMETHIOS_REQUEST_TIMEOUT_S")
    # How long admission waits for the shared rate limiter before 503: long enough to span
    # its single replica's replacement in a rolling update (5 s cut requests on a busy node).
    limiter_timeout_s: float = Field(default=15.0, validation_alias="PROMETHIOS_LIMITER_TIMEOUT_S")
    key_requests_per_minute: int | None = Field(
        default=600, validation_alias="PROMETHIOS_KEY_REQUESTS_PER_MINUTE"
    )
    key_tokens_per_minute: int | None = Field(
        default=200_000, validation_alias="PROMETHIOS_KEY_TOKENS_PER_MINUTE"
    )
    # Per user, over all of the user's keys: more keys do not buy more quota.
    user_requests_per_minute: int | None = Field(
        default=1200, validation_alias="PROMETHIOS_USER_REQUESTS_PER_MINUTE"
    )
    user_tokens_per_minute: int | None = Field(
        default=400_000, validation_alias="PROMETHIOS_USER_TOKENS_PER_MINUTE"
    )
    # How long an ingress replica trusts a key it looked up: a revoked key stops working
    # on every replica within this time.
    key_cache_s: float = Field(default=1.0, ge=0, le=60, validation_alias="PROMETHIOS_KEY_CACHE_S")
    # The audit chain's keys (`id:secret,...`; the current one PROMETHIOS_AUDIT_KEY_ID or the
    # last listed). Unset: a key file under the audit directory, made on first use.
    audit_keys: str | None = Field(default=None, validation_alias="PROMETHIOS_AUDIT_KEYS")
    audit_key_id: str | None = Field(default=None, validation_alias="PROMETHIOS_AUDIT_KEY_ID")
    # Where the audit key file and the signed checkpoints live (var/audit/ by default):
    # somewhere the database's users cannot write.
    audit_dir: Path | None = Field(default=None, validation_alias="PROMETHIOS_AUDIT_DIR")
    # The operator's admin key: required by the bench-only routes (off without it).
    admin_key: str | None = Field(default=None, validation_alias="PROMETHIOS_ADMIN_KEY")
    stream_check_every: int = Field(default=24, validation_alias="PROMETHIOS_STREAM_CHECK_CHARS")
    stream_hold_back: int = Field(default=32, validation_alias="PROMETHIOS_STREAM_HOLD_BACK_CHARS")
    api_url: str = Field(default="http://127.0.0.1:8002", validation_alias="PROMETHIOS_API_URL")
    api_key: str | None = Field(default=None, validation_alias="PROMETHIOS_API_KEY")
    debug: bool = Field(
        default=False, validation_alias=AliasChoices("PROMETHIOS_DEBUG", "NATIVE_LLM_DEBUG")
    )
    log_dir: Path | None = Field(default=None, validation_alias="PROMETHIOS_LOG_DIR")
    # Upstreams belong to the operator: a YAML file of name -> base URL, key variable,
    # models, timeout (serve_app/upstream_registry.py); wrapped agents name one of them.
    upstreams_file: Path | None = Field(default=None, validation_alias="PROMETHIOS_UPSTREAMS_FILE")
    # Ad-hoc URLs that tenants name for their wrapped agents: off. When on, public addresses
    # only (serve_app/netguard.py), https unless the second switch allows http, never a key.
    tenant_upstream_urls: bool = Field(
        default=False, validation_alias="PROMETHIOS_TENANT_UPSTREAM_URLS"
    )
    tenant_upstream_http: bool = Field(
        default=False, validation_alias="PROMETHIOS_TENANT_UPSTREAM_HTTP"
    )
    redact_logs: bool = Field(default=True, validation_alias="PROMETHIOS_REDACT_LOGS")
    # Where the metrics writer spools accepted records until they are in the database.
    spool_dir: Path | None = Field(default=None, validation_alias="PROMETHIOS_SPOOL_DIR")
    # Records the writer holds for an unreachable database before it refuses new chats (503).
    spool_max_records: int = Field(
        default=100_000, ge=1, validation_alias="PROMETHIOS_SPOOL_MAX_RECORDS"
    )
    # Origins allowed to call the API from a browser (comma-separated); none by default.
    cors_allow_origins: str = Field(default="", validation_alias="PROMETHIOS_CORS_ALLOW_ORIGINS")

    @property
    def resolved_database_url(self) -> str:
        """DATABASE_URL when set, else a SQLite file under var/."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.var_dir / 'promethios.db'}"

    @property
    def cors_origins(self) -> list[str]:
        """The CORS allow-list as a list (empty: cross-origin browser calls are refused)."""
        return [o.strip() for o in self.cors_allow_origins.split(",") if o.strip()]

    @property
    def default_model_dir(self) -> Path:
        """Where the embedded default model is built and cached."""
        return self.var_dir / "models" / "promethios-native-tiny"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def upstream_api_key(name: str) -> str | None:
    """The value of an upstream's key variable (named by the operator's upstreams file)."""
    return os.environ.get(name)
