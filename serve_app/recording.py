"""Batching of interaction records into the store, with retry: nothing accepted is dropped.

`InteractionRecorder` is plain asyncio; the metrics-writer deployment wraps it.

With a spool directory, a record is appended to a local segment file and synced to
disk (`fdatasync`) before it is accepted (`add` returns), and the segment is deleted
only once its records are in the database. Each writer holds an exclusive lock on its
own lock file for its whole life; a segment is adopted by another writer only when its
owner's lock can be taken (the kernel releases it when the owner dies, whatever
becomes of its PID), never by a PID check that a reused PID could fool. So an accepted
record survives the writer process being killed (the next writer replays the segments
a dead process left), the machine losing power, and the database being unreachable
(records wait in the buffer and the spool, and are written when it is back). Inserts
are idempotent by message id, so a replay never doubles a row.

The backlog is bounded (`max_pending` records): during a long outage, once it is
full the writer refuses new records with `AuditBacklogFull` (the client gets 503
`audit_unavailable` and no answer), so nothing is answered that cannot be recorded
and the spool cannot fill the disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

from serve_app.errors import AuditUnavailable
from serve_app.store.engine import database_unreachable
from serve_app.store.records import InteractionRecord

log = logging.getLogger("promethios.recording")


DEFAULT_MAX_PENDING = 100_000


class AuditBacklogFull(AuditUnavailable):
    """The writer's backlog is full (the database has been unreachable a while)."""


def spool_dir_for(database_url: str, base: Path) -> Path:
    """The spool directory of one database under `base` (writers of other databases keep apart)."""
    return base / hashlib.sha256(database_url.encode("utf-8")).hexdigest()[:16]


def transient(exc: BaseException) -> bool:
    """A lost or refused connection (retry the batch later), not a record the store refuses."""
    return isinstance(exc, (ConnectionError, TimeoutError, OSError)) or database_unreachable(exc)


RESERVED = "_reserved"
# How long a reservation waits for its completed record before it is written as is.
RESERVATION_TTL_S = 900.0


INTERRUPTED = "(stream interrupted before its record was completed)"


def interrupted(rec: InteractionRecord) -> InteractionRecord:
    """A reservation written as the record of a stream that did not finish recording."""
    return dataclasses.replace(rec, status="error", response=rec.response or INTERRUPTED)


def merge_replayed(records: list[InteractionRecord]) -> list[InteractionRecord]:
    """One record per message id from replayed segments, in order: a completed record
    wins over the interrupted form of its reservation, wherever each was spooled."""
    out: dict[str, InteractionRecord] = {}
    for rec in records:
        held = out.get(rec.message_id)
        if held is None or (held.response == INTERRUPTED and rec.response != INTERRUPTED):
            out[rec.message_id] = rec
    return list(out.values())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


class Spool:
    """Append-only segment files `<owner>-<n>.jsonl` of records not yet in the database.

    `<owner>` is `<pid>.<random>`; `<owner>.lock` is held (flock) while the owner lives.
    Segments named `<pid>-<n>.jsonl` (before owner locks) are adopted when that PID is gone.
    """

    def __init__(self, directory: Path, *, sync: bool = True) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pid = os.getpid()
        self.owner = f"{self.pid}.{uuid.uuid4().hex[:12]}"
        self.sync = sync
        self._lock_fd = os.open(self.dir / f"{self.owner}.lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._seq = 0
        self._file: IO[str] | None = None
        self._path: Path | None = None

    def _next_path(self, tag: str = "") -> Path:
        self._seq += 1
        return self.dir / f"{self.owner}-{tag}{self._seq:08d}.jsonl"

    def _sync_dir(self) -> None:
        if self.sync:
            fd = os.open(self.dir, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def append(self, records: list[InteractionRecord], *, reserved: bool = False) -> Path:
        """Write `records` to the open segment and sync it: on disk when this returns.
        `reserved`: they are reservations (a stream's record, completed later). Returns
        the segment's path."""
        if self._file is None:
            self._path = self._next_path()
            self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115
            self._sync_dir()  # the new file's name survives a crash too
        mark = {RESERVED: True} if reserved else {}
        self._file.write("".join(json.dumps({**r.to_dict(), **mark}) + "\n" for r in records))
        self._file.flush()
        if self.sync:
            os.fdatasync(self._file.fileno())
        assert self._path is not None
        return self._path

    def seal(self) -> Path | None:
        """Close the open segment (new records go to a new one); its path, or None."""
        if self._file is None:
            return None
        self._file.close()
        path, self._file, self._path = self._path, None, None
        return path

    def _owner_gone(self, owner: str) -> int | bool:
        """Whether `owner`'s segments may be adopted: True (no lock file), an fd holding its
        lock (the owner is dead; release it after adopting), or False (alive)."""
        if owner.isdigit():  # a segment from before owner locks
            return not _pid_alive(int(owner))
        if "." not in owner:
            return False  # not a segment (dead-letter.jsonl)
        try:
            fd = os.open(self.dir / f"{owner}.lock", os.O_RDWR)
        except FileNotFoundError:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        return fd

    def adopt_orphans(self) -> list[tuple[Path, list[InteractionRecord]]]:
        """Segments of writer processes that are gone, renamed as ours, with their records;
        their lock files are removed."""
        found = []
        verdicts: dict[str, int | bool] = {}
        for path in sorted(self.dir.glob("*.jsonl")):
            owner = path.name.split("-", 1)[0]
            if owner == self.owner:
                continue
            if owner not in verdicts:
                verdicts[owner] = self._owner_gone(owner)
            if verdicts[owner] is False:
                continue
            mine = self._next_path("adopted-")
            try:
                os.rename(path, mine)  # atomic: one adopter wins
            except FileNotFoundError:
                continue
            found.append((mine, self.load(mine)))
        for lock in self.dir.glob("*.lock"):  # dead owners' locks, segments or not
            owner = lock.name[: -len(".lock")]
            if owner != self.owner and owner not in verdicts:
                verdicts[owner] = self._owner_gone(owner)
        for owner, verdict in verdicts.items():
            if verdict is not False and verdict is not True:
                (self.dir / f"{owner}.lock").unlink(missing_ok=True)
                os.close(int(verdict))
        if found:
            self._sync_dir()
        return found

    @staticmethod
    def load(path: Path) -> list[InteractionRecord]:
        """The segment's records. A reservation (a stream's record taken before its first
        chunk) stands for its exchange until the completed record replaces it: one left
        alone is the record of a stream its writer never saw finish."""
        records: dict[str, InteractionRecord] = {}
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                data = json.loads(line)
                rec = InteractionRecord.from_dict(data)
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by a kill was never accepted
            if data.get(RESERVED):
                records.setdefault(rec.message_id, interrupted(rec))
            else:
                records[rec.message_id] = rec
        return list(records.values())

    def dead_letter(self, records: list[InteractionRecord]) -> None:
        """Keep records the store refuses in `dead-letter.jsonl` (never replayed by itself)."""
        with open(self.dir / "dead-letter.jsonl", "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(r.to_dict()) + "\n" for r in records))

    def close(self) -> None:
        """Close the open segment and give up the owner lock (a clean shutdown)."""
        self.seal()
        if self._lock_fd >= 0:
            (self.dir / f"{self.owner}.lock").unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = -1

    def usage(self) -> dict[str, int]:
        """Segments and bytes on disk now (records not yet in the database), and the
        dead-letter file's size."""
        segments = [p for p in self.dir.glob("*.jsonl") if p.name != "dead-letter.jsonl"]
        dead = self.dir / "dead-letter.jsonl"
        return {
            "spool_segments": len(segments),
            "spool_bytes": sum(_size(p) for p in segments),
            "dead_letter_bytes": _size(dead),
        }

    @staticmethod
    def release(paths: list[Path]) -> None:
        for path in paths:
            path.unlink(missing_ok=True)


class InteractionRecorder:
    """Buffers records; a background loop writes them in batches, retrying on failure."""

    def __init__(
        self,
        insert: Callable[[list[InteractionRecord]], int],
        *,
        flush_interval_s: float = 0.05,
        max_batch: int = 1000,
        retry_backoff_s: float = 0.5,
        spool_dir: Path | None = None,
        max_pending: int = DEFAULT_MAX_PENDING,
    ) -> None:
        self._insert = insert
        self.max_pending = max_pending
        self.refused = 0
        self._buffer: list[InteractionRecord] = []
        self._spool = Spool(spool_dir) if spool_dir is not None else None
        self._sealed: list[Path] = []  # spool segments whose records are all in _buffer
        # Streams' reservations not completed yet: message id -> (record, its segment, when).
        self._reserved: dict[str, tuple[InteractionRecord, Path | None, float]] = {}
        self._flush_interval_s = flush_interval_s
        self._max_batch = max_batch
        self._retry_backoff_s = retry_backoff_s
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.written = 0
        self.failures = 0
        self.dead_letters = 0
        self.last_error: str | None = None
        self.last_flush_at: float | None = None

    def start(self) -> None:
        if self._task is None:
            if self._spool is not None:
                replayed: list[InteractionRecord] = []
                for path, records in self._spool.adopt_orphans():
                    replayed.extend(records)
                    self._sealed.append(path)
                    log.info("replaying %d spooled record(s) from %s", len(records), path.name)
                self._buffer.extend(merge_replayed(replayed))
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def check(self) -> None:
        """Raise when records can no longer be accepted: the flush loop has died."""
        if self._task is not None and self._task.done():
            exc = None if self._task.cancelled() else self._task.exception()
            raise RuntimeError(f"the writer's flush loop stopped: {exc!r}")

    def reserve(self, record: InteractionRecord) -> None:
        """Accept a stream's record before its first chunk leaves (spooled and synced like
        `add`); `add` of a record with the same message id completes it. Until then it is
        held, not written; a writer that dies leaves it in the spool, and the next one
        writes it as an interrupted stream. Raises AuditBacklogFull when full."""
        self._refuse_if_full(len(self._buffer) + len(self._reserved), 1)
        path = self._spool.append([record], reserved=True) if self._spool is not None else None
        self._reserved[record.message_id] = (record, path, time.monotonic())

    def _expire_reservations(self, max_age_s: float = RESERVATION_TTL_S) -> None:
        """Reservations whose completion never came (the ingress died mid-stream) are
        written as interrupted streams."""
        now = time.monotonic()
        self._write_as_interrupted(
            [m for m, (_, _, t) in self._reserved.items() if now - t > max_age_s]
        )

    def _write_as_interrupted(self, message_ids: list[str]) -> None:
        """Move reservations to the buffer as interrupted streams. They were admitted under
        the bound and are spooled already (their spool lines replay as interrupted too), so
        this neither checks the bound nor spools again: it cannot fail in the flush loop."""
        for m in message_ids:
            self._buffer.append(interrupted(self._reserved.pop(m)[0]))

    def _refuse_if_full(self, held: int, adding: int) -> None:
        """Raise AuditBacklogFull, counting the refused records, when `held + adding`
        records would pass the backlog's bound."""
        if held + adding > self.max_pending:
            self.refused += adding
            raise AuditBacklogFull(
                f"the audit backlog is full ({len(self._buffer)} records waiting for the "
                f"database; last error: {self.last_error or 'none'})"
            )

    def add(self, records: list[InteractionRecord]) -> None:
        """Accept records (spooled first, when spooling); written within a flush interval.

        Raises AuditBacklogFull, accepting none of them, when the backlog is full."""
        if records:
            self._refuse_if_full(len(self._buffer), len(records))
        if self._spool is not None and records:
            self._spool.append(records)
        for r in records:
            self._reserved.pop(r.message_id, None)  # completed
        self._buffer.extend(records)
        if len(self._buffer) >= self._max_batch:
            self._wakeup.set()

    async def flush(self) -> int:
        """Write everything buffered now; returns rows inserted; raises if the store fails."""
        async with self._lock:
            written = 0
            done = self._segments_in_buffer()
            while self._buffer:
                batch = self._buffer[: self._max_batch]
                try:
                    written += await asyncio.to_thread(self._insert, batch)
                except Exception as exc:
                    self.failures += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    if transient(exc):
                        raise
                    written += await self._isolate(batch)
                del self._buffer[: len(batch)]
            self._release(done)
            self.written += written
            self.last_flush_at = time.time()
            return written

    def _segments_in_buffer(self) -> list[Path]:
        """Seal the open spool segment and list every segment whose records are all in
        the buffer now (released once the buffer is written)."""
        if self._spool is not None:
            sealed = self._spool.seal()
            if sealed is not None:
                self._sealed.append(sealed)
        # A segment holding a reservation not completed yet stays until it is.
        held = {path for _, path, _ in self._reserved.values()}
        return [p for p in self._sealed if p not in held]

    def _release(self, done: list[Path]) -> None:
        if self._spool is not None:
            Spool.release(done)
            self._sealed = [p for p in self._sealed if p not in done]

    def stats(self) -> dict[str, object]:
        """The writer's state: backlog, totals, last error, and what the spool holds."""
        out: dict[str, object] = {
            "pending": self.pending,
            "reserved": len(self._reserved),
            "max_pending": self.max_pending,
            "written": self.written,
            "failures": self.failures,
            "refused": self.refused,
            "dead_letters": self.dead_letters,
            "last_error": self.last_error,
            "last_flush_at": self.last_flush_at,
        }
        if self._spool is not None:
            out.update(self._spool.usage())
        return out

    def flush_now(self) -> int:
        """Write the buffer synchronously (a clean shutdown, when the loop is gone); the
        spool segments are released once their records are in. Reservations still open
        are written as interrupted streams. Returns rows inserted; on failure everything
        stays in the spool for the next writer."""
        self._write_as_interrupted(list(self._reserved))
        if not self._buffer:
            return 0
        written = 0
        done = self._segments_in_buffer()
        for i in range(0, len(self._buffer), self._max_batch):
            written += self._insert(self._buffer[i : i + self._max_batch])
        self._buffer.clear()
        self._release(done)
        self.written += written
        return written

    async def _isolate(self, batch: list[InteractionRecord]) -> int:
        """After a batch failed on its data (not on the connection), insert its records
        one by one. Those the store refuses are poison: they are set aside in the spool's
        dead-letter file and logged, so they cannot block the rest. Returns rows inserted;
        raises (keeping the batch for retry) if the store becomes unreachable meanwhile."""
        inserted, bad = 0, []
        for record in batch:
            try:
                inserted += await asyncio.to_thread(self._insert, [record])
            except Exception as exc:
                if transient(exc):
                    raise
                bad.append(record)
        if bad:
            self.dead_letters += len(bad)
            if self._spool is not None:
                self._spool.dead_letter(bad)
            log.error(
                "%d record(s) refused by the store, set aside in the dead-letter file",
                len(bad),
                extra={"message_ids": [r.message_id for r in bad]},
            )
        return inserted

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._flush_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wakeup.clear()
            self._expire_reservations()
            if not self._buffer:
                continue
            try:
                await self.flush()
            except Exception:
                log.exception("interaction flush failed; %d records kept for retry", self.pending)
                await asyncio.sleep(self._retry_backoff_s)
