"""Log redaction (`PROMETHIOS_REDACT_LOGS`, on by default): keys and PII never reach a log line."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from serve_app.observability.logs import configure_logging, redact
from serve_app.settings import Settings

KEY = "pn_" + "Ab3dE" * 8
PII = "mail jane.roe@example.org, call +1 415 555 0132, SSN 078-05-1120, card 4111 1111 1111 1111"


def test_redact_replaces_keys_and_pii_with_labels() -> None:
    out = redact(f"key={KEY} Authorization: Bearer sk-abcdefghijklmnop {PII}")
    for value in (KEY, "sk-abcdefghijklmnop", "jane.roe", "555 0132", "078-05-1120", "4111 1111"):
        assert value not in out
    for label in ("[API_KEY]", "[EMAIL]", "[PHONE]", "[US_SSN]", "[PAYMENT_CARD]"):
        assert label in out
    assert (
        redact("nothing to hide, 42 items at 127.0.0.1") == "nothing to hide, 42 items at 127.0.0.1"
    )


def test_access_line_tail_does_not_wake_the_digit_detectors(monkeypatch) -> None:  # noqa: ANN001
    from serve_app.governance import detectors

    called: list[str] = []
    for name in ("phone", "payment_card", "us_ssn", "iban"):
        real = detectors.DETECTORS[name]
        monkeypatch.setitem(
            detectors.DETECTORS,
            name,
            lambda t, real=real, name=name: called.append(name) or real(t),
        )
    line = "POST /v1/chat/completions 200 150.3ms"  # a Serve access line
    assert redact(line) == line and called == []  # libphonenumber took ~0.3 ms to say no
    # Digits elsewhere in the line are still looked at, the tail included.
    assert redact("GET /lookup?phone=4155550132 200 1.2ms") == "GET /lookup?phone=[PHONE] 200 1.2ms"
    assert "phone" in called
    assert "[PAYMENT_CARD]" in redact("card 4111 1111 1111 1111 200 3.1ms")


def test_json_lines_are_redacted_in_message_extras_and_traceback(tmp_path: Path) -> None:
    configure_logging(debug=False, log_dir=tmp_path, component="Test")
    log = logging.getLogger("promethios.writer")
    log.info("chat from %s", "jane.roe@example.org", extra={"input": PII, "ids": [KEY]})
    try:
        raise ValueError(f"insert failed for {PII} with key {KEY}")
    except ValueError:
        log.exception("flush failed")
    text = (tmp_path / "native_llm.log").read_text()
    lines = [json.loads(x) for x in text.splitlines()]
    assert lines[0]["message"] == "chat from [EMAIL]"
    assert "[US_SSN]" in lines[0]["input"] and lines[0]["ids"] == ["[API_KEY]"]
    assert "[PAYMENT_CARD]" in lines[1]["exception"] and "ValueError" in lines[1]["exception"]
    for value in (KEY, "jane.roe", "078-05-1120", "4111 1111"):
        assert value not in text
        assert value not in (tmp_path / "errors.log").read_text()


def test_other_libraries_lines_are_redacted_through_the_root_handlers(tmp_path: Path) -> None:
    root = logging.getLogger()
    handler = logging.FileHandler(tmp_path / "root.log")
    root.addHandler(handler)
    try:
        configure_logging(debug=False, component="Test")
        logging.getLogger("vllm.somewhere").warning("prompt was %s / %s", PII, KEY)
        handler.flush()
        text = (tmp_path / "root.log").read_text()
        assert "[EMAIL]" in text and "[API_KEY]" in text
        assert "jane.roe" not in text and KEY not in text
    finally:
        root.removeHandler(handler)
        handler.close()
        configure_logging(debug=False, component="Test", redact_logs=False)


def test_redaction_can_be_switched_off(tmp_path: Path) -> None:
    configure_logging(debug=False, log_dir=tmp_path, component="Test", redact_logs=False)
    logging.getLogger("promethios.api").info("raw %s", "jane.roe@example.org")
    assert "jane.roe@example.org" in (tmp_path / "native_llm.log").read_text()
    configure_logging(debug=False, component="Test")


def test_setting_defaults() -> None:
    s = Settings()
    assert s.redact_logs is True and s.cors_origins == []
    s = Settings(
        PROMETHIOS_REDACT_LOGS="false", PROMETHIOS_CORS_ALLOW_ORIGINS="https://a, https://b"
    )
    assert s.redact_logs is False and s.cors_origins == ["https://a", "https://b"]
