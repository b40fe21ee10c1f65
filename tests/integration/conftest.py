"""The real graph, started once per session with `serve run` (Ray Serve, vLLM on
CPU with the embedded model, a real database), plus helpers to call it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
START_TIMEOUT_S = float(os.environ.get("PROMETHIOS_TEST_START_TIMEOUT_S", "600"))


@dataclass
class Graph:
    base_url: str
    database_url: str
    log_path: Path

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=120.0)

    def new_user(self, user_id: str) -> str:
        """Create a user with the real CLI; returns its API key (the last line printed)."""
        out = subprocess.run(
            [str(BIN / "promethios"), "users", "create", user_id],
            env={**os.environ, "DATABASE_URL": self.database_url},
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )
        return out.stdout.strip().splitlines()[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

    ensure_default_model()  # train (or reuse) the embedded model here, with its progress bar
    database_url = _database_url(request, tmp)
    port = _free_port()
    config = yaml.safe_load((REPO / "configs" / "local.yaml").read_text())
    config["http_options"]["port"] = port
    config["applications"][0]["args"]["database_url"] = database_url
    config_path = tmp / "serve.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = tmp / "serve.log"
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}
    env.pop("DATABASE_URL", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(BIN / "serve"), "run", str(config_path)],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"serve run exited {proc.returncode}:\n{log_path.read_text()[-4000:]}"
                )
            try:
                if httpx.get(f"{base_url}/native-llm/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"graph not healthy in {START_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}"
                )
            time.sleep(2)
        yield Graph(base_url=base_url, database_url=database_url, log_path=log_path)
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def alice(graph: Graph) -> str:
    return graph.new_user("alice")


@pytest.fixture(scope="session")
def bob(graph: Graph) -> str:
    return graph.new_user("bob")
