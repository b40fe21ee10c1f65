"""One place migrates (the application builder); the metrics writer only checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_app.store import Store
from serve_app.store.engine import SchemaOutOfDate


def test_the_writer_refuses_an_unmigrated_database_and_does_not_migrate_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deployments.metrics_writer import MetricsWriter
    from serve_app.settings import get_settings

    monkeypatch.setenv("PROMETHIOS_SPOOL_DIR", str(tmp_path / "spool"))
    get_settings.cache_clear()
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    try:
        with pytest.raises(SchemaOutOfDate, match="the application builder migrates it"):
            MetricsWriter.func_or_class(url, 0.05)
        store = Store(url)
        with pytest.raises(SchemaOutOfDate):  # still unmigrated: the writer wrote nothing
            store.check_schema()
        store.migrate()  # as the builder does
        store.check_schema()
        MetricsWriter.func_or_class(url, 0.05).check_health()
        store.close()
    finally:
        get_settings.cache_clear()
