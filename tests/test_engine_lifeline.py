"""The engine's processes end with the replica that started them (engine/lifeline.py).

Real processes, spawned the way vLLM spawns its EngineCore and worker: a "replica" marks
itself and spawns a child that loads the vLLM plugin, which spawns a grandchild that
loads it too. SIGKILL the replica: both descendants must be gone within seconds. Without
the mark (vLLM's own server) nothing watches, and the orphan survives: the control.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPLICA = r"""
import json, multiprocessing as mp, os, sys, time
from serve_app.engine import lifeline

def grandchild():
    from serve_app.engine import vllm_plugin
    vllm_plugin.register()
    time.sleep(120)

def child(path):
    from serve_app.engine import vllm_plugin
    vllm_plugin.register()
    g = mp.get_context("spawn").Process(target=grandchild)
    g.start()
    with open(path, "w") as f:
        json.dump({"child": os.getpid(), "grandchild": g.pid}, f)
    time.sleep(120)

if __name__ == "__main__":
    if sys.argv[2] == "mark":
        lifeline.mark_owner()
    else:
        os.environ.pop(lifeline.PARENT_ENV, None)
    os.environ[lifeline.POLL_ENV] = "0.1"
    mp.get_context("spawn").Process(target=child, args=(sys.argv[1],)).start()
    time.sleep(120)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purpose (it holds no memory); init reaps it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _start(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, dict[str, int]]:
    script = tmp_path / "replica.py"
    script.write_text(REPLICA)
    out = tmp_path / f"pids-{mode}.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, str(script), str(out), mode], env=env)
    deadline = time.monotonic() + 60
    while not (out.exists() and out.stat().st_size):
        assert time.monotonic() < deadline, "the spawned processes did not start"
        assert proc.poll() is None, "the replica process exited"
        time.sleep(0.1)
    time.sleep(0.2)
    return proc, json.loads(out.read_text())


def _wait_gone(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = [p for p in pids if _alive(p)]
        if not left:
            return []
        time.sleep(0.1)
    return [p for p in pids if _alive(p)]


def test_engine_processes_die_with_a_killed_replica(tmp_path: Path) -> None:
    proc, pids = _start(tmp_path, "mark")
    assert _alive(pids["child"]) and _alive(pids["grandchild"])
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = _wait_gone([pids["child"], pids["grandchild"]], 10)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert left == [], "engine processes outlived their replica"


def test_without_the_mark_the_orphans_survive(tmp_path: Path) -> None:
    """The control: the same tree unmarked keeps its orphans (so the test above bites)."""
    proc, pids = _start(tmp_path, "none")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    try:
        assert _wait_gone([pids["child"]], 2) == [pids["child"]]
    finally:
        for pid in pids.values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
