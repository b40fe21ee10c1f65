"""The metrics writer: one actor that batches interaction records into the database."""

from __future__ import annotations

from typing import Any

from ray import serve

from serve_app.recording import InteractionRecorder
from serve_app.store import Store
from serve_app.store.records import InteractionRecord


@serve.deployment(
    name="MetricsWriter",
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=1000,
)
class MetricsWriter:
    """Accepts records (`record`), writes them in batches, `flush`es on demand."""

    def __init__(self, database_url: str, flush_interval_s: float = 0.05) -> None:
        self.store = Store(database_url)
        self.store.migrate()
        self.recorder = InteractionRecorder(
            self.store.insert_interactions, flush_interval_s=flush_interval_s
        )

    async def record(self, records: list[InteractionRecord]) -> int:
        """Buffer records; returns how many are pending (written within a flush interval)."""
        self.recorder.start()
        self.recorder.add(records)
        return self.recorder.pending

    async def flush(self) -> int:
        self.recorder.start()
        return await self.recorder.flush()

    def stats(self) -> dict[str, Any]:
        r = self.recorder
        return {
            "pending": r.pending,
            "written": r.written,
            "failures": r.failures,
            "last_error": r.last_error,
            "last_flush_at": r.last_flush_at,
        }

    def check_health(self) -> None:
        self.store.ping()
