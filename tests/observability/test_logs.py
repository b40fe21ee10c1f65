"""JSON logs: one object per line with the request id, debug switch, the seed's files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient

from serve_app.api.observability import install_observability
from serve_app.observability.instrument import MetricsHub
from serve_app.observability.logs import configure_logging, request_id_var
from serve_app.observability.requests import install_hub
from serve_app.settings import Settings


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_files_levels_and_request_id(tmp_path: Path) -> None:
    configure_logging(debug=False, log_dir=tmp_path, component="Test")
    token = request_id_var.set("req-123")
    try:
        logging.getLogger("promethios.api").debug("hidden without debug")
        logging.getLogger("promethios.api").info("served", extra={"status": 200})
        logging.getLogger("promethios.writer").info("accepted 1 record(s)")
        logging.getLogger("promethios.api").error("broke")
    finally:
        request_id_var.reset(token)
    main = _lines(tmp_path / "native_llm.log")
    assert [e["message"] for e in main] == ["served", "accepted 1 record(s)", "broke"]
    assert all(e["request_id"] == "req-123" and e["component"] == "Test" for e in main)
    assert main[0]["status"] == 200 and main[0]["level"] == "INFO"
    metrics = _lines(tmp_path / "metrics_integration.log")
    assert [e["logger"] for e in metrics] == ["promethios.writer"]
    assert [e["message"] for e in _lines(tmp_path / "errors.log")] == ["broke"]

    configure_logging(debug=True, log_dir=None)
    assert logging.getLogger("promethios").isEnabledFor(logging.DEBUG)
    configure_logging(debug=False, log_dir=None)


def test_debug_switches(monkeypatch) -> None:
    for name in ("PROMETHIOS_DEBUG", "NATIVE_LLM_DEBUG"):
        monkeypatch.delenv("PROMETHIOS_DEBUG", raising=False)
        monkeypatch.delenv("NATIVE_LLM_DEBUG", raising=False)
        monkeypatch.setenv(name, "true")
        assert Settings().debug is True
    monkeypatch.setenv("PROMETHIOS_LOG_DIR", "logs")
    assert Settings().log_dir == Path("logs")


def test_requests_are_counted_by_route_template() -> None:
    hub = MetricsHub.in_process()
    install_hub(hub)
    try:
        app = install_observability(FastAPI())
        with TestClient(app) as client:
            resp = client.get("/dashboard/native-llm", headers={"X-Request-ID": "abc"})
            assert resp.status_code == 200 and resp.headers["x-request-id"] == "abc"
            assert client.get("/no/such/path").status_code == 404
            assert client.get("/dashboard/native-llm/static/app.js").status_code == 200
        counters = hub.pending.counters
        assert counters[("promethios_requests", ("/dashboard/native-llm", "200"))] == 1
        assert counters[("promethios_requests", ("unmatched", "404"))] == 1
        assert (
            counters[("promethios_requests", ("/dashboard/native-llm/static/{path:path}", "200"))]
            == 1
        )
    finally:
        install_hub(None)
