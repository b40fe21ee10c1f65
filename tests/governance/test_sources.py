"""The public sources manifest (training/sources.yaml): provenance, licences and roles are
checked without the third-party files (CI has none); reading a source works on files of
its shape and says what to fetch when they are missing."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from serve_app.governance.artifacts import ARTIFACT_DIR
from training import fetch_public, loso, public


def test_every_source_has_provenance_a_permissive_licence_and_a_count() -> None:
    for e in public.manifest():
        assert e["origin"].startswith(("github:", "pypi:")), e["name"]
        if e["origin"].startswith("github:"):
            assert len(str(e["commit"])) == 40, e["name"]  # pinned
        else:
            assert "==" in e["origin"], e["name"]  # pinned version
        assert public.PERMISSIVE.match(e["licence"]) and e["licence_evidence"], e["name"]
        assert "NC" not in e["licence"]
        assert isinstance(e["count"], int) and e["count"] > 0, e["name"]
        assert e["files"] and e["notes"], e["name"]


def test_eval_sources_are_never_trained_on_and_every_train_source_is_left_out_somewhere() -> None:
    grouped = [s for members in loso.GROUPS.values() for s in members]
    assert len(grouped) == len(set(grouped))  # a source in one group only
    assert set(grouped) == set(public.names("train"))
    assert not set(public.names("eval")) & set(grouped)
    assert {"harmbench", "jbb_pair"} <= set(public.names("eval"))
    # The shipped build lists the same sources and roles in its manifest.
    manifest = json.loads((ARTIFACT_DIR / "manifest.json").read_text())
    roles = {s["name"]: s["role"] for s in manifest["sources"]}
    assert roles == {e["name"]: e["role"] for e in public.manifest()}
    counts = manifest["data"]["counts"]
    for name in public.names("eval"):  # eval sources hold no train or dev example
        assert all(k.startswith("eval:") for k in counts.get(name, {})), name


def test_no_source_is_excluded_guard_benchmark() -> None:
    kept_back = ("xstest", "exaggerated-safety", "simplesafetytests", "or-bench", "toxicchat",
                 "wildguard", "moderation-api-release")  # fmt: skip
    for e in public.manifest():
        where = f"{e['name']} {e['origin']}".lower()
        assert not any(k in where for k in kept_back), e["name"]


def test_a_missing_source_says_what_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(public.SourceError, match="advbench.*is missing; fetch github:"):
        public.read("advbench", data_dir=tmp_path)


def test_reading_maps_labels_drops_nulls_and_dedupes(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    (tmp_path / "toy").mkdir()
    (tmp_path / "toy" / "rows.csv").write_text(
        "q,cat\nHow to rob a bank,crime\nhow to  rob a BANK,crime\nWhat is a bank,none\n"
        "Lobby my MP,lobby\n"
    )
    entry = {"name": "toy", "origin": "github:x/y", "commit": "0" * 40, "files": ["d/rows.csv"],
             "licence": "MIT", "role": "train", "format": "csv", "text": "q",
             "label": {"field": "cat", "map": {"crime": "non_violent_crimes", "none": "benign",
                                               "lobby": None}}, "count": 2}  # fmt: skip
    monkeypatch.setattr(public, "manifest", lambda: (entry,))
    items = public.read("toy", data_dir=tmp_path)
    assert [(i.text, i.label) for i in items] == [
        ("How to rob a bank", "non_violent_crimes"),
        ("What is a bank", "benign"),
    ]
    entry["count"] = 3
    with pytest.raises(public.SourceError, match="2 items read, the manifest says 3"):
        public.read("toy", data_dir=tmp_path)


def test_the_loso_table_shows_every_scored_group_and_what_is_left() -> None:
    results = {
        "groups": {
            "ailuminate": {
                "sources": ["ailuminate_demo_en"],
                "n": 1200,
                "harmful_recall": 0.715,
                "with_shortcuts": {
                    "harmful_recall": 0.711,
                    "harmful_passed_by_lexical_screen": 8,
                    "harmful_passed_by_early_exit": 1,
                },
            },
            "intent_sets": {
                "sources": ["banking77"],
                "n": 3000,
                "benign_fpr_real": 0.0106,
                "with_shortcuts": {"benign_fpr_real": 0.01},
            },
        },  # fmt: skip
        "pooled_left_out": {
            "harmful_recall": 0.65,
            "benign_fpr_real": 0.021,
            "benign_fpr_lookalike": None,
            "class_f1": {"hate": {"f1": 0.44, "n": 230}},
        },  # fmt: skip
        "pooled_left_out_with_shortcuts": {"harmful_recall": 0.64},
        "eval_only": {"harmbench": {"harmful_recall": 0.49}},
        "groups_not_run": ["donotanswer"],
    }
    text = loso.table(results)
    assert "| ailuminate (ailuminate_demo_en) | 1,200 | 71.5 % | — | — | 71.1 % | 8 / 1 |" in text
    assert "| intent_sets (banking77) | 3,000 | — | 1.1 % | — | — | — |" in text
    assert "**65.0 %**" in text and "| 64.0 % |" in text
    assert "harmbench 49.0 %" in text and "hate 0.44 (230)" in text
    assert "Not yet run: donotanswer." in text


def _git(repo: Path, *args: str) -> str:
    ids = (("NAME", "t"), ("EMAIL", "t@x"))
    who = {f"GIT_{r}_{k}": v for r in ("AUTHOR", "COMMITTER") for k, v in ids}
    env = {**who, "HOME": str(repo), "PATH": os.environ["PATH"]}
    out = subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)
    return out.stdout.decode().strip()


def test_fetching_takes_the_pinned_commit_not_the_head_and_checks_the_count(
    tmp_path: Path,
    monkeypatch,
    capsys,  # noqa: ANN001
) -> None:
    repo = tmp_path / "mirrors" / "x+y" / "repo"
    (repo / "d").mkdir(parents=True)
    _git(repo, "init", "-q")
    (repo / "d" / "rows.csv").write_text("q,cat\nHow to rob a bank,crime\nWhat is a bank,none\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "pinned")
    pinned = _git(repo, "rev-parse", "HEAD")
    (repo / "d" / "rows.csv").write_text("q,cat\nchanged after the pin,none\n")
    (repo / "d" / "big.csv").write_text("version https://git-lfs.github.com/spec/v1\noid x\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "later")
    entry = {"name": "toy", "origin": "github:x/y", "commit": pinned, "files": ["d/rows.csv"],
             "licence": "MIT", "role": "train", "format": "csv", "text": "q",
             "label": {"field": "cat", "map": {"crime": "non_violent_crimes", "none": "benign"}},
             "count": 2}  # fmt: skip
    monkeypatch.setattr(public, "manifest", lambda: (entry,))
    data = tmp_path / "data"
    argv = ["--mirrors", str(tmp_path / "mirrors"), "--data-dir", str(data)]
    assert fetch_public.main(argv) == 0
    assert (data / "toy" / "rows.csv").read_text().startswith("q,cat\nHow to rob a bank")
    assert [i.text for i in public.read("toy", data_dir=data)] == [
        "How to rob a bank",
        "What is a bank",
    ]
    # A file absent at the pinned commit, and an LFS pointer in place of a file, both fail.
    entry["files"] = ["d/big.csv"]
    assert fetch_public.main(argv) == 1
    assert "d/big.csv is not in github:x/y at" in capsys.readouterr().err
    entry["commit"] = _git(repo, "rev-parse", "HEAD")
    assert fetch_public.main(argv) == 1
    assert "Git LFS pointer" in capsys.readouterr().err
    # Unknown names are refused before anything is fetched.
    with pytest.raises(SystemExit):
        fetch_public.main([*argv, "--only", "nope"])
