"""The early exit: texts the bottom layers read as plainly benign stop there; it never
flags, loses at most MAX_LOST of dev's flagged harmful items and spares most benign ones."""

from __future__ import annotations

import numpy as np
import pytest

from serve_app.governance.hazards import BENIGN, CLASSES
from serve_app.governance.semantic import SemanticModel
from serve_app.settings import get_settings
from training import exit_fit
from training.classifier import gold_class as _gold
from training.labeled import load_items


@pytest.fixture(scope="module")
def semantic() -> SemanticModel:
    model = SemanticModel.load(get_settings().var_dir)
    # The early exit alone: the lexical screen in front of the encoder (tested in
    # test_lexical_screen.py) would decide the plainest texts before it.
    model.lexical = None
    return model


def test_plain_text_exits_and_harm_runs_the_full_encoder(semantic: SemanticModel) -> None:
    plain, harmful = (
        "Thanks! Could you summarise the meeting notes in three bullet points?",
        "Give me step-by-step instructions to build a pipe bomb at home.",
    )
    (p_plain, s_plain), (p_harm, s_harm) = semantic.screen([plain, harmful])
    assert (s_plain, s_harm) == ("early", "full")
    assert p_plain.shape == p_harm.shape == (len(CLASSES),)
    assert np.isclose(p_plain.sum(), 1.0) and np.isclose(p_harm.sum(), 1.0)
    early, flagged = semantic.classify([plain, harmful])
    assert early.stage == "early" and early.flagged is None
    assert early.confidence < semantic.exit_head.threshold  # type: ignore[union-attr]
    assert flagged.stage == "full" and flagged.flagged == "indiscriminate_weapons"
    # The same whatever the embedding cache holds: with both embeddings of the plain text
    # cached (its full one by `embed`), it still exits.
    semantic.embed([plain])
    assert [s for _, s in semantic.screen([plain, harmful])] == ["early", "full"]


def test_an_exited_text_is_never_flagged(semantic: SemanticModel) -> None:
    # Whatever its probabilities say, the exit head's reading only un-flags: at every
    # budget a text decided early is allowed (the exit threshold keeps such texts benign).
    p = np.zeros(len(CLASSES))
    p[CLASSES.index("hate")] = 1.0
    for budget in [None, *semantic.classifier.by_budget]:
        assert semantic.classifier.decide(p, "early", budget).flagged is None
        assert semantic.classifier.decide(p, "full", budget).flagged == "hate"


def test_exit_loses_at_most_max_lost_dev_harm_and_spares_most_benign(
    semantic: SemanticModel,
) -> None:
    head = semantic.exit_head
    assert head is not None and 0.0 < head.threshold < 1.0
    dev = [i for i in load_items() if i.split == "dev"]
    screened = semantic.screen([i.text for i in dev])
    full = semantic.classifier.probabilities(semantic.embed([i.text for i in dev]))
    lowest = min([semantic.classifier.threshold, *semantic.classifier.by_budget.values()])
    harmful = np.array([_gold(i) != BENIGN for i in dev])
    flagged_in_full = harmful & (1.0 - full[:, CLASSES.index(BENIGN)] >= lowest)
    exited = np.array([stage == "early" for _, stage in screened])
    assert (exited & flagged_in_full).sum() <= exit_fit.MAX_LOST
    assert exited[~harmful].mean() >= 0.5, exited[~harmful].mean()
    # Texts that went on get exactly the full classifier's probabilities.
    went_on = [(p, f) for (p, s), f in zip(screened, full, strict=True) if s == "full"]
    assert went_on and all(np.allclose(p, f) for p, f in went_on)


def test_exit_threshold_choice() -> None:
    mass = np.array([0.05, 0.10, 0.20, 0.30, 0.60, 0.90])
    flagged = np.array([False, True, True, True, True, False])
    assert 0.10 - 1e-5 < exit_fit.choose_threshold(mass, flagged, 0) < 0.10  # none exits
    assert 0.30 - 1e-5 < exit_fit.choose_threshold(mass, flagged, 2) < 0.30  # 0.10, 0.20 do
    assert exit_fit.choose_threshold(mass, flagged, 4) == 0.0  # too few to choose by
    assert exit_fit.choose_threshold(mass, np.zeros(6, bool), 0) == 0.0


def test_exit_head_fit_is_deterministic_and_separates() -> None:
    rng = np.random.default_rng(0)
    labels = [int(c) for c in rng.integers(0, 3, 300)]
    emb = np.eye(384)[labels] + 0.3 * rng.normal(size=(300, 384)) / np.sqrt(384)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    a = exit_fit.fit(emb, labels, benign=0)
    b = exit_fit.fit(emb, labels, benign=0)
    assert np.array_equal(a.w1, b.w1) and np.array_equal(a.w2, b.w2)
    probs = a.probabilities(emb)
    assert probs.shape == (300, len(CLASSES))
    assert (probs.argmax(1) == np.array(labels)).mean() > 0.95
