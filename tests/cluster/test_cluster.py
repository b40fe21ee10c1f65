"""The multi-node path, live: `scripts/cluster.sh` (make cluster) starts PostgreSQL, a Ray
head and two worker nodes on this machine, `serve deploy` puts the application on them
through the dashboard as on any remote cluster, and then worker nodes are lost under load
(SIGKILL of the node's raylet and every process it started) and brought back.

Asserted: placement by node resources; requests in flight on a lost node end at once with
503 in the route's error shape (an OpenAI stream: an error chunk), never a hang; the graph
serves again within a bound; every answered chat has exactly one record and the audit
chain verifies; the node rejoins; no vLLM engine process outlives its replica (lifeline);
a `serve deploy` of a changed config under load. The figures go to
`$PROMETHIOS_CLUSTER_RESULTS` when set (`make bench-cluster`: bench/results/cluster.json).

Marked `cluster`: they run first in the session (conftest.py), so that their cluster is
down before the shared `serve run` graph starts; `-m "not cluster"` skips them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from harness.launcher import create_user_key
from tests.support.load import (
    Load,
    StreamLoad,
    assert_envelope_error,
    rows_per_message,
    wait_until_every_row,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "cluster.sh"
PY = REPO / ".venv" / "bin" / "python"
FAIL_FAST_S = 15.0  # a request in flight on a lost node ends within this
REQUEST_TIMEOUT_S = 60.0  # PROMETHIOS_REQUEST_TIMEOUT_S's default: a queued chat's bound
RECOVERY_S = 300.0  # a new vLLM replica on a loaded 2-core machine
FIGURES: dict[str, Any] = {}
# What a request cut by a lost node may end with: its ingress replica lost (the proxy's
# guard), the model's, or both scorer attempts' (fail closed).
LOSS_CODES = ("replica_unavailable", "model_unavailable", "governance_unavailable")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    state: Path
    env: dict[str, str]
    base_url: str
    dashboard: str
    database_url: str
    config: Path
    timings: dict[str, float] = field(default_factory=dict)

    def sh(self, *args: str, timeout: float = 900) -> str:
        out = subprocess.run(
            [str(SCRIPT), *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        assert out.returncode == 0, f"cluster.sh {' '.join(args)}:\n{out.stdout}\n{out.stderr}"
        return out.stdout

    def client(self, key: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=120.0)

    def new_user(self, user_id: str) -> str:
        return create_user_key(self.database_url, user_id)

    def state_api(self) -> dict[str, Any]:
        """Nodes (alive, by the resource that names them) and live actors, from the
        dashboard's state API as any cluster user reads them."""
        code = (
            "import json, sys\n"
            "from ray.util.state import list_actors, list_nodes\n"
            "a = sys.argv[1]\n"
            "nodes = [{'id': n.node_id, 'state': n.state, 'resources': list(n.resources_total)}"
            " for n in list_nodes(address=a, detail=True, limit=100)]\n"
            "actors = [{'cls': x.class_name, 'node': x.node_id, 'pid': x.pid} for x in"
            " list_actors(address=a, detail=True, filters=[('state', '=', 'ALIVE')],"
            " limit=1000)]\n"
            "print(json.dumps({'nodes': nodes, 'actors': actors}))\n"
        )
        out = subprocess.run(
            [str(PY), "-c", code, self.dashboard],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return json.loads(out.stdout)

    def placement(self) -> dict[str, list[str]]:
        """Deployment name -> the names of the nodes (head, llm, cpu) its replicas are on."""
        api = self.state_api()
        names = {}
        for n in api["nodes"]:
            if n["state"] != "ALIVE":
                continue
            for name in ("head", "llm", "cpu"):
                if (f"{name}_node" if name != "head" else "head") in n["resources"]:
                    names[n["id"]] = name
        placed: dict[str, list[str]] = {}
        for a in api["actors"]:
            if a["cls"].startswith("ServeReplica:promethios:"):
                dep = a["cls"].rsplit(":", 1)[1]
                placed.setdefault(dep, []).append(names.get(a["node"], "?"))
        return {k: sorted(v) for k, v in placed.items()}

    def nodes_alive(self) -> set[str]:
        alive = set()
        for n in self.state_api()["nodes"]:
            if n["state"] == "ALIVE":
                alive |= {r.removesuffix("_node") for r in n["resources"] if r.endswith("_node")}
                alive |= {"head"} if "head" in n["resources"] else set()
        return alive

    def engine_pids(self) -> list[int]:
        """vLLM engine processes of this cluster (their replica's environment names the
        cluster's state directory through PROMETHIOS_SPOOL_DIR)."""
        pids = []
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                cmd = (p / "cmdline").read_bytes()
                if not cmd.startswith(b"VLLM::"):
                    continue
                environ = (p / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"PROMETHIOS_SPOOL_DIR={self.state}/spool".encode() in environ:
                pids.append(int(p.name))
        return pids


def _wait(what: str, check: Any, timeout_s: float, every_s: float = 1.0) -> float:
    """Seconds until `check()` is true; fails after `timeout_s`."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except (httpx.HTTPError, subprocess.SubprocessError):
            pass
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"{what}: not within {timeout_s:.0f} s")
        time.sleep(every_s)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if shutil.which("runuser") is None and os.geteuid() == 0:
        pytest.skip("needs runuser to start PostgreSQL as root")
    state = Path(tempfile.mkdtemp(prefix="pcl", dir="/tmp"))  # short: socket paths
    state.chmod(0o755)  # PostgreSQL runs as its own user below it
    pg, http = _free_port(), _free_port()
    gcs, dash, client_port = _free_port(), _free_port(), _free_port()
    database_url = f"postgresql+psycopg2://postgres@127.0.0.1:{pg}/promethios"
    raw = yaml.safe_load((REPO / "configs" / "cluster.yaml").read_text())
    raw["http_options"]["port"] = http
    config = state / "cluster.yaml"
    config.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {
        **os.environ,
        "PROMETHIOS_CLUSTER_DIR": str(state),
        "PROMETHIOS_CLUSTER_GCS_PORT": str(gcs),
        "PROMETHIOS_CLUSTER_DASHBOARD_PORT": str(dash),
        "PROMETHIOS_CLUSTER_CLIENT_PORT": str(client_port),
        "PROMETHIOS_CLUSTER_PG_PORT": str(pg),
        "PROMETHIOS_CLUSTER_CONFIG": str(config),
        "PROMETHIOS_SPOOL_DIR": str(state / "spool"),
        "PROMETHIOS_AUDIT_DIR": str(state / "audit"),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(state / "ray-token"),
    }
    env.pop("DATABASE_URL", None)
    env.pop("RAY_ADDRESS", None)
    c = Cluster(
        state=state,
        env=env,
        base_url=f"http://127.0.0.1:{http}",
        dashboard=f"http://127.0.0.1:{dash}",
        database_url=database_url,
        config=config,
    )
    FIGURES.update(
        measured=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        machine=f"{os.cpu_count()} CPUs, one machine: head + 2 worker nodes (2 CPUs each)",
    )
    try:
        t0 = time.monotonic()
        c.sh("up")
        FIGURES["up_s"] = round(time.monotonic() - t0, 1)
        t0 = time.monotonic()
        c.sh("deploy")
        FIGURES["deploy_s"] = round(time.monotonic() - t0, 1)
        yield c
    finally:
        try:
            c.sh("down", timeout=120)
        finally:
            leftover = c.engine_pids()
            shutil.rmtree(state, ignore_errors=True)
            results = os.environ.get("PROMETHIOS_CLUSTER_RESULTS")
            if results and FIGURES:
                Path(results).write_text(json.dumps(FIGURES, indent=2) + "\n")
            assert not leftover, f"vLLM engine processes outlived the cluster: {leftover}"


@pytest.fixture(scope="module")
def tenant(cluster: Cluster) -> tuple[str, str]:
    key = cluster.new_user("cluster")
    with cluster.client(key) as c:
        resp = c.post(
            "/native-llm/agent/create", json={"config": {"name": "Cluster", "max_tokens": 8}}
        )
    assert resp.status_code == 200, resp.text
    return key, resp.json()["data"]["agent_id"]


def test_deployed_healthy_and_placed_by_node_resources(cluster: Cluster) -> None:
    app = _serve_status(cluster)
    assert app["status"] == "RUNNING", app
    assert all(d["status"] == "HEALTHY" for d in app["deployments"].values()), app
    placed = cluster.placement()
    assert placed["LLMServer"] == ["llm"], placed
    assert placed["MetricsWriter"] == ["head"] and placed["RateLimiter"] == ["head"], placed
    for dep in ("Ingress", "GovernanceScorer"):  # one per node: losing a node loses one
        assert len(placed[dep]) >= 2 and len(set(placed[dep])) == len(placed[dep]), placed
    FIGURES["placement"] = placed
    resp = httpx.get(f"{cluster.base_url}/native-llm/health", timeout=30)
    assert resp.status_code == 200, resp.text


def _lose_node_under_load(
    cluster: Cluster, tenant: tuple[str, str], node: str, down_s: float
) -> dict[str, Any]:
    """Chats (4 threads) and an OpenAI stream; SIGKILL the node; `down_s` later start it
    again; go on until a chat sent after the restart is answered. Returns the figures."""
    key, agent_id = tenant
    engines_before = cluster.engine_pids()
    with (
        Load(cluster, key, agent_id, workers=4) as load,
        StreamLoad(cluster, key, agent_id, workers=1, max_tokens=64) as streams,
    ):
        _wait("chats answered before the loss", lambda: load.count(200) >= 8, 120)
        killed_at = time.monotonic()
        cluster.sh("kill-node", node)
        time.sleep(down_s)
        restart_at = time.monotonic()
        cluster.sh("node-up", node)
        rejoin_s = _wait("the node rejoins", lambda: node in cluster.nodes_alive(), 120)

        def answered_after_restart() -> bool:
            return any(s == 200 and sent > restart_at for sent, _, s, _ in load.answers)

        _wait("chats answered after the restart", answered_after_restart, RECOVERY_S)
        mark = len(load.answers)
        _wait("more chats", lambda: len(load.answers) >= mark + 8, 120)
    ok_after_kill = [a for sent, a, s, _ in load.answers if s == 200 and sent > killed_at]
    failures = [(sent, a, s, b) for sent, a, s, b in load.answers if s != 200]
    # In flight: inside a replica on the node when it died. A chat sent before the loss
    # that reached the model only after it (it was being screened) is queued like one sent
    # after it: it waits for the new replica, bounded by the request timeout (504 timeout).
    queued = [f for f in failures if f[3]["error"]["code"] == "timeout"]
    in_flight = [f for f in failures if f[0] < killed_at < f[1] and f not in queued]
    for _sent, _answered, status, body in failures:
        assert status in (503, 504), (status, body)  # never a 500 or a transport error
        assert_envelope_error(body, status)
    for sent, answered, _status, body in queued:
        assert answered - sent < REQUEST_TIMEOUT_S + 15, ("a queued chat outlived its bound", body)
    for _sent, answered, _status, body in in_flight:
        assert answered - killed_at < FAIL_FAST_S, ("an in-flight request hung", body)
    cut = [s for s in streams.streams if s[0] < killed_at < s[1] and s[4] is not None]
    for _sent, ended, _text, finish, error in cut:
        assert finish is None and error in LOSS_CODES, error
        assert ended - killed_at < FAIL_FAST_S, "a stream hung after the loss"
    for *_rest, error in streams.streams:
        assert error is None or not error.startswith("transport"), error  # always a chunk
    wait_until_every_row(cluster, load.ok_ids())
    return {
        "chats_answered": load.count(200),
        "chats_failed": {str(s): sum(1 for f in failures if f[2] == s) for s in (503, 504)},
        "failure_codes": sorted({f[3]["error"]["code"] for f in failures}),
        "in_flight_failed": len(in_flight),
        "queued_timed_out": len(queued),
        "in_flight_failed_within_s": round(
            max((f[1] - killed_at for f in in_flight), default=0), 2
        ),
        "streams": len(streams.streams),
        "streams_cut": len(cut),
        "first_answer_sent_after_loss_s": round(min(ok_after_kill) - killed_at, 2)
        if ok_after_kill
        else None,
        "node_down_s": down_s,
        "rejoined_s_after_restart": round(rejoin_s, 1),
        "records_missing": 0,  # wait_until_every_row: every answered chat has one row
        "records_doubled": 0,
        "engines_before": len(engines_before),
    }


def test_cpu_node_lost_under_load(cluster: Cluster, tenant: tuple[str, str]) -> None:
    """The node with an ingress and a scorer replica: the other replicas go on serving."""
    assert "cpu" in cluster.placement()["Ingress"]
    figures = _lose_node_under_load(cluster, tenant, "cpu", down_s=5)
    # The surviving ingress and scorer replicas answer while the node is down.
    assert figures["first_answer_sent_after_loss_s"] is not None
    assert figures["first_answer_sent_after_loss_s"] < 30, figures
    _wait(
        "two ingress replicas again",
        lambda: len(cluster.placement().get("Ingress", [])) >= 2,
        120,
    )
    FIGURES["cpu_node_loss"] = figures


def test_llm_node_lost_under_load_engine_does_not_outlive_it(
    cluster: Cluster, tenant: tuple[str, str]
) -> None:
    """The GPU-standing node: its only LLM replica dies with it. In-flight chats fail fast
    with 503 model_unavailable, queued ones wait (bounded by the request timeout) for the
    replica that starts when the node is back; the engine process dies with its replica."""
    engines = cluster.engine_pids()
    assert engines, "no vLLM engine process found for the LLM replica"
    figures = _lose_node_under_load(cluster, tenant, "llm", down_s=10)
    figures["engine_processes_left"] = [p for p in engines if Path(f"/proc/{p}").exists()]
    assert figures["engine_processes_left"] == [], "vLLM's engine outlived its replica"
    assert cluster.placement()["LLMServer"] == ["llm"]
    FIGURES["llm_node_loss"] = figures


def test_rolling_update_under_load(cluster: Cluster, tenant: tuple[str, str]) -> None:
    """`serve deploy` of a changed config under load: a scorer more and a changed engine
    (every replica of the application is replaced: its arguments changed, as with a new
    model or policy version). Failures are counted by cause; none may be a 500 or a
    transport error; streams in flight when the deploy starts finish normally."""
    key, agent_id = tenant
    raw = yaml.safe_load(cluster.config.read_text())
    app = raw["applications"][0]
    app["args"]["engine"]["max_num_seqs"] = 32
    scorer = next(d for d in app["deployments"] if d["name"] == "GovernanceScorer")
    scorer["autoscaling_config"]["min_replicas"] = 3
    changed = cluster.state / "cluster-v2.yaml"
    changed.write_text(yaml.safe_dump(raw, sort_keys=False))
    env = {**cluster.env, "PROMETHIOS_CLUSTER_CONFIG": str(changed)}
    before = cluster.placement()
    with (
        Load(cluster, key, agent_id, workers=4) as load,
        StreamLoad(cluster, key, agent_id, workers=1, max_tokens=160) as streams,
    ):
        _wait("chats answered before the update", lambda: load.count(200) >= 8, 120)
        started = time.monotonic()
        out = subprocess.run(
            [str(SCRIPT), "deploy"],
            env=env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
            stdin=subprocess.DEVNULL,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        deployed_s = time.monotonic() - started

        def updated() -> bool:
            placed = cluster.placement()
            return len(placed.get("GovernanceScorer", [])) == 3 and load.count(200) > 0

        _wait("the new config in effect", updated, RECOVERY_S)
        done_at = time.monotonic()
        _wait(
            "chats answered after the update",
            lambda: any(s == 200 and sent > done_at for sent, _, s, _ in load.answers),
            RECOVERY_S,
        )
    after = cluster.placement()
    failures = [(sent, a, s, b) for sent, a, s, b in load.answers if s != 200]
    for _sent, _answered, status, body in failures:
        # No request is cut (replaced replicas finish what they hold); a chat may wait out
        # the request timeout (504) behind the single LLM replica's restart on a slow day.
        assert status == 504, (status, body)
        assert_envelope_error(body, status)
    in_flight_streams = [s for s in streams.streams if s[0] < started < s[1]]
    for _sent, _ended, text, finish, error in in_flight_streams:
        assert error is None and finish is not None and text, (finish, error)
    for *_rest, error in streams.streams:
        assert error is None or not error.startswith("transport"), error
    wait_until_every_row(cluster, load.ok_ids())
    FIGURES["rolling_update"] = {
        "change": "args.engine.max_num_seqs 64->32 (every replica replaced), scorers 2->3",
        "deploy_command_s": round(deployed_s, 1),
        "chats_answered": load.count(200),
        "chats_failed": {str(s): sum(1 for f in failures if f[2] == s) for s in (503, 504)},
        "failure_codes": sorted({f[3]["error"]["code"] for f in failures}),
        "longest_chat_s": round(max(a - s for s, a, *_ in load.answers), 1),
        "streams": len(streams.streams),
        "streams_in_flight_at_deploy": len(in_flight_streams),
        "streams_failed": sum(1 for s in streams.streams if s[4] is not None),
        "placement_before": before,
        "placement_after": after,
        "records_missing": 0,
    }


def _serve_status(cluster: Cluster) -> dict[str, Any]:
    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "serve"), "status", "--address", cluster.dashboard],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return yaml.safe_load(out)["applications"]["promethios"]


def test_replicas_without_the_artifacts_fail_clearly_and_the_old_ones_serve(
    cluster: Cluster, tenant: tuple[str, str]
) -> None:
    """Scorer replicas that find no governance artifacts where they look (a node or pod
    whose volume is empty; here the scorer's PROMETHIOS_GOVERNANCE_ARTIFACTS points at an
    empty directory): the update stops with the loader's message in `serve status`, no
    hang, and the previous replicas go on scoring; the good config deploys again."""
    key, agent_id = tenant
    empty = cluster.state / "no-artifacts"
    empty.mkdir()
    raw = yaml.safe_load(cluster.config.read_text())
    deployments = raw["applications"][0]["deployments"]
    scorer = next(d for d in deployments if d["name"] == "GovernanceScorer")
    scorer["ray_actor_options"]["runtime_env"] = {
        "env_vars": {"PROMETHIOS_GOVERNANCE_ARTIFACTS": str(empty)}
    }
    bad = cluster.state / "cluster-no-artifacts.yaml"
    bad.write_text(yaml.safe_dump(raw, sort_keys=False))
    serve = str(REPO / ".venv" / "bin" / "serve")
    subprocess.run(
        [serve, "deploy", str(bad), "--address", cluster.dashboard],
        env=cluster.env, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip

    def failed() -> bool:
        deployments = _serve_status(cluster).get("deployments") or {}
        return deployments.get("GovernanceScorer", {}).get("status") == "DEPLOY_FAILED"

    failed_s = _wait("the scorer update fails", failed, 300, every_s=2)
    dep = _serve_status(cluster)["deployments"]["GovernanceScorer"]
    assert f"no governance artifacts in {empty} (manifest.json is missing)" in dep["message"]
    assert dep["replica_states"].get("RUNNING", 0) >= 1, dep  # the previous version's
    with cluster.client(key) as c:
        resp = c.post(f"/native-llm/agent/{agent_id}/chat", json={"message": "Hello there"})
    assert resp.status_code == 200, resp.text  # scored by a previous replica
    cluster.sh("deploy")  # the good config
    FIGURES["missing_artifacts"] = {
        "deploy_failed_within_s": round(failed_s, 1),
        "message_names": "the missing manifest and its directory",
        "previous_replicas_serving": dep["replica_states"].get("RUNNING", 0),
    }


def _raylets(cluster: Cluster) -> list[int]:
    out = subprocess.run(
        ["pgrep", "-f", f"raylet/raylet .*--resource_dir={cluster.state}/ray/"],
        capture_output=True,
        text=True,
    )
    return [int(p) for p in out.stdout.split()]


def test_head_lost_ends_the_cluster_and_a_redeploy_loses_nothing(
    cluster: Cluster, tenant: tuple[str, str]
) -> None:
    """Without GCS fault tolerance (it needs Redis) the head is the cluster: its loss takes
    the GCS, the controller, the proxy, the writer and the limiter. Measured: clients are
    refused at once (no hang); the worker nodes stop by themselves
    (RAY_gcs_rpc_server_reconnect_timeout_s) and no engine process survives them; a new
    cluster and `serve deploy` bring the service back, and its writer adopts the spool the
    dead one left: every chat answered before the loss has exactly one record."""
    key, agent_id = tenant
    engines = cluster.engine_pids()
    with Load(cluster, key, agent_id, workers=2) as load:
        _wait("chats answered before the loss", lambda: load.count(200) >= 8, 120)
        killed_at = time.monotonic()
        cluster.sh("kill-node", "head")
        _wait("requests refused", lambda: any(a[0] > killed_at for a in load.answers), 30)
    after = [(sent, a, s, b) for sent, a, s, b in load.answers if sent > killed_at]
    # Refused or disconnected by the dead proxy's host: a transport error at once, no hang.
    assert all(s == 0 for _, _, s, _ in after), after[:3]
    refused_within = max(a - sent for sent, a, _, _ in after)
    assert refused_within < FAIL_FAST_S, refused_within
    stopped_s = _wait("the worker nodes stop", lambda: not _raylets(cluster), 180)
    _wait(
        "the engine processes end",
        lambda: not [p for p in engines if Path(f"/proc/{p}").exists()],
        30,
    )
    ids = load.ok_ids()
    pending = len(ids) - len(rows_per_message(cluster.database_url, ids))  # in the spool only
    t0 = time.monotonic()
    cluster.sh("down", timeout=120)
    cluster.sh("up")
    cluster.sh("deploy")
    redeploy_s = time.monotonic() - t0
    wait_until_every_row(cluster, load.ok_ids())
    FIGURES["head_loss"] = {
        "chats_answered_before": load.count(200),
        "requests_after_loss": len(after),
        "refused_within_s": round(refused_within, 3),
        "refusals": sorted({b["transport_error"].split("(")[0] for _, _, _, b in after}),
        "worker_nodes_stopped_s": round(stopped_s, 1),
        "engine_processes_left": 0,
        "redeploy_s": round(redeploy_s, 1),
        "records_only_in_the_spool_at_loss": pending,
        "records_missing": 0,
        "records_doubled": 0,
    }


def test_audit_chain_verifies_after_the_losses(cluster: Cluster, tenant: tuple[str, str]) -> None:
    _key, agent_id = tenant
    out = subprocess.run(
        [str(REPO / ".venv" / "bin" / "promethios"), "audit", "verify", agent_id],
        env={**cluster.env, "DATABASE_URL": cluster.database_url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    report = json.loads(out.stdout)
    assert report["intact"] is True and report["records"] > 0, report
    FIGURES["audit_chain"] = {"records": report["records"], "intact": report["intact"]}
