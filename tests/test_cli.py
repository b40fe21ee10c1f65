"""The ``promethios`` CLI, run as a real subprocess against SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys

from serve_app.store import Store
from serve_app.store.store import API_KEY_RE


def run_cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": db_url}
    return subprocess.run(
        [sys.executable, "-m", "serve_app.cli", *args],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_users_create_prints_a_working_key_last(db_url: str) -> None:
    proc = run_cli(db_url, "users", "create", "alice")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) >= 2 and "alice" in lines[0]
    key = lines[-1]
    assert API_KEY_RE.fullmatch(key)

    again = run_cli(db_url, "users", "create", "alice")
    assert again.returncode == 0, again.stderr
    second = again.stdout.strip().splitlines()[-1]
    assert second != key

    with Store(db_url) as store:
        assert store.user_for_api_key(key) == "alice"
        assert store.user_for_api_key(second) == "alice"

    revoke = run_cli(db_url, "users", "revoke-key", key)
    assert revoke.returncode == 0, revoke.stderr
    assert run_cli(db_url, "users", "revoke-key", key).returncode == 1
    with Store(db_url) as store:
        assert store.user_for_api_key(key) is None


def test_db_upgrade_is_idempotent(db_url: str) -> None:
    for _ in range(2):
        proc = run_cli(db_url, "db", "upgrade")
        assert proc.returncode == 0, proc.stderr
        assert "newest schema" in proc.stdout


def test_bad_user_id_exits_nonzero(db_url: str) -> None:
    proc = run_cli(db_url, "users", "create", "x" * 200)
    assert proc.returncode == 2
    assert "user_id" in proc.stderr and proc.stdout == ""
