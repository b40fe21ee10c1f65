"""Faults against the real graph, while it is under load: nothing answered is lost.

- The metrics writer's replica is killed (SIGKILL of its process, as a crash or the
  OOM killer would): Serve starts a new one, and every chat answered 200 has exactly
  one interaction row (records are spooled to disk before the writer accepts them,
  the new writer replays what the dead one left, inserts are idempotent by message id).
- An LLM replica is killed (with its engine process): requests in flight fail fast with
  503 `model_unavailable` in the envelope, streams cut mid-answer end at once with an
  error chunk (no hang, no unscored text), and chats succeed again once Serve has
  started a new replica.
- PostgreSQL is stopped for a while (and the writer killed during the outage):
  requests that need the database are refused with 503 `database_unavailable`;
  chats answered before or during the outage are spooled and written when the
  database is back.

These tests are marked `faults` and run after every other test of the session (see
conftest.py); each waits until the graph is healthy again before it ends.
"""

from __future__ import annotations

import shlex
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from serve_app.settings import get_settings
from tests.integration.conftest import Graph
from tests.support.load import (
    Load,
    StreamLoad,
    assert_envelope_error,
    wait_until_every_row,
)

pytestmark = [pytest.mark.slow, pytest.mark.faults]

REQUEST_TIMEOUT_S = get_settings().request_timeout_s
RECOVERY_S = 420.0  # a new vLLM replica on a loaded 2-core machine can take minutes


def _wait_healthy(graph: Graph, timeout_s: float = RECOVERY_S) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            resp = httpx.get(f"{graph.base_url}/native-llm/health", timeout=10)
            if resp.status_code == 200:
                return
            last = resp.text
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(2)
    raise AssertionError(f"graph not healthy {timeout_s:.0f} s after the fault: {last}")


def _wait_replica_replaced(graph: Graph, deployment: str, old: list[int]) -> None:
    assert graph.process is not None
    deadline = time.monotonic() + RECOVERY_S
    while time.monotonic() < deadline:
        pids = graph.process.replica_pids(deployment)
        if pids and not set(pids) & set(old):
            return
        time.sleep(1)
    raise AssertionError(f"no new {deployment} replica in {RECOVERY_S:.0f} s")


@pytest.fixture(scope="module")
def tenant(graph: Graph) -> tuple[str, str]:
    """A user of its own (its own rate-limit bucket) and an agent with short answers."""
    if graph.process is None:
        pytest.skip("fault tests need the graph's processes")
    key = graph.new_user("faults")
    with graph.client(key) as c:
        resp = c.post(
            "/native-llm/agent/create", json={"config": {"name": "Faults", "max_tokens": 8}}
        )
    assert resp.status_code == 200, resp.text
    return key, resp.json()["data"]["agent_id"]


def test_writer_killed_during_load_loses_no_answered_chat(
    graph: Graph, tenant: tuple[str, str]
) -> None:
    key, agent_id = tenant
    assert graph.process is not None
    with Load(graph, key, agent_id) as load:
        time.sleep(8)
        before = len(load.ok_ids())
        killed = graph.process.kill_replica("MetricsWriter")
        assert killed, "no MetricsWriter replica found"
        _wait_replica_replaced(graph, "MetricsWriter", killed)
        mark = len(load.answers)
        time.sleep(8)  # load goes on against the new writer
        after = len(load.ok_ids())
    assert before > 0 and after > before, "chats were answered before and after the kill"
    assert load.count(200) > 0 and any(s == 200 for _, _, s, _ in load.answers[mark:])
    for _, _, status, body in load.answers:
        assert status in (200, 503, 504), (status, body)
        if status != 200:
            assert_envelope_error(body, status)
    wait_until_every_row(graph, load.ok_ids())
    _wait_healthy(graph)


def _assert_bounded_failure(
    status: int, body: dict, sent: float, answered: float, killed_at: float
) -> None:
    """A request in flight when the LLM replica died: inside the engine it fails at once
    (503 model_unavailable); still queued for the model, it waits for the replacement
    and is answered or, if that takes longer than the request timeout, gets 504 at the
    timeout. Never a hang beyond it."""
    code = body["error"]["code"]
    if status == 503:
        assert code == "model_unavailable", body
        assert answered - killed_at < 15, "an in-flight request hung after the kill"
    else:
        assert status == 504 and code == "timeout", (status, body)
        assert answered - sent < REQUEST_TIMEOUT_S + 15, "waited beyond the request timeout"


def _kill_llm_under_load(
    graph: Graph, key: str, agent_id: str
) -> tuple[Load, StreamLoad, float, float]:
    """Kill the LLM replica under load (chats and streams); wait until chats sent after
    its restart succeed."""
    assert graph.process is not None
    with (
        Load(graph, key, agent_id, workers=6, max_tokens=160, temperature=1.0) as load,
        StreamLoad(graph, key, agent_id) as streams,
    ):
        time.sleep(6)
        killed_at = time.monotonic()
        killed = graph.process.kill_replica("LLMServer")
        assert killed, "no LLMServer replica found"
        _wait_replica_replaced(graph, "LLMServer", killed)
        replaced_at = time.monotonic()
        deadline = replaced_at + RECOVERY_S
        while time.monotonic() < deadline:  # until chats sent after the restart succeed
            if any(s == 200 and sent > replaced_at for sent, _, s, _ in load.answers):
                break
            time.sleep(1)
    return load, streams, killed_at, replaced_at


def test_llm_replica_killed_in_flight_fails_fast_then_recovers(
    graph: Graph, tenant: tuple[str, str]
) -> None:
    key, agent_id = tenant
    # Requests still being scored or queued for the model when the replica dies wait for
    # the new one (answered, or 504 at the request timeout); those inside the engine fail
    # at once. The kill can land when no chat or no stream is inside the engine (the tiny
    # model often stops early, so a chat spends little of its time there; the two streams
    # may both be queued): up to five tries, until both a chat and a stream were inside.
    for _attempt in range(5):
        load, streams, killed_at, replaced_at = _kill_llm_under_load(graph, key, agent_id)
        in_flight = [a for a in load.answers if a[0] < killed_at < a[1] and a[2] != 200]
        cut = [s for s in streams.streams if s[0] < killed_at < s[1] and s[4] is not None]
        chat_inside = any(status == 503 for _, _, status, _ in in_flight)
        if chat_inside and any(error == "model_unavailable" for *_, error in cut):
            break
    assert in_flight, "the kill hit no request in flight (5 tries)"
    for sent, answered, status, body in in_flight:
        _assert_bounded_failure(status, body, sent, answered, killed_at)
    assert chat_inside, "none failed fast"
    for _, _, status, body in load.answers:
        assert status in (200, 503, 504), (status, body)
        if status != 200:
            assert_envelope_error(body, status)
    assert any(s == 200 and sent > replaced_at for sent, _, s, _ in load.answers), (
        "no chat succeeded once the new replica was up"
    )
    # Streams cut by the kill end with an error chunk in OpenAI's shape, never a normal
    # finish; the text they carried before it had passed governance (held back and
    # scored, as always).
    assert cut, "the kill cut no stream (5 tries)"
    for sent, ended, _text, finish, error in cut:
        assert finish is None, "a cut stream must not claim a normal finish"
        status = 503 if error == "model_unavailable" else 504 if error == "timeout" else 0
        _assert_bounded_failure(status, {"error": {"code": error}}, sent, ended, killed_at)
    assert any(error == "model_unavailable" for *_, error in cut), (
        f"no stream failed fast (5 tries; the last cut ones ended {[s[4] for s in cut]})"
    )
    for _, _, _text, finish, error in streams.streams:
        assert (finish is not None) != (error is not None), (finish, error)
    _wait_healthy(graph)


# -- the database away ----------------------------------------------------------------


@dataclass
class PostgresServer:
    """The graph's PostgreSQL cluster, stopped and started again with its own options."""

    url: str
    data_dir: Path
    options: list[str]

    @classmethod
    def of(cls, url: str) -> PostgresServer:
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                data = Path(conn.execute(text("SHOW data_directory")).scalar_one())
        finally:
            engine.dispose()
        argv = shlex.split((data / "postmaster.opts").read_text())
        opts, skip = [], False
        for arg in argv[1:]:  # the command line it was started with, less the binary and -D
            if skip:
                skip = False
            elif arg == "-D":
                skip = True
            else:
                opts.append(arg)
        return cls(url, data, opts)

    def _pg_ctl(self, *args: str) -> None:
        from tests.support.postgres import _as_postgres, find_bin_dir

        bin_dir = find_bin_dir()
        assert bin_dir is not None
        cmd = [*_as_postgres(), str(bin_dir / "pg_ctl"), "-D", str(self.data_dir), *args]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def stop(self) -> None:
        self._pg_ctl("-m", "fast", "-w", "stop")

    def start(self) -> None:
        log = self.data_dir.parent / "server.log"
        self._pg_ctl("-o", shlex.join(self.options), "-l", str(log), "-w", "-t", "60", "start")


@pytest.fixture
def postgres(graph: Graph) -> Iterator[PostgresServer]:
    if make_url(graph.database_url).get_backend_name() != "postgresql":
        pytest.skip("the database-outage test needs the graph on PostgreSQL")
    server = PostgresServer.of(graph.database_url)
    try:
        yield server
    finally:
        try:
            server.start()  # whatever happened, leave it running
        except subprocess.CalledProcessError:
            pass  # already running


def test_database_outage_loses_no_answered_chat(
    graph: Graph, tenant: tuple[str, str], postgres: PostgresServer
) -> None:
    key, agent_id = tenant
    assert graph.process is not None
    with Load(graph, key, agent_id, workers=4) as load:
        time.sleep(5)
        stopped_at = time.monotonic()
        postgres.stop()
        time.sleep(6)
        # The writer dies during the outage: only its spool holds what it accepted.
        killed = graph.process.kill_replica("MetricsWriter")
        assert killed
        time.sleep(12)
        with graph.client(key) as c:
            health = c.get("/native-llm/health")
            refused = c.get(f"/native-llm/agent/{agent_id}/scorecard")
        postgres.start()
        restarted_at = time.monotonic()
        _wait_healthy(graph)
        time.sleep(5)
    assert health.status_code == 503
    assert health.json()["data"]["components"]["database"].startswith("unavailable")
    assert refused.status_code == 503, refused.text
    assert refused.json()["error"]["code"] == "database_unavailable"
    during = [(s, b) for sent, _, s, b in load.answers if stopped_at <= sent < restarted_at]
    assert during and all(s != 500 for s, _ in during), during[:3]
    for status, body in during:
        if status != 200:
            assert status in (503, 504), (status, body)
            assert_envelope_error(body, status)
    assert load.count(200) > 0
    wait_until_every_row(graph, load.ok_ids())
    with graph.client(key) as c:
        audit = c.get(f"/native-llm/agent/{agent_id}/audit/verify")
    assert audit.status_code == 200 and audit.json()["data"]["intact"] is True, audit.text
