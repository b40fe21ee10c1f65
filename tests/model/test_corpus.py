"""The shipped governance corpus: size, determinism, coverage and variety."""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict

import pytest

from serve_app.model import corpus

EXPECTED_CATEGORIES = {
    "billing",
    "refunds",
    "shipping",
    "account",
    "password_reset",
    "technical_support",
    "product_questions",
    "greeting",
    "refusal_privacy",
    "refusal_weapons",
    "refusal_hacking",
    "refusal_fraud",
    "refusal_self_harm",
    "out_of_scope",
    "governance",
}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return corpus.load_corpus()


def test_count_is_at_least_5000_and_matches_the_file(rows: list[dict]) -> None:
    assert corpus.dataset_count() == len(rows) >= 5000
    assert corpus.dataset_count() == 5000  # the seed's dataset_count


def test_regeneration_reproduces_the_shipped_file_byte_for_byte() -> None:
    shipped = corpus.CORPUS_PATH.read_text(encoding="utf-8")
    assert corpus.serialise(corpus.generate_corpus()) == shipped
    assert corpus.main(["--check"]) == 0


def test_sha256_is_of_the_shipped_bytes() -> None:
    assert corpus.corpus_sha256() == hashlib.sha256(corpus.CORPUS_PATH.read_bytes()).hexdigest()


def test_a_different_seed_gives_a_different_corpus() -> None:
    assert corpus.generate_corpus(seed=1)[:50] != corpus.generate_corpus()[:50]


def test_schema(rows: list[dict]) -> None:
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    for r in rows:
        assert set(r) == {"id", "category", "messages"}
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert all(m["content"].strip() for m in r["messages"])
        assert "{" not in r["messages"][1]["content"] and "[" not in r["messages"][1]["content"]


def test_every_category_is_well_represented(rows: list[dict]) -> None:
    counts = Counter(r["category"] for r in rows)
    assert set(counts) == EXPECTED_CATEGORIES == set(corpus.categories())
    assert min(counts.values()) >= 150 and sum(counts.values()) == 5000


def test_answers_are_varied_not_one_template(rows: list[dict]) -> None:
    answers = [r["messages"][1]["content"] for r in rows]
    assert len(set(answers)) >= 2500
    assert len({r["messages"][0]["content"] for r in rows}) >= 2500
    per_category: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        per_category[r["category"]].add(r["messages"][1]["content"])
    assert all(len(texts) >= 20 for texts in per_category.values()), {
        k: len(v) for k, v in per_category.items()
    }
    openings = Counter(a.split(".")[0] for a in answers)
    assert len(openings) >= 40


def test_refusals_are_polite_and_self_harm_points_to_help(rows: list[dict]) -> None:
    for r in rows:
        answer = r["messages"][1]["content"]
        if r["category"] == "refusal_self_harm":
            assert "988" in answer and "emergency" in answer
        elif r["category"].startswith("refusal_"):
            assert any(
                w in answer for w in ("can't", "not able", "won't", "decline", "not something")
            )
