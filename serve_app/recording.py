"""Batching of interaction records into the store, with retry: nothing accepted is dropped.

`InteractionRecorder` is plain asyncio; the metrics-writer deployment wraps it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from serve_app.store.records import InteractionRecord

log = logging.getLogger("promethios.recording")


class InteractionRecorder:
    """Buffers records; a background loop writes them in batches, retrying on failure."""

    def __init__(
        self,
        insert: Callable[[list[InteractionRecord]], int],
        *,
        flush_interval_s: float = 0.05,
        max_batch: int = 1000,
        retry_backoff_s: float = 0.5,
    ) -> None:
        self._insert = insert
        self._buffer: list[InteractionRecord] = []
        self._flush_interval_s = flush_interval_s
        self._max_batch = max_batch
        self._retry_backoff_s = retry_backoff_s
        self._lock = asyncio.Lock()
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.written = 0
        self.failures = 0
        self.last_error: str | None = None
        self.last_flush_at: float | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def add(self, records: list[InteractionRecord]) -> None:
        """Accept records into the buffer (they are written within a flush interval)."""
        self._buffer.extend(records)
        if len(self._buffer) >= self._max_batch:
            self._wakeup.set()

    async def flush(self) -> int:
        """Write everything buffered now; returns rows inserted; raises if the store fails."""
        async with self._lock:
            written = 0
            while self._buffer:
                batch = self._buffer[: self._max_batch]
                try:
                    written += await asyncio.to_thread(self._insert, batch)
                except Exception as exc:
                    self.failures += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    raise
                del self._buffer[: len(batch)]
            self.written += written
            self.last_flush_at = time.time()
            return written

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._flush_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wakeup.clear()
            if not self._buffer:
                continue
            try:
                await self.flush()
            except Exception:
                log.exception("interaction flush failed; %d records kept for retry", self.pending)
                await asyncio.sleep(self._retry_backoff_s)
