"""Fixtures shared by every suite: a throwaway PostgreSQL cluster per session and
``db_url``, a fresh empty database per test on SQLite and PostgreSQL; and the real graph,
started once per session with `serve run` (Ray Serve, vLLM on CPU with the embedded model,
a real database), its users and the upstreams wrapped agents call (tests/integration and
tests/security use them).

Set ``PROMETHIOS_TEST_POSTGRES_URL`` to use an existing server instead of
starting one (its user must be allowed to CREATE DATABASE).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from harness.launcher import GraphProcess, create_user_key, start_graph
from tests.support.postgres import PostgresUnavailable, find_bin_dir, start_throwaway_postgres


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL server for this session; skips when none can be had."""
    external = os.environ.get("PROMETHIOS_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    if find_bin_dir() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl, createdb) not found")
    # Not under pytest's tmp_path: as root the server runs as `postgres`, which
    # cannot enter pytest's 0700 directories.
    base = Path(tempfile.mkdtemp(prefix="promethios-pg-"))
    try:
        url, stop = start_throwaway_postgres(base)
    except PostgresUnavailable as exc:
        pytest.skip(f"could not start PostgreSQL: {exc}")
    try:
        yield url
    finally:
        stop()


@pytest.fixture(scope="session")
def _postgres_admin(postgres_url: str) -> Iterator[Engine]:
    """Autocommit engine on the cluster's maintenance database (CREATE/DROP DATABASE)."""
    engine = create_engine(
        make_url(postgres_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty (unmigrated) database per test: a SQLite file or a new PG database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'promethios.db'}"
        return
    admin: Engine = request.getfixturevalue("_postgres_admin")
    name = f"test_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield (
            make_url(request.getfixturevalue("postgres_url"))
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- the real graph ------------------------------------------------------------

START_TIMEOUT_S = float(os.environ.get("PROMETHIOS_TEST_START_TIMEOUT_S", "600"))
# The upstream key wrapped agents name: set before the graph starts so its replicas see it.
UPSTREAM_KEY_ENV = "UPSTREAM_TEST_API_KEY"
os.environ.setdefault(UPSTREAM_KEY_ENV, "sk-test-" + secrets.token_hex(12))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Destructive tests (marked `faults`) run last, after every test of the shared graph;
    the multi-node cluster's (marked `cluster`) first, so that their cluster is down before
    the shared graph starts (two vLLM engines would share this machine's two cores)."""

    def order(item: pytest.Item) -> int:
        if item.get_closest_marker("cluster") is not None:
            return 0
        return 2 if item.get_closest_marker("faults") is not None else 1

    items.sort(key=order)


@dataclass
class Graph:
    base_url: str
    database_url: str
    log_path: Path
    process: GraphProcess | None = None  # its processes, for fault tests and log checks
    upstreams_file: Path | None = None  # the operator's registry (PROMETHIOS_UPSTREAMS_FILE)

    def register_upstream(self, name: str, **entry: object) -> None:
        """Register an upstream as the operator does: an entry in the graph's upstreams file
        (replicas re-read it when it changes)."""
        assert self.upstreams_file is not None
        data = yaml.safe_load(self.upstreams_file.read_text()) or {}
        data.setdefault("upstreams", {})[name] = entry
        tmp = self.upstreams_file.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(data))
        tmp.replace(self.upstreams_file)

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
    upstreams = tmp / "upstreams.yaml"
    upstreams.write_text("upstreams: {}\n")
    proc = start_graph(
        tmp,
        _database_url(request, tmp),
        timeout_s=START_TIMEOUT_S,
        env={"PROMETHIOS_UPSTREAMS_FILE": str(upstreams)},
    )
    try:
        yield Graph(
            base_url=proc.base_url,
            database_url=proc.database_url,
            log_path=proc.log_path,
            process=proc,
            upstreams_file=upstreams,
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
    from harness.vllm_server import start_vllm_server
    from serve_app.model.build import ensure_default_model

    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    server = start_vllm_server(
        ensure_default_model(), log, served_model_name="tiny", api_key=os.environ[UPSTREAM_KEY_ENV]
    )
    graph.register_upstream(
        "vllm", base_url=server.base_url, api_key_env=UPSTREAM_KEY_ENV, models=[server.model]
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def faulty_upstream(graph: Graph):
    """An upstream that fails on demand (tests/support/upstreams.py), registered as
    `faulty`."""
    from tests.support.upstreams import start_faulty_upstream

    up = start_faulty_upstream()
    graph.register_upstream("faulty", base_url=up.base_url)
    try:
        yield up
    finally:
        up.stop()
