"""The metrics writer: one actor that batches interaction records into the database."""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from serve_app.observability.logs import configure_from_settings
from serve_app.observability.metrics import MetricsAggregate, MetricsDelta
from serve_app.recording import InteractionRecorder, spool_dir_for, transient
from serve_app.settings import get_settings
from serve_app.store import Store
from serve_app.store.records import InteractionRecord

log = logging.getLogger("promethios.writer")


@serve.deployment(
    name="MetricsWriter",
    num_replicas=1,
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=1000,
)
class MetricsWriter:
    """Accepts records (`record`), writes them in batches, `flush`es on demand."""

    def __init__(self, database_url: str, flush_interval_s: float = 0.05) -> None:
        configure_from_settings("MetricsWriter")
        self.metrics = MetricsAggregate()
        self.store = Store(database_url)
        try:
            # The application builder migrated the schema (the one place that does); the
            # writer only checks it, and refuses to start on an older one (SchemaOutOfDate).
            self.store.check_schema()
        except Exception as exc:
            if not transient(exc):
                raise
            # The database is down: stay up and spool (records are written when it is
            # back); failing here would restart this replica in a loop and accept nothing.
            log.warning("database unreachable at start (%s): spooling", type(exc).__name__)
        settings = get_settings()
        self.recorder = InteractionRecorder(
            self.store.insert_interactions,
            flush_interval_s=flush_interval_s,
            spool_dir=spool_dir_for(database_url, settings.spool_dir or settings.var_dir / "spool"),
            max_pending=settings.spool_max_records,
        )

    async def record(self, records: list[InteractionRecord], request_ids: list[str] = ()) -> int:
        """Buffer records; returns how many are pending (written within a flush interval).
        `request_ids`: the requests whose records these are (an ingress sends concurrent
        requests' records in one call), logged with them on one line."""
        self.recorder.start()
        self.recorder.add(records)
        log.info(
            "accepted %d record(s)",
            len(records),
            extra={
                "message_ids": [r.message_id for r in records],
                "request_ids": list(request_ids),
            },
        )
        return self.recorder.pending

    async def reserve(self, record: InteractionRecord) -> None:
        """Accept a stream's record before its first chunk leaves (spooled and synced);
        `record` with the same message id completes it."""
        self.recorder.start()
        self.recorder.reserve(record)

    def merge_metrics(self, wire: dict[str, Any]) -> None:
        """Add an ingress replica's observations to the totals that /metrics renders."""
        self.metrics.merge(MetricsDelta.from_wire(wire))

    def metrics_totals(self) -> dict[str, Any]:
        """The merged observations of every ingress replica since this actor started."""
        return self.metrics.to_wire()

    async def flush(self) -> int:
        self.recorder.start()
        return await self.recorder.flush()

    def stats(self) -> dict[str, Any]:
        """Backlog, totals, refusals, dead letters and spool usage (see InteractionRecorder)."""
        return self.recorder.stats()

    def check_health(self) -> None:
        """Healthy while it can accept records. A database outage is not a reason to
        restart the writer (it spools; `stats()` and the API's /health report the outage):
        only a dead flush loop is."""
        self.recorder.check()

    def __del__(self) -> None:
        """On a clean shutdown write what is buffered now; what cannot be written stays
        in the spool for the next writer of this database."""
        try:
            written = self.recorder.flush_now()
            if written:
                log.info("wrote %d buffered record(s) at shutdown", written)
        except Exception as exc:
            log.warning("records left in the spool at shutdown: %s", type(exc).__name__)
