"""A vLLM general plugin (entry point `vllm.general_plugins`): how long the engine's
processes busy-wait for each other.

vLLM's engine core and its worker process exchange every step through a shared-memory
queue whose reader spins (`sched_yield`) for one second after each message before it
sleeps on a socket. On a 2-core CPU host the two spinning processes take the cores the
ingress, scorer and writer need (profiled under load: 54-78 % of their samples in that
loop, ~1.9 cores at concurrency 1). With `PROMETHIOS_VLLM_BUSY_LOOP_S` set, readers
spin that long instead and then sleep until the writer's socket notification wakes
them. That notification can be lost (vLLM bounds the loss by re-checking the queue
every 5 s: with short spins, readers sleep often and c=1 answers stalled for seconds
in the benchmark), so the re-check interval becomes `PROMETHIOS_VLLM_RECHECK_MS`
(default 2 ms; ~500 flag checks a second for a sleeping reader). Unset, vLLM is
untouched (its own OpenAI server in the benchmark, too).
vLLM loads general plugins in every engine process, so the setting reaches them all.
The plugin also ties each engine process's life to its parent's (engine/lifeline.py).
"""

from __future__ import annotations

import os

from serve_app.engine import lifeline

ENV = "PROMETHIOS_VLLM_BUSY_LOOP_S"


def register() -> None:
    lifeline.watch_parent()
    value = os.environ.get(ENV)
    if not value:
        return
    busy_loop_s = float(value)
    from vllm.distributed.device_communicators import shm_broadcast

    shm_broadcast.SHM_READER_RECHECK_INTERVAL_MS = int(
        os.environ.get("PROMETHIOS_VLLM_RECHECK_MS", "2")
    )
    cls = shm_broadcast.SpinCondition
    if getattr(cls, "_promethios_busy_loop_s", None) is not None:
        cls._promethios_busy_loop_s = busy_loop_s
        return
    original_wait = cls.wait

    def wait(self, timeout_ms: int | None = None) -> None:  # noqa: ANN001
        if self.is_reader:
            self.busy_loop_s = cls._promethios_busy_loop_s
        return original_wait(self, timeout_ms)

    cls._promethios_busy_loop_s = busy_loop_s
    cls.wait = wait
