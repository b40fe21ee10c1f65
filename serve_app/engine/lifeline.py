"""The engine's processes die with the replica that started them.

vLLM's `AsyncLLM` spawns an EngineCore process, which spawns its worker. When the replica
process ends without shutting the engine down (SIGKILL, a lost Ray node, `ray stop
--force`), they are orphaned and keep the model's memory (2.7 GB for the tiny model on
CPU; a GPU on a GPU node) until killed by hand. The replica marks itself with
`PARENT_ENV` before it starts the engine; each engine process (through the vLLM plugin,
which vLLM loads first thing in every engine process) then watches its own parent and
SIGKILLs itself when the parent is gone. A polling thread, not `PR_SET_PDEATHSIG`: that
signal fires when the *thread* that spawned the child exits, which for a replica need not
be the process's end. Outside a replica (vLLM's own server in the benchmark) the variable
is unset and nothing is watched.
"""

from __future__ import annotations

import os
import signal
import threading
import time

PARENT_ENV = "PROMETHIOS_ENGINE_PARENT_PID"
POLL_ENV = "PROMETHIOS_ENGINE_LIFELINE_S"
_watching = False


def mark_owner() -> None:
    """Called by the replica before it starts the engine: its descendants watch for its end."""
    os.environ[PARENT_ENV] = str(os.getpid())


def watch_parent(poll_s: float | None = None) -> bool:
    """In an engine process: exit when the parent process ends. True when watching."""
    global _watching
    owner = os.environ.get(PARENT_ENV)
    if not owner or _watching or str(os.getpid()) == owner:
        return False
    if poll_s is None:
        poll_s = float(os.environ.get(POLL_ENV, "0.5"))
    parent = os.getppid()
    if parent == 1:  # the parent is already gone: re-parented to init
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="promethios-lifeline", daemon=True).start()
    _watching = True
    return True
