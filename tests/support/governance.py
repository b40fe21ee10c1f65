"""Shared by the governance tests: prompts found with the classifier actually built."""

from __future__ import annotations

from serve_app.governance.hazards import HAZARDS
from serve_app.governance.semantic import SemanticModel
from training.labeled import load_items


def dev_prompts_between_thresholds(semantic: SemanticModel, budget: float) -> list[str]:
    """Harmful dev prompts the default threshold lets through and `budget`'s (a looser
    one) flags, with a 0.001 margin on both sides."""
    clf = semantic.classifier
    dev = [i for i in load_items() if i.split == "dev" and i.label in HAZARDS]
    got = semantic.classify([i.text for i in dev])
    low, high = clf.by_budget[budget] + 1e-3, clf.threshold - 1e-3
    return [i.text for i, c in zip(dev, got, strict=True) if low < c.confidence < high]
