"""Structured JSON logs carrying one request id from the ingress to scorer, model and writer.

Ray Serve keeps the HTTP request's id (`X-Request-ID`, or one it makes) in the
request context of every deployment the request reaches through a handle; the
formatter reads it there. Outside Serve (tests, tools) the ingress middleware's
context variable holds it.

With a log directory configured (`PROMETHIOS_LOG_DIR`) the seed's files are
written there: `native_llm.log` (everything), `metrics_integration.log` (the
metrics writer, recording and metrics), `errors.log` (errors only).

With redaction on (`PROMETHIOS_REDACT_LOGS`, the default) every line is passed
through `redact` before it is written: API keys, bearer tokens, and the PII and
secret spans that governance detects (e-mail, phone, payment card, SSN, IBAN,
provider keys, passwords) become `[LABEL]`, in the message, the extras and the
traceback alike. The same redaction is installed on the root logger's handlers,
so other libraries' lines in the same process are covered too.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar(
    "promethios_request_id", default=""
)

ROOT = "promethios"
METRICS_LOGGERS = ("promethios.metrics", "promethios.recording", "promethios.writer")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

# Governance detectors whose spans are personal data or secrets (IP addresses are
# left: operators need them, and every Ray line carries one).
REDACTED_DETECTORS = ("email", "phone", "payment_card", "us_ssn", "iban", "secret")
_OWN_KEYS = re.compile(r"pn_[A-Za-z0-9_-]{40}")
_NEEDS_DIGITS = {"phone", "payment_card", "us_ssn", "iban"}
_DIGIT_RUN = re.compile(r"\d[\d\s().-]{4,}\d")  # six or more digits with separators
# The status and latency that end every Serve access line ("... 200 150.3ms") form such a
# run, and libphonenumber takes ~0.3 ms to reject it: it is not looked at for that test.
_ACCESS_TAIL = re.compile(r"\s\d{3}\s+\d+(?:\.\d+)?ms\s*$")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}")


def redact(text: str, detectors: Iterable[str] = REDACTED_DETECTORS) -> str:
    """`text` with API keys, bearer tokens and detected PII/secret spans replaced by [LABEL]."""
    if not text:
        return text
    text = _OWN_KEYS.sub("[API_KEY]", text)
    text = _BEARER.sub(r"\1[API_KEY]", text)
    from serve_app.governance.detectors import DETECTORS

    spans: list[tuple[int, int, str]] = []
    digits = bool(_DIGIT_RUN.search(_ACCESS_TAIL.sub("", text)))
    for name in detectors:
        if name in _NEEDS_DIGITS and not digits:
            continue  # libphonenumber and friends are the costly part; most lines skip them
        for finding in DETECTORS[name](text):
            spans.append((finding.start, finding.end, finding.label))
    if not spans:
        return text
    out, pos = [], 0
    for start, end, label in sorted(spans):
        if start < pos:  # overlaps a span already replaced
            continue
        out.append(text[pos:start])
        out.append(f"[{label}]")
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_value(v) for v in value]
    return value


class RedactingFilter(logging.Filter):
    """Redacts a record's message and arguments in place, for handlers of other formats."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


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


# Fields this project fills with its own generated values (never user text): not scanned.
# The writer logs up to 1,000 message ids per batch; scanning them cost more than the
# batch's insert.
_OWN_FIELDS = frozenset(
    {"ts", "level", "logger", "component", "request_id", "request_ids", "message_id", "message_ids"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, component, request_id, message, extras."""

    def __init__(self, component: str = "", redact_pii: bool = True) -> None:
        super().__init__()
        self.component = component
        self.redact_pii = redact_pii

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
        if self.redact_pii:
            entry = {k: v if k in _OWN_FIELDS else _redact_value(v) for k, v in entry.items()}
        return json.dumps(entry, default=str)


class _MetricsOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.startswith(METRICS_LOGGERS)


def configure_logging(
    debug: bool, log_dir: Path | None = None, component: str = "", redact_logs: bool = True
) -> None:
    """Route the `promethios.*` loggers to JSON on stderr (and the seed's files when asked).

    With `redact_logs`, every line is redacted (see `redact`), and a `RedactingFilter`
    is put on the root logger's handlers. Idempotent per process: a second call
    replaces the handlers and filters it installed.
    """
    logger = logging.getLogger(ROOT)
    for handler in [h for h in logger.handlers if getattr(h, "_promethios", False)]:
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    _install_root_filter(redact_logs)
    formatter = JsonFormatter(component, redact_pii=redact_logs)
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


def _install_root_filter(on: bool) -> None:
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(old)
        if on:
            handler.addFilter(RedactingFilter())


def configure_from_settings(component: str) -> None:
    """Logging as the settings say (PROMETHIOS_DEBUG, NATIVE_LLM_DEBUG, PROMETHIOS_LOG_DIR,
    PROMETHIOS_REDACT_LOGS); also the process's heap profile when asked for
    (PROMETHIOS_HEAP_PROFILE)."""
    from serve_app.settings import get_settings

    settings = get_settings()
    log_dir = getattr(settings, "log_dir", None)
    configure_logging(
        settings.debug,
        Path(log_dir) if log_dir else None,
        component,
        redact_logs=getattr(settings, "redact_logs", True),
    )
    from serve_app.observability.heap import start_from_env

    start_from_env(component)
