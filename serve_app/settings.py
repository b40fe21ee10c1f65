"""One settings object, read from the environment once. Nothing else reads os.environ."""

from __future__ import annotations

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
    model_name: str = Field(
        default="promethios-lambda-7b", validation_alias="PROMETHIOS_MODEL_NAME"
    )
    model_version: str = Field(default="1.0.0", validation_alias="PROMETHIOS_MODEL_VERSION")
    max_message_chars: int = Field(default=8000, validation_alias="PROMETHIOS_MAX_MESSAGE_CHARS")
    max_body_bytes: int = Field(default=65536, validation_alias="PROMETHIOS_MAX_BODY_BYTES")
    train_seconds: float = Field(default=150.0, validation_alias="PROMETHIOS_TRAIN_SECONDS")
    train_seed: int = Field(default=1234, validation_alias="PROMETHIOS_TRAIN_SEED")
    request_timeout_s: float = Field(default=60.0, validation_alias="PROMETHIOS_REQUEST_TIMEOUT_S")
    key_requests_per_minute: int | None = Field(
        default=600, validation_alias="PROMETHIOS_KEY_REQUESTS_PER_MINUTE"
    )
    key_tokens_per_minute: int | None = Field(
        default=200_000, validation_alias="PROMETHIOS_KEY_TOKENS_PER_MINUTE"
    )
    stream_check_every: int = Field(default=24, validation_alias="PROMETHIOS_STREAM_CHECK_CHARS")
    stream_hold_back: int = Field(default=32, validation_alias="PROMETHIOS_STREAM_HOLD_BACK_CHARS")
    api_url: str = Field(default="http://127.0.0.1:8002", validation_alias="PROMETHIOS_API_URL")
    api_key: str | None = Field(default=None, validation_alias="PROMETHIOS_API_KEY")
    debug: bool = Field(
        default=False, validation_alias=AliasChoices("PROMETHIOS_DEBUG", "NATIVE_LLM_DEBUG")
    )
    log_dir: Path | None = Field(default=None, validation_alias="PROMETHIOS_LOG_DIR")

    @property
    def resolved_database_url(self) -> str:
        """DATABASE_URL when set, else a SQLite file under var/."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.var_dir / 'promethios.db'}"

    @property
    def default_model_dir(self) -> Path:
        """Where the embedded default model is built and cached."""
        return self.var_dir / "models" / "promethios-native-tiny"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
