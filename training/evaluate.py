"""Scores heads on the pooled data: per source, leave-one-source-out, and eval-only sets.

Operating point: the lowest threshold on the harmful mass (most harmful window) whose
false-positive rate on the dev benign examples is within the budget, in both groups —
real benign traffic and look-alikes (prompts that only sound risky) — so neither hides
behind the other. Chosen on the pooled dev split only (never on an eval source, never on
our test split).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serve_app.governance.hazards import BENIGN, CLASSES, INJECTION_CLASS
from training import heads
from training.features import Features
from training.pool import OWN, Example

# Sources whose benign items are look-alikes (risky-sounding but fine), not real traffic.
LOOKALIKE_SOURCES = frozenset({OWN, "coconot_pref", "awesome_chatgpt_prompts", "gpteacher_roleplay",
                               "gpteacher_codegen", "donotanswer"})  # fmt: skip
THRESHOLDS = np.unique(np.round(np.concatenate(
    [np.arange(0.05, 0.99, 0.005), 1.0 - np.geomspace(1e-2, 1e-4, 25)]), 6))  # fmt: skip


@dataclass
class Scored:
    """Per example: the harmful mass of its most harmful window and that window's class."""

    mass: np.ndarray
    top: np.ndarray  # the most probable harmful class (index into CLASSES) of that window


def score(head: dict, feats: Features, rows: np.ndarray) -> Scored:
    win, pos = feats.of(rows)
    x = feats.full[win]
    probs = heads.probabilities(head, x)
    mass, where = heads.example_mass(probs, pos, len(rows))
    harm = probs[where].copy()
    harm[:, CLASSES.index(BENIGN)] = -1
    return Scored(mass, harm.argmax(1))


def is_lookalike(ex: Example) -> bool:
    return ex.source in LOOKALIKE_SOURCES


def choose_threshold(mass: np.ndarray, examples: list[Example], budget: float) -> float:
    """The lowest threshold whose FPR on real and on look-alike benign examples both stay
    within `budget`."""
    benign = np.array([not e.harmful for e in examples])
    look = np.array([is_lookalike(e) for e in examples])
    groups = [m for m in (benign & look, benign & ~look) if m.any()]
    for t in THRESHOLDS:
        if all((mass[g] >= t).mean() <= budget for g in groups):
            return float(t)
    return float(THRESHOLDS[-1])


def figures(mass: np.ndarray, top: np.ndarray, examples: list[Example], t: float) -> dict:
    """Recall on harmful examples, FPR on benign (real and look-alike), injection TPR."""
    flagged = mass >= t
    harmful = np.array([e.harmful for e in examples])
    inj = np.array([e.label == INJECTION_CLASS for e in examples])
    look = np.array([is_lookalike(e) for e in examples])
    out: dict = {"n": len(examples), "harmful": int(harmful.sum()), "benign": int((~harmful).sum())}
    if harmful.any():
        out["harmful_recall"] = round(float(flagged[harmful].mean()), 4)
    if inj.any():
        out["injection_tpr"] = round(float(flagged[inj].mean()), 4)
    for name, m in (
        ("benign_fpr_real", ~harmful & ~look),
        ("benign_fpr_lookalike", ~harmful & look),
    ):
        if m.any():
            out[name] = round(float(flagged[m].mean()), 4)
    if harmful.any() and (~harmful).any():
        out["auc"] = round(_auc(mass[harmful], mass[~harmful]), 4)
    return out


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    allv = np.concatenate([pos, neg])
    ranks = allv.argsort().argsort() + 1.0
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))
