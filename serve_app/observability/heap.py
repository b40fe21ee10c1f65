"""Opt-in heap profiling of a running process: where does memory grow?

With `PROMETHIOS_HEAP_PROFILE=DIR` set, each graph process that configures logging
(`configure_from_settings`) samples its resident memory and glibc's heap counters
(bytes in use vs free bytes the allocator keeps) every
`PROMETHIOS_HEAP_PROFILE_EVERY_S` (default 60) seconds. With
`PROMETHIOS_HEAP_PROFILE_TRACE=1` it also runs `tracemalloc`, takes a baseline after
`PROMETHIOS_HEAP_PROFILE_WARMUP_S` (default 60) seconds and writes the Python
allocation sites whose live memory grew most since then.
`PROMETHIOS_HEAP_PROFILE_ONLY` (comma-separated components, e.g. `Ingress`) limits it
to those processes. Used by `bench/soak.py --heap-profile` to explain a memory trend;
tracing slows the process down, so all of it is off unless asked for.
"""

from __future__ import annotations

import ctypes
import json
import os
import threading
import time
import tracemalloc
from pathlib import Path

ENV_DIR = "PROMETHIOS_HEAP_PROFILE"
_started = False


def _rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return float("nan")


def growth_report(
    base: tracemalloc.Snapshot, now: tracemalloc.Snapshot, top: int = 25, frames: int = 6
) -> str:
    """The `top` allocation sites (by traceback) that grew most between the snapshots."""
    filters = [  # the profiler's own work (snapshots, reading source lines) is not growth
        tracemalloc.Filter(False, __file__, all_frames=True),
        tracemalloc.Filter(False, tracemalloc.__file__, all_frames=True),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    ]
    base, now = base.filter_traces(filters), now.filter_traces(filters)
    stats = sorted(now.compare_to(base, "traceback"), key=lambda s: s.size_diff, reverse=True)
    total = sum(s.size_diff for s in stats)
    traced, _peak = tracemalloc.get_traced_memory()
    lines = [
        f"python heap growth {total / 1024:.1f} KiB over {len(stats)} sites; "
        f"traced now {traced / 2**20:.1f} MiB; resident {_rss_mib():.1f} MiB"
    ]
    for stat in stats[:top]:
        lines.append(
            f"\n+{stat.size_diff / 1024:.1f} KiB ({stat.count_diff:+d} blocks), "
            f"now {stat.size / 1024:.1f} KiB"
        )
        lines.extend(f"    {line}" for line in stat.traceback.format(limit=frames))
    return "\n".join(lines) + "\n"


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
            "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def malloc_stats() -> dict[str, float]:
    """glibc's view of this process's heap (MiB): bytes in use by the program, free bytes
    the allocator keeps, and mmapped blocks. Empty where mallinfo2 is missing."""
    try:
        libc = ctypes.CDLL(None)
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _MallInfo2
    m = fn()
    mib = 2**20
    return {
        "malloc_in_use_mib": round((m.uordblks + m.hblkhd) / mib, 2),
        "malloc_free_kept_mib": round(m.fordblks / mib, 2),
        "malloc_arena_mib": round(m.arena / mib, 2),
    }


def sample() -> dict[str, float]:
    """Resident memory, the allocator's view and, when tracing, Python's traced bytes."""
    out = {"t": round(time.time(), 1), "rss_mib": round(_rss_mib(), 2), **malloc_stats()}
    if tracemalloc.is_tracing():
        out["python_traced_mib"] = round(tracemalloc.get_traced_memory()[0] / 2**20, 2)
    return out


def start_from_env(component: str) -> bool:
    """Start the profiler thread when PROMETHIOS_HEAP_PROFILE names a directory.

    Every PROMETHIOS_HEAP_PROFILE_EVERY_S a line of `sample()` goes to
    `DIR/<component>-<pid>.jsonl`; with PROMETHIOS_HEAP_PROFILE_TRACE=1 tracemalloc also
    runs and `DIR/<component>-<pid>.txt` holds the growth report since the baseline.
    """
    global _started
    out_dir = os.environ.get(ENV_DIR)
    only = [c.strip() for c in os.environ.get("PROMETHIOS_HEAP_PROFILE_ONLY", "").split(",")]
    if not out_dir or _started or (any(only) and component not in only):
        return False
    _started = True
    warmup = float(os.environ.get("PROMETHIOS_HEAP_PROFILE_WARMUP_S", "60"))
    every = float(os.environ.get("PROMETHIOS_HEAP_PROFILE_EVERY_S", "60"))
    trace = os.environ.get("PROMETHIOS_HEAP_PROFILE_TRACE", "") == "1"
    stem = Path(out_dir) / f"{component or 'process'}-{os.getpid()}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    if trace:
        tracemalloc.start(12)

    def run() -> None:
        started = time.monotonic()
        base = None
        while True:
            with open(stem.with_suffix(".jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps({"s": round(time.monotonic() - started, 1), **sample()}) + "\n")
            if trace and base is None and time.monotonic() - started >= warmup:
                base = tracemalloc.take_snapshot()
            elif base is not None:
                report = growth_report(base, tracemalloc.take_snapshot())
                stem.with_suffix(".txt").write_text(f"{component} pid {os.getpid()}\n{report}")
            time.sleep(every)

    threading.Thread(target=run, name="heap-profile", daemon=True).start()
    return True
