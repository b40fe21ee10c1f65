"""The governance artifacts: the trained files the scorer serves, and their manifest.

`training/` builds them (`make governance-weights`: `python -m training.build`) into
ARTIFACT_DIR (or the directory PROMETHIOS_GOVERNANCE_ARTIFACTS names, e.g. a volume a
KubeRay pod mounts) and writes `manifest.json` beside them: each file's name, size and
sha256, the operating points chosen at build time (the classifier's threshold for each
benign false-positive budget, the early exit's and the lexical screen's), the settings
the serving code must share with the build (classes, the head's input scale, the
encoder's depth and split, the lexical features), the training sources and the build's
dev figures. Serving only reads them: nothing here trains, tunes or chooses a threshold.

A missing manifest, a missing or altered file, or a manifest built for other serving
settings stops start-up with an ArtifactError that says which and what to do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ARTIFACT_DIR = Path(__file__).resolve().parent / "data" / "artifacts"
MANIFEST_NAME = "manifest.json"
FORMAT = 1
# What each file is: the tuned encoder layers (torch, fp16), the classifier head (npz w, b),
# the early exit's head (npz), the lexical screen (npz).
ROLES = ("encoder", "head", "exit_head", "lexical")
_REBUILD = (
    "rebuild them with `make governance-weights` (training/, see docs/governance.md) or "
    "restore serve_app/governance/data/artifacts/ from git"
)


class ArtifactError(RuntimeError):
    """The governance artifacts cannot be served: missing, altered or built for other code."""


@dataclass(frozen=True)
class Manifest:
    """A verified manifest and the directory its files are in."""

    directory: Path
    data: dict[str, Any]

    def path(self, role: str) -> Path:
        return self.directory / self.data["files"][role]["name"]

    @property
    def build_id(self) -> str:
        """Names this set of files: a hash over their hashes (in the encoder's variant, the
        ONNX export's cache name and the scorer's /health)."""
        joined = "|".join(self.data["files"][r]["sha256"] for r in ROLES)
        return hashlib.sha256(joined.encode()).hexdigest()[:16]

    @property
    def thresholds(self) -> dict[str, Any]:
        return self.data["thresholds"]

    @property
    def serving(self) -> dict[str, Any]:
        return self.data["serving"]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    """A manifest's entry for one file (what `load_manifest` checks)."""
    return {"name": path.name, "bytes": path.stat().st_size, "sha256": sha256_of(path)}


def default_dir() -> Path:
    """The configured artifact directory (PROMETHIOS_GOVERNANCE_ARTIFACTS), else the shipped one."""
    from serve_app.settings import get_settings

    return get_settings().governance_artifacts or ARTIFACT_DIR


def load_manifest(directory: Path | None = None, serving: dict[str, Any] | None = None) -> Manifest:
    """The manifest in `directory` (None: `default_dir()`), every file checked against it
    (present, same size, same sha256) and, where given, its serving settings against
    `serving` (the code's own); raises ArtifactError saying what is wrong."""
    directory = Path(directory or default_dir())
    path = directory / MANIFEST_NAME
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(
            f"no governance artifacts in {directory} ({MANIFEST_NAME} is missing): {_REBUILD}"
        ) from None
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{path} is unreadable ({exc}): {_REBUILD}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise ArtifactError(
            f"{path} is of format {found!r}; this code reads format {FORMAT}: {_REBUILD}"
        )
    files = data.get("files")
    if not isinstance(files, dict) or set(files) != set(ROLES):
        raise ArtifactError(f"{path} must list exactly the files {list(ROLES)}: {_REBUILD}")
    for role in ROLES:
        entry = files[role]
        target = directory / str(entry.get("name", ""))
        if not entry.get("name") or not target.is_file():
            raise ArtifactError(
                f"governance artifact {entry.get('name')!r} ({role}) is missing from "
                f"{directory}: {_REBUILD}"
            )
        if target.stat().st_size != entry.get("bytes") or sha256_of(target) != entry.get("sha256"):
            raise ArtifactError(
                f"governance artifact {target.name} ({role}) does not match its manifest "
                f"(sha256 {str(entry.get('sha256'))[:12]}…): the file was altered or belongs "
                f"to another build; {_REBUILD}"
            )
    if serving is not None and data.get("serving") != serving:
        theirs = data.get("serving") or {}
        differ = sorted(k for k in set(serving) | set(theirs) if serving.get(k) != theirs.get(k))
        raise ArtifactError(
            f"the governance artifacts in {directory} were built for other serving settings "
            f"({', '.join(differ)} differ from this code's): {_REBUILD}"
        )
    return Manifest(directory, data)
