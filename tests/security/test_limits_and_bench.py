"""Limits a tenant cannot get around, and bench routes that are not an API (issue 23, items
3 and 6), in-process: the real rate limiter, the real ingress app and a real SQLite store.
The same controls on the running graph: tests/security/test_graph_controls.py."""

from __future__ import annotations

import asyncio
import csv
import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from serve_app.api import deps
from serve_app.api.deps import AppInfo, Services, install_services
from serve_app.api.http import create_api
from serve_app.api.limits import RateLimits
from serve_app.errors import RateLimited
from serve_app.governance.policy import PolicySet
from serve_app.observability.history import csv_safe
from serve_app.ratelimit import Limit, RateLimiter
from serve_app.settings import Settings
from serve_app.store import Store


def test_more_keys_do_not_buy_a_user_more_requests() -> None:
    """The attack: one user mints keys to multiply the per-key quota."""
    limits = RateLimits.local(RateLimiter(), Limit(3, None), user_limit=Limit(4, None))

    async def burst() -> int:
        admitted = 0
        for i in range(12):  # three keys of the same user, four requests each
            try:
                await limits.admit(f"key-{i % 3}", None, "mallory")
                admitted += 1
            except RateLimited as exc:
                assert "user (all their keys)" in exc.message
        return admitted

    assert asyncio.run(burst()) == 4  # the user's limit, not 3 keys x 3
    # Another user is not affected.
    asyncio.run(limits.admit("key-of-alice", None, "alice"))


@pytest.mark.parametrize(
    ("cell", "safe"),
    [
        ('=HYPERLINK("http://evil","click")', '\'=HYPERLINK("http://evil","click")'),
        ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("\t=1+1", "'\t=1+1"),
        ("-0.25", "-0.25"),  # a number stays a number
        ("Where is my order?", "Where is my order?"),
        (0.5, 0.5),
    ],
)
def test_csv_cells_cannot_run_as_formulas(cell: object, safe: object) -> None:
    assert csv_safe(cell) == safe


def test_a_csv_report_row_reads_back_neutralised() -> None:
    out = io.StringIO()
    csv.writer(out).writerow([csv_safe("=1+1"), csv_safe("fine")])
    assert next(csv.reader(io.StringIO(out.getvalue()))) == ["'=1+1", "fine"]


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, str]]:
    """The ingress app over a real SQLite store with bench routes on (as bench/run.py
    starts it) and an admin key set. No model backend: every request here is refused
    before one is needed."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    store.migrate()
    key = store.create_api_key("mallory")
    settings = Settings(PROMETHIOS_ADMIN_KEY="operator-secret")  # type: ignore[call-arg]
    previous = deps._services
    install_services(
        Services(
            store=store,
            backends=None,  # type: ignore[arg-type]
            settings=settings,
            policies=PolicySet.load(),
            info=AppInfo("m", "1", "base", 0, "v"),
            bench_enabled=True,
        )
    )
    try:
        yield TestClient(create_api()), key
    finally:
        deps._services = previous
        store.close()


@pytest.mark.parametrize(
    ("method", "path"), [("post", "/bench/writer"), ("post", "/bench/ungoverned/a-1/chat")]
)
def test_bench_routes_need_the_operators_admin_key(app, method: str, path: str) -> None:
    client, key = app
    body = {"message": "hi"}
    for extra in ({}, {"X-Admin-Key": "guess"}, {"X-Admin-Key": ""}):
        resp = getattr(client, method)(
            path, json=body, headers={"Authorization": f"Bearer {key}", **extra}
        )
        assert resp.status_code == 403, resp.text
        assert resp.json()["error"]["code"] == "forbidden"
    # Without a user's key it is a 401 before anything else.
    assert getattr(client, method)(path, json=body).status_code == 401


def test_bench_routes_are_off_without_the_application_arg(app) -> None:
    client, key = app
    deps._services.bench_enabled = False  # type: ignore[union-attr]
    resp = client.post(
        "/bench/writer",
        headers={"Authorization": f"Bearer {key}", "X-Admin-Key": "operator-secret"},
    )
    assert resp.status_code == 404


def test_database_error_text_never_reaches_the_client_nor_bound_values_the_log(
    app, caplog: pytest.LogCaptureFixture
) -> None:
    """A database fault on a query that carries the caller's input: the client gets a
    fixed message, and the operator's log has the SQL error without the bound value."""
    client, key = app
    store = deps._services.store  # type: ignore[union-attr]
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE agents")  # the fault (a bad migration, a DBA)
    secret = "native-sk_live_customer_secret_42"
    with caplog.at_level("DEBUG"):
        resp = client.get(f"/native-llm/agent/{secret}", headers={"Authorization": f"Bearer {key}"})
    # SQLite reports a missing table as an OperationalError, which the ingress treats as
    # the database being unavailable: a fixed 503 either way, never the SQL error.
    assert resp.status_code == 503
    assert resp.json() == {
        "success": False,
        "error": {
            "code": "database_unavailable",
            "message": "the database is unreachable; try again shortly",
        },
    }
    assert "agents" not in resp.text and secret not in resp.text
    # Nor does the log get the value as a bound parameter of the failed SQL (the request's
    # path is in the access log, as any path is).
    sql_lines = [ln for ln in caplog.text.splitlines() if "SELECT" in ln or "parameters" in ln]
    assert not [ln for ln in sql_lines if secret in ln]


def test_no_shipped_config_turns_the_bench_routes_on() -> None:
    import yaml

    repo = Path(__file__).resolve().parents[2]
    rayservice = yaml.safe_load((repo / "k8s" / "rayservice.yaml").read_text())
    configs = [
        yaml.safe_load((repo / "configs" / name).read_text()) for name in ("local.yaml", "gpu.yaml")
    ]
    configs.append(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))
    for config in configs:
        for app_config in config["applications"]:
            assert not app_config.get("args", {}).get("bench_routes"), app_config["name"]
