"""Durability the docs promise (issue 23, item 5): a record counts as accepted only once it
is on disk; a dead writer's segments are adopted by its lock, not by a PID that can be
reused; a writer whose database is down stays up and spools. Real processes, real files,
a real (unreachable) PostgreSQL URL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.launcher import free_port
from serve_app import recording
from serve_app.recording import InteractionRecorder, Spool
from serve_app.store.records import InteractionRecord

REPO = Path(__file__).resolve().parents[2]


def _records(n: int, start: int = 0) -> list[InteractionRecord]:
    return [
        InteractionRecord(message_id=f"msg-{i:06d}", agent_id="native-0000000a", user_id="u")
        for i in range(start, start + n)
    ]


def _writer_process(spool: Path, n: int) -> subprocess.Popen:
    """Another process that accepts `n` records into its spool, says so, then waits."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from pathlib import Path
        from serve_app.recording import Spool
        from serve_app.store.records import InteractionRecord
        s = Spool(Path({str(spool)!r}))
        s.append([InteractionRecord(message_id=f"msg-{{i:06d}}", agent_id="a", user_id="u")
                  for i in range({n})])
        print("accepted", flush=True)
        time.sleep(600)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "accepted"
    return proc


def test_a_live_writers_segments_are_not_taken_and_a_killed_ones_are(tmp_path: Path) -> None:
    proc = _writer_process(tmp_path, 25)
    try:
        me = Spool(tmp_path)
        assert me.adopt_orphans() == []  # alive: its lock is held
        proc.send_signal(signal.SIGKILL)  # no clean shutdown: only the kernel frees the lock
        proc.wait()
        adopted = me.adopt_orphans()
        assert sum(len(records) for _, records in adopted) == 25
        assert not list(tmp_path.glob(f"{proc.pid}.*.lock"))  # the dead owner's lock is gone
    finally:
        proc.kill()


def test_a_reused_pid_does_not_keep_a_dead_writers_records_from_being_replayed(
    tmp_path: Path,
) -> None:
    """The attack on PID-based adoption: the dead writer's PID now belongs to a live
    process (here: this one), so `kill(pid, 0)` says alive and the records were never
    replayed. The owner's lock is what counts."""
    stale = tmp_path / f"{os.getpid()}.0123456789ab-00000001.jsonl"
    stale.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in _records(7)))
    (tmp_path / f"{os.getpid()}.0123456789ab.lock").write_text("")  # its lock, not held
    adopted = Spool(tmp_path).adopt_orphans()
    assert [len(records) for _, records in adopted] == [7]


def test_a_record_is_on_disk_before_it_counts_as_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:  # the real call, noted
        real(fd)
        synced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(recording.os, "fdatasync", fdatasync)

    async def run() -> None:
        rec = InteractionRecorder(lambda r: len(r), flush_interval_s=60, spool_dir=tmp_path)
        rec.add(_records(3))
        assert synced and synced[-1] == sum(p.stat().st_size for p in tmp_path.glob("*.jsonl"))

    asyncio.run(run())


def test_a_writer_whose_database_is_down_stays_up_and_spools(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deployments.metrics_writer import MetricsWriter
    from serve_app.settings import get_settings

    monkeypatch.setenv("PROMETHIOS_SPOOL_DIR", str(tmp_path))
    get_settings.cache_clear()
    down = f"postgresql+psycopg2://u@127.0.0.1:{free_port()}/nowhere?connect_timeout=2"
    try:
        writer = MetricsWriter.func_or_class(down, 0.05)  # the class Serve would run

        async def run() -> dict:
            await writer.record(_records(5))
            await asyncio.sleep(0.3)  # a failed flush or two
            writer.check_health()  # healthy: Serve must not restart it into a loop
            return writer.stats()

        started = time.monotonic()
        stats = asyncio.run(run())
    finally:
        get_settings.cache_clear()
    assert stats["pending"] == 5 and stats["failures"] >= 1 and stats["spool_segments"] >= 1
    assert time.monotonic() - started < 30
