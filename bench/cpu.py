"""Where the CPU goes: CPU time per answered request, per process role, from /proc.

`snapshot()` reads utime + stime of every process on the machine and names it by
role (a Serve deployment, the proxy, vLLM's engine processes, Ray's own daemons);
`per_request(before, after, requests)` is the CPU milliseconds each role spent per
request in between. Processes that are not the graph's (the load generator, PostgreSQL,
anything else running on the machine) show under their own role or as "other".
"""

from __future__ import annotations

import os
import re
from collections import Counter

_TICKS = os.sysconf("SC_CLK_TCK")
_DEPLOYMENT = re.compile(r"ServeReplica:[^:]+:(\w+)")
_ROLES = (
    ("ProxyActor", "ServeProxy"),
    ("ServeController", "ServeController"),
    ("VLLM::EngineCore", "vLLM EngineCore"),
    ("VLLM::Worker", "vLLM Worker"),
    ("vllm.entrypoints.openai.api_server", "vLLM api_server"),
    ("gcs_server", "Ray gcs_server"),
    ("raylet", "Ray raylet"),
    ("log_monitor", "Ray log_monitor"),
    ("DashboardAgent", "Ray dashboard"),
    ("dashboard", "Ray dashboard"),
    ("harness.fake_upstream", "fake upstream"),
    ("bench/", "load generator"),
    ("postgres", "PostgreSQL"),
)


def role_of(cmdline: str) -> str:
    """A process's role from its command line (its Serve deployment name for a replica)."""
    m = _DEPLOYMENT.search(cmdline)
    if m:
        return m.group(1)
    for needle, role in _ROLES:
        if needle in cmdline:
            return role
    return "other"


def snapshot() -> dict[int, tuple[str, int]]:
    """pid -> (role, CPU ticks used so far) for every process that can be read."""
    out: dict[int, tuple[str, int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        comm = stat.split("(", 1)[1].rsplit(")", 1)[0]
        out[int(name)] = (role_of(f"{comm} {cmdline}"), int(fields[11]) + int(fields[12]))
    return out


def per_request(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], requests: int
) -> dict[str, float]:
    """CPU ms per request by role (roles under 0.05 ms left out), largest first, + total."""
    spent: Counter[str] = Counter()
    for pid, (role, ticks) in after.items():
        spent[role] += ticks - before.get(pid, (role, 0))[1]
    per_tick = 1000.0 / _TICKS / max(requests, 1)
    out = {
        role: round(ticks * per_tick, 2)
        for role, ticks in spent.most_common()
        if round(ticks * per_tick, 2) >= 0.05
    }
    out["total"] = round(sum(out.values()), 2)
    return out
