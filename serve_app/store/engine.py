"""Engine construction and schema migration for the Store.

SQLite gets WAL, foreign keys and a busy timeout on every connection;
PostgreSQL gets pre-ping. Migrations run through Alembic, configured in code
(no alembic.ini), and are serialised across processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Session-level advisory lock key for PostgreSQL migrations ("PROM").
_PG_MIGRATE_LOCK_KEY = 0x50524F4D


def database_unreachable(exc: BaseException) -> bool:
    """A lost or refused database connection (worth a retry later), as opposed to a
    statement or a row the database refuses."""
    if isinstance(exc, (OperationalError, InterfaceError)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def alembic_config() -> Config:
    """Return an Alembic config that needs no alembic.ini (the package's migrations)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    cfg.set_main_option("path_separator", "os")
    return cfg


def build_engine(database_url: str, create_dirs: bool) -> tuple[Engine, Path | None]:
    """Return the engine and, for a SQLite file, its path (else None).

    Raises ``ValueError`` for a backend other than SQLite or PostgreSQL.
    """
    url = make_url(database_url)
    backend = url.get_backend_name()
    if backend == "postgresql":
        # hide_parameters: a statement's bound values (a user's message, a key digest) never
        # appear in an error's text, wherever that text ends up.
        engine = create_engine(
            url, pool_pre_ping=True, pool_size=5, max_overflow=10, hide_parameters=True
        )
        return engine, None
    if backend != "sqlite":
        raise ValueError(f"unsupported database backend {backend!r} (use sqlite or postgresql)")

    database = url.database or ""
    in_memory = database in ("", ":memory:") or url.query.get("mode") == "memory"
    kwargs: dict[str, Any] = {
        "connect_args": {"check_same_thread": False, "timeout": 30},
        "hide_parameters": True,
    }
    db_path: Path | None = None
    if in_memory:
        # One shared connection, or each pooled connection would see its own empty DB.
        kwargs["poolclass"] = StaticPool
    elif not database.startswith("file:"):
        db_path = Path(database).expanduser()
        if create_dirs:
            db_path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA busy_timeout=30000")
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return engine, db_path


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (no-op where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class SchemaOutOfDate(RuntimeError):
    """The database's schema is not at this code's newest migration."""


def check_at_head(engine: Engine) -> None:
    """Raise SchemaOutOfDate unless the database is at the newest migration (reads only:
    the application builder is the one place that migrates)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
    with engine.connect() as conn:
        current = set(MigrationContext.configure(conn).get_current_heads())
    if current != heads:
        raise SchemaOutOfDate(
            f"database schema at {sorted(current) or 'no revision'}, this code needs "
            f"{sorted(heads)}: the application builder migrates it (redeploy the "
            "application; the `promethios` CLI migrates too)"
        )


def upgrade_to_head(engine: Engine, sqlite_path: Path | None) -> None:
    """Run ``alembic upgrade head`` on ``engine``; a no-op when already there.

    Concurrent callers are serialised by a PostgreSQL advisory lock, or by a lock
    file beside a SQLite database file. Raises whatever the failing migration
    raised, after rolling back its transaction.
    """
    with contextlib.ExitStack() as stack:
        if sqlite_path is not None:
            stack.enter_context(_file_lock(Path(f"{sqlite_path}.migrate.lock")))
        with engine.connect() as conn:
            is_pg = engine.dialect.name == "postgresql"
            if is_pg:
                conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _PG_MIGRATE_LOCK_KEY})
                conn.commit()
            try:
                cfg = alembic_config()
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "heads")
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            finally:
                if is_pg:
                    try:
                        conn.execute(
                            text("SELECT pg_advisory_unlock(:k)"), {"k": _PG_MIGRATE_LOCK_KEY}
                        )
                        conn.commit()
                    except SQLAlchemyError:
                        # A pooled connection must never keep the lock.
                        conn.invalidate()
