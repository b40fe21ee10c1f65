"""Public datasets for governance training and evaluation, read as the manifest says.

`training/sources.yaml` lists each source: where it comes from (a GitHub repository at a
pinned commit, or a PyPI package at a pinned version), its files, its licence (permissive
only: MIT, Apache-2.0, BSD, CC-BY, CC0, ODC-BY), its role (`train`: may train, tune and
choose thresholds; `eval`: a benchmark built to evaluate guard models or over-refusal —
scored apart, never trained or tuned on), how its records and texts are read, and how its
labels map onto ours (the 14 hazards, prompt_injection, benign, or `harmful`: some hazard,
which one the source does not say). Counts are checked on load.

Third-party text is never committed: the files live under `data/public/<name>/` (git
ignored). To rebuild the governance artifacts from scratch, `python -m training.fetch_public`
fetches each source at its pinned commit or version into place; `python -m training.public
--check` says which are missing or differ from the manifest's counts.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import yaml

from serve_app.governance.hazards import CLASSES
from serve_app.settings import REPO_ROOT

SOURCES_FILE = Path(__file__).resolve().parent / "sources.yaml"
DATA_DIR = REPO_ROOT / "data" / "public"
HARMFUL = "harmful"  # some hazard; the source does not say which
LABELS = (*CLASSES, HARMFUL)
ROLES = ("train", "eval")
PERMISSIVE = re.compile(
    r"^(MIT|Apache-2\.0|BSD-[23]-Clause|CC-BY-(SA-)?[1-4]\.0|CC0-1\.0|ODC-BY-1\.0)$"
)
MAX_CHARS = 4000  # longer texts are cut (a jailbreak template runs to 20k characters)


@dataclass(frozen=True)
class PublicItem:
    text: str
    label: str  # one of LABELS
    source: str

    @property
    def key(self) -> str:
        """The text's identity for de-duplication and splits (case and spacing folded)."""
        return " ".join(self.text.lower().split())


class SourceError(ValueError):
    """A source's manifest entry or files are not what the manifest says."""


@lru_cache(maxsize=1)
def manifest() -> tuple[dict[str, Any], ...]:
    """The manifest's sources, checked for shape and licence."""
    entries = yaml.safe_load(SOURCES_FILE.read_text())["sources"]
    seen = set()
    for e in entries:
        name = e.get("name")
        if not name or name in seen:
            raise SourceError(f"{SOURCES_FILE.name}: a source without a name, or {name!r} twice")
        seen.add(name)
        if not PERMISSIVE.match(str(e.get("licence", ""))):
            raise SourceError(f"{name}: licence {e.get('licence')!r} is not on the permissive list")
        if e.get("role") not in ROLES:
            raise SourceError(f"{name}: role must be one of {ROLES}")
        mapping = e["label"]
        labels = [mapping["fixed"]] if "fixed" in mapping else list(mapping["map"].values())
        bad = [lab for lab in labels if lab is not None and lab not in LABELS]
        if bad:
            raise SourceError(f"{name}: labels {bad} are not ours ({LABELS})")
    return tuple(entries)


def entry(name: str) -> dict[str, Any]:
    for e in manifest():
        if e["name"] == name:
            return e
    raise SourceError(f"no source {name!r} in {SOURCES_FILE.name}")


def names(role: str | None = None) -> list[str]:
    return [e["name"] for e in manifest() if role is None or e["role"] == role]


def files_of(e: dict[str, Any], data_dir: Path = DATA_DIR) -> list[Path]:
    """The source's local files: `local` globs under data_dir/<name>/, else the basenames of
    its repository `files`."""
    base = data_dir / e["name"]
    patterns = e.get("local") or [Path(f).name for f in e["files"]]
    found: list[Path] = []
    for pattern in patterns:
        hits = sorted(Path(p) for p in glob.glob(str(base / pattern)))
        if not hits:
            raise SourceError(
                f"{e['name']}: {base / pattern} is missing; fetch {e['origin']} at "
                f"{e.get('commit') or 'the pinned version'} into {base}/ (training/public.py)"
            )
        found += hits
    return found


def read(name: str, data_dir: Path = DATA_DIR) -> list[PublicItem]:
    """The source's items: mapped labels, rows mapped to null dropped, empty texts dropped,
    duplicates (case and spacing folded) kept once; raises SourceError where the count is
    not the manifest's."""
    e = entry(name)
    items: list[PublicItem] = []
    keys: set[str] = set()
    drop = [(d["field"], d["equals"]) for d in e.get("drop_rows") or []]
    keep = e.get("keep_rows")  # {field, values}: only rows whose field is one of the values
    for path in files_of(e, data_dir):
        for record in _records(path, e):
            if any(str(_get(record, f)) == v for f, v in drop):
                continue
            if keep and str(_get(record, keep["field"])) not in keep["values"]:
                continue
            text = _text(record, e)
            label = _label(record, e)
            if label is None or not text:
                continue
            item = PublicItem(text[:MAX_CHARS], label, name)
            if item.key not in keys:
                keys.add(item.key)
                items.append(item)
    if e.get("count") is not None and len(items) != e["count"]:
        raise SourceError(f"{name}: {len(items)} items read, the manifest says {e['count']}")
    return items


def split_of(item: PublicItem, dev_share: float = 0.2) -> str:
    """train or dev, by the text's hash (the same text lands on the same side in every
    source that has it)."""
    h = int(hashlib.sha256(item.key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "dev" if h < dev_share else "train"


# -- reading ---------------------------------------------------------------------------


def _records(path: Path, e: dict[str, Any]) -> Iterator[Any]:
    fmt = e["format"]
    if fmt in ("csv", "tsv"):
        delimiter = e.get("delimiter") or ("\t" if fmt == "tsv" else ",")
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            yield from csv.DictReader(f, delimiter=delimiter)
    elif fmt == "jsonl":
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    yield json.loads(line)
    elif fmt == "json":
        data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
        for keys, value in _walk(data, str(e.get("records", "*")).split("."), ()):
            # A bare string is a record of its own; `_path` holds the keys walked to it
            # (CatQA's category/subcategory).
            record = dict(value) if isinstance(value, dict) else {"text": value}
            record["_path"] = "/".join(keys)
            yield record
    elif fmt == "txt":
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            yield {"text": line}
    elif fmt == "xlsx":
        yield from _xlsx_rows(path)
    else:
        raise SourceError(f"{e['name']}: unknown format {fmt!r}")


def _select(data: Any, parts: list[str]) -> Iterator[Any]:
    """The values at a dotted path; `*` walks every element of a list or value of a dict."""
    if not parts or parts == [""]:
        yield data
        return
    head, rest = parts[0], parts[1:]
    if head == "*":
        values = data.values() if isinstance(data, dict) else data if isinstance(data, list) else []
        for v in values:
            yield from _select(v, rest)
    elif isinstance(data, list) and head.lstrip("-").isdigit():
        if -len(data) <= int(head) < len(data):
            yield from _select(data[int(head)], rest)
    elif isinstance(data, dict) and head in data:
        yield from _select(data[head], rest)


def _walk(
    data: Any, parts: list[str], keys: tuple[str, ...]
) -> Iterator[tuple[tuple[str, ...], Any]]:
    """`_select` with the dict keys walked through `*` (list positions are not keys)."""
    if not parts or parts == [""]:
        yield keys, data
        return
    head, rest = parts[0], parts[1:]
    if head == "*" and isinstance(data, dict):
        for k, v in data.items():
            yield from _walk(v, rest, (*keys, str(k)))
    elif head == "*" and isinstance(data, list):
        for v in data:
            yield from _walk(v, rest, keys)
    else:
        for v in _select(data, [head]):
            yield from _walk(v, rest, keys)


def _get(record: Any, path: str) -> Any:
    return next(_select(record, path.split(".")), None)


def _text(record: Any, e: dict[str, Any]) -> str:
    value = _get(record, str(e["text"]))
    if isinstance(value, list) and e.get("join"):  # e.g. snips: the text of each span
        value = "".join(str(v.get(e["join"], "")) for v in value if isinstance(v, dict))
    text = str(value).strip() if value is not None else ""
    if text and e.get("before"):  # e.g. HarmBench's context string before its request
        text = "\n\n".join(p for p in (str(_get(record, e["before"]) or "").strip(), text) if p)
    if text and e.get("after"):  # e.g. an instruction's input after it
        text = "\n\n".join(p for p in (text, str(_get(record, e["after"]) or "").strip()) if p)
    return text


def _label(record: Any, e: dict[str, Any]) -> str | None:
    mapping = e["label"]
    if "fixed" in mapping:
        return mapping["fixed"]
    value = _get(record, mapping["field"])
    table = mapping["map"]
    if str(value) in table:
        return table[str(value)]
    if "*" in table:
        return table["*"]
    raise SourceError(f"{e['name']}: label {value!r} of field {mapping['field']} has no mapping")


def _xlsx_rows(path: Path) -> Iterator[dict[str, str]]:
    """The first sheet's rows as dicts by the header row (the standard library only)."""
    ns = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
    with zipfile.ZipFile(path) as z:
        shared = []
        if "xl/sharedStrings.xml" in z.namelist():
            root = ElementTree.fromstring(z.read("xl/sharedStrings.xml"))
            shared = ["".join(t.text or "" for t in si.iter(f"{{{ns['m']}}}t")) for si in root]
        sheet = ElementTree.fromstring(z.read("xl/worksheets/sheet1.xml"))
    rows = []
    for row in sheet.iter(f"{{{ns['m']}}}row"):
        cells = {}
        for c in row.findall("m:c", ns):
            col = re.sub(r"\d", "", c.get("r", ""))
            v = c.find("m:v", ns)
            if c.get("t") == "s" and v is not None:
                cells[col] = shared[int(v.text or 0)]
            elif c.get("t") == "inlineStr":
                cells[col] = "".join(t.text or "" for t in c.iter(f"{{{ns['m']}}}t"))
            else:
                cells[col] = v.text if v is not None else ""
        rows.append(cells)
    if not rows:
        return
    header = rows[0]
    for cells in rows[1:]:
        yield {header[k]: v for k, v in cells.items() if k in header}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m training.public", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="read every source, report counts")
    parser.parse_args()
    failed = 0
    for e in manifest():
        try:
            items = read(e["name"])
            by = {}
            for i in items:
                by[i.label] = by.get(i.label, 0) + 1
            print(f"ok   {e['name']:40s} {e['role']:5s} {len(items):6d}  {by}")
        except SourceError as exc:
            failed += 1
            print(f"FAIL {e['name']:40s} {exc}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
