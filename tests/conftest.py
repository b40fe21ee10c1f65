"""Database fixtures shared by every suite: a throwaway PostgreSQL cluster per
session and ``db_url``, a fresh empty database per test on SQLite and PostgreSQL.

Set ``PROMETHIOS_TEST_POSTGRES_URL`` to use an existing server instead of
starting one (its user must be allowed to CREATE DATABASE).
"""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from tests.support.postgres import PostgresUnavailable, find_bin_dir, start_throwaway_postgres


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a PostgreSQL server for this session; skips when none can be had."""
    external = os.environ.get("PROMETHIOS_TEST_POSTGRES_URL")
    if external:
        yield external
        return
    if find_bin_dir() is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl, createdb) not found")
    # Not under pytest's tmp_path: as root the server runs as `postgres`, which
    # cannot enter pytest's 0700 directories.
    base = Path(tempfile.mkdtemp(prefix="promethios-pg-"))
    try:
        url, stop = start_throwaway_postgres(base)
    except PostgresUnavailable as exc:
        pytest.skip(f"could not start PostgreSQL: {exc}")
    try:
        yield url
    finally:
        stop()


@pytest.fixture(scope="session")
def _postgres_admin(postgres_url: str) -> Iterator[Engine]:
    """Autocommit engine on the cluster's maintenance database (CREATE/DROP DATABASE)."""
    engine = create_engine(
        make_url(postgres_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    try:
        yield engine
    finally:
        engine.dispose()


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty (unmigrated) database per test: a SQLite file or a new PG database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'promethios.db'}"
        return
    admin: Engine = request.getfixturevalue("_postgres_admin")
    name = f"test_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield (
            make_url(request.getfixturevalue("postgres_url"))
            .set(database=name)
            .render_as_string(hide_password=False)
        )
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
