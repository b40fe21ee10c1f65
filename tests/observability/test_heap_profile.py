"""The soak's heap profiler: the allocator's view of a process, and the Python
allocation site that grew (not its own work)."""

from __future__ import annotations

import ctypes
import tracemalloc

from serve_app.observability.heap import growth_report, sample


def _allocate_records(n: int) -> list[bytearray]:
    return [bytearray(512) for _ in range(n)]


def test_growth_report_names_the_growing_site() -> None:
    tracemalloc.start(8)
    try:
        base = tracemalloc.take_snapshot()
        kept = _allocate_records(3000)
        report = growth_report(base, tracemalloc.take_snapshot())
    finally:
        tracemalloc.stop()
    assert len(kept) == 3000
    head, first = report.split("\n\n")[:2]
    assert head.startswith("python heap growth")
    assert "_allocate_records" in first or "test_heap_profile.py" in first
    size_kib = float(first.split()[0].lstrip("+"))
    assert size_kib >= 3000 * 512 / 1024  # the 1.5 MiB that was kept
    assert "heap.py" not in report.split("\n\n", 1)[1]  # its own snapshots are left out


def test_sample_tells_memory_in_use_from_free_memory_the_allocator_keeps() -> None:
    """What the soak reads to tell a leak (in use grows) from fragmentation (kept grows)."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = sample()
    blocks = [libc.malloc(2048) for _ in range(20000)]  # ~40 MiB in small heap chunks
    for b in blocks:
        ctypes.memset(b, 1, 2048)
    held = sample()
    for b in blocks[:-1]:  # the last one pins the top of the heap: nothing is returned
        libc.free(b)
    freed = sample()
    libc.free(blocks[-1])
    assert held["malloc_in_use_mib"] - before["malloc_in_use_mib"] > 35
    assert held["malloc_in_use_mib"] - freed["malloc_in_use_mib"] > 35
    assert freed["malloc_free_kept_mib"] - held["malloc_free_kept_mib"] > 35
    assert freed["rss_mib"] > held["rss_mib"] - 5  # freed, yet still resident
    assert before["rss_mib"] > 0
