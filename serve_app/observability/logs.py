"""Structured JSON logs carrying one request id from the ingress to scorer, model and writer.

Ray Serve keeps the HTTP request's id (`X-Request-ID`, or one it makes) in the
request context of every deployment the request reaches through a handle; the
formatter reads it there. Outside Serve (tests, tools) the ingress middleware's
context variable holds it.

With a log directory configured (`PROMETHIOS_LOG_DIR`) the seed's files are
written there: `native_llm.log` (everything), `metrics_integration.log` (the
metrics writer, recording and metrics), `errors.log` (errors only).
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar(
    "promethios_request_id", default=""
)

ROOT = "promethios"
METRICS_LOGGERS = ("promethios.metrics", "promethios.recording", "promethios.writer")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def current_request_id() -> str:
    """The id of the request being served here; "" outside a request."""
    rid = request_id_var.get()
    if rid:
        return rid
    try:
        from ray.serve.context import _get_serve_request_context

        return _get_serve_request_context().request_id or ""
    except Exception:
        return ""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, component, request_id, message, extras."""

    def __init__(self, component: str = "") -> None:
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "component": self.component,
            "request_id": current_request_id(),
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _MetricsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith(METRICS_LOGGERS)


def configure_logging(debug: bool, log_dir: Path | None = None, component: str = "") -> None:
    """Route the `promethios.*` loggers to JSON on stderr (and the seed's files when asked).

    Idempotent per process: a second call replaces the handlers it installed.
    """
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if getattr(h, "_promethios", False)]:
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    formatter = JsonFormatter(component)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_dir / "native_llm.log", encoding="utf-8"))
        metrics = logging.FileHandler(log_dir / "metrics_integration.log", encoding="utf-8")
        metrics.addFilter(_MetricsOnly())
        errors = logging.FileHandler(log_dir / "errors.log", encoding="utf-8")
        errors.setLevel(logging.ERROR)
        handlers += [metrics, errors]
    for handler in handlers:
        handler.setFormatter(formatter)
        handler._promethios = True  # type: ignore[attr-defined]
        logger.addHandler(handler)


def configure_from_settings(component: str) -> None:
    """Logging as the settings say (PROMETHIOS_DEBUG, NATIVE_LLM_DEBUG, PROMETHIOS_LOG_DIR)."""
    from serve_app.settings import get_settings

    settings = get_settings()
    log_dir = getattr(settings, "log_dir", None)
    configure_logging(settings.debug, Path(log_dir) if log_dir else None, component)
