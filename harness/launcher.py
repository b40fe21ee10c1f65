"""Start the graph with `serve run` on a derived config and wait until it is healthy.

Used by the integration tests and the benchmark, so both exercise the same command
users run (`make run` is `serve run configs/local.yaml`).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True)
class GraphMember:
    """One process of a running graph."""

    pid: int
    pgid: int
    cmd: str
    rss_bytes: int


@dataclass
class GraphProcess:
    """A running `serve run` and where it serves."""

    proc: subprocess.Popen
    base_url: str
    database_url: str
    log_path: Path
    app_name: str = "promethios"
    log_dir: Path | None = None  # PROMETHIOS_LOG_DIR of the graph's processes

    def dashboard_url(self) -> str | None:
        """The Ray dashboard of this graph's own local cluster, as `serve run` logged it.

        Ray takes 8265 or, when that is busy, the next free port; None if not logged yet.
        """
        text = re.sub(r"\x1b\[[0-9;]*m", "", self.log_path.read_text(errors="replace"))
        m = re.search(r"View the dashboard at (https?://\S+)", text)
        return m.group(1) if m else None

    def processes(self) -> list[GraphMember]:
        """Every live process of this graph: `serve run` and what it started (its session).

        `serve run` starts in a new session, and Ray's processes (GCS, raylet,
        Serve controller, replicas and their engine subprocesses) stay in it.
        """
        members = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                fields = stat[stat.rindex(")") + 2 :].split()
                if int(fields[3]) != self.proc.pid:  # field 6 of stat: the session id
                    continue
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                rss_pages = int((entry / "statm").read_text().split()[1])
            except (OSError, ValueError, IndexError):
                continue
            members.append(
                GraphMember(int(entry.name), int(fields[2]), cmd, rss_pages * _PAGE_BYTES)
            )
        return sorted(members, key=lambda m: m.pid)

    def replica_pids(self, deployment: str) -> list[int]:
        """The pids of `deployment`'s Serve replica actors (process title ray::ServeReplica:...)."""
        tag = f"ServeReplica:{self.app_name}:{deployment}"
        return [m.pid for m in self.processes() if m.cmd.startswith("ray::") and tag in m.cmd]

    def kill_replica(self, deployment: str) -> list[int]:
        """SIGKILL every replica of `deployment` with its subprocesses (as a crash would);
        Serve's controller notices and starts new ones. Returns the killed pids."""
        pids = self.replica_pids(deployment)
        for pid in pids:
            try:
                os.killpg(os.getpgid(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def ray_session_dir(self) -> Path | None:
        """The Ray session directory of this graph's local cluster (its logs are under it)."""
        found = sorted(Path("/tmp/ray").glob(f"session_*_{self.proc.pid}"))
        return found[-1] if found else None

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGINT (Serve shuts the application and its Ray cluster down), then SIGKILL."""
        stop_group(self.proc, timeout_s)


def stop_group(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGINT to a process started in its own session, SIGKILL when it outlives `timeout_s`."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_healthy(
    proc: subprocess.Popen, health_url: str, log_path: Path, timeout_s: float, what: str
) -> None:
    """Poll `health_url` until it answers 200; RuntimeError with the log's tail when the
    process exits first or `timeout_s` passes (the caller stops the process)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{what} exited {proc.returncode}:\n{tail}")
        try:
            if httpx.get(health_url, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            tail = log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"{what} not healthy in {timeout_s:.0f} s:\n{tail}")
        time.sleep(1)


def start_graph(
    workdir: Path,
    database_url: str,
    *,
    base_config: Path = REPO / "configs" / "local.yaml",
    args: dict[str, Any] | None = None,
    timeout_s: float = 600.0,
    env: dict[str, str] | None = None,
) -> GraphProcess:
    """Serve `base_config` with its port, database and `args` overridden; wait for health.

    `env` adds variables to the `serve run` environment (e.g. Ray Serve settings).

    Raises RuntimeError with the log's tail when the graph exits or is not healthy in time.
    """
    port = free_port()
    config = yaml.safe_load(base_config.read_text())
    config["http_options"]["port"] = port
    app_args = config["applications"][0]["args"]
    app_args["database_url"] = database_url
    app_args.update(args or {})
    config_path = workdir / "serve.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = workdir / "serve.log"
    env = {**os.environ, **(env or {}), "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}
    env.setdefault("PROMETHIOS_LOG_DIR", str(workdir / "logs"))  # the seed's log files
    # As `make run` and the image do: without it replicas' resident size creeps up.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    # As `make` and the image do: Serve's calls between deployments over gRPC.
    env.setdefault("RAY_SERVE_USE_GRPC_BY_DEFAULT", "1")
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
    graph = GraphProcess(proc, f"http://127.0.0.1:{port}", database_url, log_path)
    graph.log_dir = Path(env["PROMETHIOS_LOG_DIR"])
    try:
        wait_healthy(proc, f"{graph.base_url}/native-llm/health", log_path, timeout_s, "serve run")
    except RuntimeError:
        graph.stop()
        raise
    return graph


def create_user_key(database_url: str, user_id: str) -> str:
    """A new API key for `user_id` through the real CLI (its last line of output)."""
    out = subprocess.run(
        [str(BIN / "promethios"), "users", "create", user_id],
        env={**os.environ, "DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return out.stdout.strip().splitlines()[-1]


def create_agent(base_url: str, key: str, config: dict[str, Any]) -> str:
    """A new agent through the HTTP API (as the benchmarks and tools make them); its id."""
    resp = httpx.post(
        f"{base_url}/native-llm/agent/create",
        headers={"Authorization": f"Bearer {key}"},
        json={"config": config},
        timeout=60,
    )
    resp.raise_for_status()
    return str(resp.json()["data"]["agent_id"])
