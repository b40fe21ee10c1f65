"""A throwaway PostgreSQL server for tests, from the local PostgreSQL binaries.

    url, stop = start_throwaway_postgres(base_dir)   # ... stop()

From a shell script:

    URL=$(python -m tests.support.postgres start /tmp/pg)   # prints the URL
    python -m tests.support.postgres stop /tmp/pg

As root the cluster belongs to the ``postgres`` OS user (initdb refuses root),
so ``base_dir`` and its parents must be traversable by that user; ``/tmp/x``
works, a pytest ``tmp_path`` (mode 0700) does not.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

DATABASE = "promethios"
_SEARCH = ("/usr/lib/postgresql/*/bin", "/usr/local/pgsql/bin", "/opt/homebrew/opt/postgresql*/bin")


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL binaries are missing or the server failed to start."""


def find_bin_dir() -> Path | None:
    """Return the directory holding initdb, pg_ctl and createdb (newest version first), or None."""
    on_path = shutil.which("pg_ctl")
    if on_path and _complete(Path(on_path).resolve().parent):
        return Path(on_path).resolve().parent
    found = [Path(p) for pattern in _SEARCH for p in glob.glob(pattern)]
    found = [p for p in found if _complete(p)]
    return max(found, key=_version_key) if found else None


def _complete(bin_dir: Path) -> bool:
    return all((bin_dir / tool).exists() for tool in ("initdb", "pg_ctl", "createdb"))


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", str(path))) or (0,)


def _as_postgres() -> list[str]:
    """Command prefix that runs the server tools as a non-root user."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"]
    return []


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise PostgresUnavailable(
            f"{what} failed ({proc.returncode}): {proc.stderr or proc.stdout}"
        )


def stop_postgres(base_dir: str | Path) -> None:
    """Stop the server started in ``base_dir`` (fast mode) and remove the directory."""
    base = Path(base_dir)
    bin_dir = find_bin_dir()
    data = base / "data"
    if bin_dir is not None and (data / "postmaster.pid").exists():
        subprocess.run(
            [*_as_postgres(), str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
            check=False,
            capture_output=True,
            timeout=60,
        )
    shutil.rmtree(base, ignore_errors=True)


def start_throwaway_postgres(base_dir: str | Path) -> tuple[str, Callable[[], None]]:
    """Create a cluster in ``base_dir``, start it on a free loopback port, create
    the ``promethios`` database, and return ``(url, stop)``.

    ``url`` is ``postgresql+psycopg2://postgres@127.0.0.1:PORT/promethios`` (trust
    auth). ``stop()`` stops the server and removes ``base_dir``. Raises
    ``PostgresUnavailable`` when the binaries are missing or startup fails.
    """
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise PostgresUnavailable("PostgreSQL binaries (initdb, pg_ctl) not found")
    base = Path(base_dir).resolve()
    base.mkdir(parents=True, exist_ok=True)
    data = base / "data"
    prefix = _as_postgres()
    if prefix:
        shutil.chown(base, user="postgres", group="postgres")
    try:
        _run(
            [
                *prefix,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
                "--locale=C",
            ],
            "initdb",
        )
        last_error: Exception | None = None
        for _ in range(3):  # the free port may be taken between probe and bind
            port = _free_port()
            opts = (
                f"-p {port} -h 127.0.0.1 -k {base} -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
            )
            try:
                _run(
                    [
                        *prefix,
                        str(bin_dir / "pg_ctl"),
                        "-D",
                        str(data),
                        "-o",
                        opts,
                        "-l",
                        str(base / "server.log"),
                        "-w",
                        "-t",
                        "60",
                        "start",
                    ],
                    "pg_ctl start",
                )
                break
            except PostgresUnavailable as exc:
                last_error = exc
        else:
            raise PostgresUnavailable(f"{last_error}; log: {_tail(base / 'server.log')}")
        _run(
            [
                str(bin_dir / "createdb"),
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
                "-U",
                "postgres",
                DATABASE,
            ],
            "createdb",
        )
    except BaseException:
        stop_postgres(base)
        raise
    url = f"postgresql+psycopg2://postgres@127.0.0.1:{port}/{DATABASE}"
    (base / "url.txt").write_text(url + "\n")
    return url, lambda: stop_postgres(base)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def main(argv: list[str]) -> int:
    """``start DIR`` prints the URL; ``stop DIR`` stops the server and removes DIR."""
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: python -m tests.support.postgres {start|stop} DIR", file=sys.stderr)
        return 2
    if argv[0] == "start":
        try:
            url, _ = start_throwaway_postgres(argv[1])
        except PostgresUnavailable as exc:
            print(str(exc), file=sys.stderr)
            return 1
        print(url)
    else:
        stop_postgres(argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
