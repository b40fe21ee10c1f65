"""Policy files by name: `configs/policies/<name>.yaml`, chosen per agent (`policy`).

Files are re-read when they change on disk (mtime), so an edited policy takes effect
without a restart; a file that no longer validates raises `PolicyFileError`, which the
scorer turns into a failed check (fail closed), never into unscored text.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from serve_app.governance.policy import DEFAULT_POLICY_FILE, PolicyFileError, PolicySet

POLICY_DIR = DEFAULT_POLICY_FILE.parent
POLICY_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


def policy_path(name: str, policy_dir: Path = POLICY_DIR) -> Path:
    """The file of policy `name`; PolicyFileError for a name that is not a plain file name."""
    if not POLICY_NAME.match(name) or ".." in name:
        raise PolicyFileError(
            f"policy name {name!r} must match {POLICY_NAME.pattern} (a file in {policy_dir})"
        )
    return policy_dir / f"{name}.yaml"


class PolicyLibrary:
    """Loads and caches policy sets by name; None is the default file."""

    def __init__(
        self, default_file: str | Path = DEFAULT_POLICY_FILE, policy_dir: Path = POLICY_DIR
    ) -> None:
        self.default_file = Path(default_file)
        self.policy_dir = Path(policy_dir)
        self._cache: dict[Path, tuple[int, PolicySet]] = {}
        self._lock = threading.Lock()

    def path(self, name: str | None) -> Path:
        return self.default_file if not name else policy_path(name, self.policy_dir)

    def get(self, name: str | None = None) -> PolicySet:
        """The policy set `name` as the file says now; raises PolicyFileError if unusable."""
        path = self.path(name)
        try:
            mtime = path.stat().st_mtime_ns
        except OSError as exc:
            raise PolicyFileError(f"policy file {path}: {exc.strerror}") from exc
        with self._lock:
            hit = self._cache.get(path)
            if hit is not None and hit[0] == mtime:
                return hit[1]
        policies = PolicySet.load(path)
        with self._lock:
            self._cache[path] = (mtime, policies)
        return policies
