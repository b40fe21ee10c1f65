"""Start the graph with `serve run` on a derived config and wait until it is healthy.

Used by the integration tests and the benchmark, so both exercise the same command
users run (`make run` is `serve run configs/local.yaml`).
"""

from __future__ import annotations

import os
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


@dataclass
class GraphProcess:
    """A running `serve run` and where it serves."""

    proc: subprocess.Popen
    base_url: str
    database_url: str
    log_path: Path

    def stop(self, timeout_s: float = 60.0) -> None:
        """SIGINT (Serve shuts the application and its Ray cluster down), then SIGKILL."""
        if self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def start_graph(
    workdir: Path,
    database_url: str,
    *,
    base_config: Path = REPO / "configs" / "local.yaml",
    args: dict[str, Any] | None = None,
    timeout_s: float = 600.0,
) -> GraphProcess:
    """Serve `base_config` with its port, database and `args` overridden; wait for health.

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
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}
    env.setdefault("PROMETHIOS_LOG_DIR", str(workdir / "logs"))  # the seed's log files
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
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            tail = log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"serve run exited {proc.returncode}:\n{tail}")
        try:
            if httpx.get(f"{graph.base_url}/native-llm/health", timeout=5).status_code == 200:
                return graph
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            graph.stop()
            tail = log_path.read_text(errors="replace")[-4000:]
            raise RuntimeError(f"graph not healthy in {timeout_s:.0f} s:\n{tail}")
        time.sleep(2)


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
