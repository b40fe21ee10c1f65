"""The real graph, started once per session with `serve run` (Ray Serve, vLLM on
CPU with the embedded model, a real database), plus helpers to call it."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from serve_app.launcher import GraphProcess, create_user_key, start_graph

START_TIMEOUT_S = float(os.environ.get("PROMETHIOS_TEST_START_TIMEOUT_S", "600"))
# The upstream key wrapped agents name: set before the graph starts so its replicas see it.
UPSTREAM_KEY_ENV = "UPSTREAM_TEST_API_KEY"
os.environ.setdefault(UPSTREAM_KEY_ENV, "sk-test-" + secrets.token_hex(12))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Destructive tests (marked `faults`) run last, after every test of the shared graph."""
    items.sort(key=lambda item: item.get_closest_marker("faults") is not None)


@dataclass
class Graph:
    base_url: str
    database_url: str
    log_path: Path
    process: GraphProcess | None = None  # its processes, for fault tests and log checks

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=120.0)

    def new_user(self, user_id: str) -> str:
        """Create a user with the real CLI; returns its API key (the last line printed)."""
        return create_user_key(self.database_url, user_id)


def _database_url(request: pytest.FixtureRequest, tmp: Path) -> str:
    """PostgreSQL when this machine can start one, else a SQLite file."""
    try:
        pg = request.getfixturevalue("postgres_url")
    except pytest.skip.Exception:
        return f"sqlite:///{tmp / 'graph.db'}"
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(make_url(pg).set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text('CREATE DATABASE "graph_session"'))
    admin.dispose()
    return make_url(pg).set(database="graph_session").render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def graph(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Graph]:
    tmp = tmp_path_factory.mktemp("graph")
    from serve_app.model.build import ensure_default_model

    ensure_default_model()  # train (or reuse) the embedded model before Serve starts
    from serve_app.governance.semantic import default_semantic

    default_semantic()  # and the governance classifier (the scorer replicas reuse its cache)
    proc = start_graph(tmp, _database_url(request, tmp), timeout_s=START_TIMEOUT_S)
    try:
        yield Graph(
            base_url=proc.base_url,
            database_url=proc.database_url,
            log_path=proc.log_path,
            process=proc,
        )
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def alice(graph: Graph) -> str:
    return graph.new_user("alice")


@pytest.fixture(scope="session")
def bob(graph: Graph) -> str:
    return graph.new_user("bob")


@pytest.fixture(scope="session")
def vllm_upstream(graph: Graph, tmp_path_factory: pytest.TempPathFactory):
    """vLLM's own OpenAI server on the embedded model, keyed with UPSTREAM_TEST_API_KEY:
    the real upstream that wrapped agents wrap."""
    from serve_app.model.build import ensure_default_model
    from serve_app.vllm_server import start_vllm_server

    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = start_vllm_server(
        ensure_default_model(), log, served_model_name="tiny", api_key=os.environ[UPSTREAM_KEY_ENV]
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def faulty_upstream():
    """An upstream that fails on demand (tests/support/upstreams.py)."""
    from tests.support.upstreams import start_faulty_upstream

    up = start_faulty_upstream()
    try:
        yield up
    finally:
        up.stop()
