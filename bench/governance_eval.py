"""Governance quality and cost over the shipped labeled set (see training/labeled.py).

    .venv/bin/python bench/governance_eval.py [--split test] [--out result.json]

Runs the default policy (permissive mode, so every finding is reported) over every item
of the split; an item's predicted categories are the categories of its violations.
Prints JSON: per-category precision / recall / F1 / support, the false-positive rate on
benign items, the classifier's recall at other benign false-positive rates (what the
dev-chosen threshold trades), and scoring latency (one input + one output evaluation per
request, the in-process scorer with the embedding call, median / p95 ms). Nothing is
tuned on `test`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from serve_app.governance.hazards import HAZARDS  # noqa: E402
from serve_app.governance.policy import PolicySet  # noqa: E402
from serve_app.governance.scorer import GovernanceScorer  # noqa: E402
from serve_app.governance.semantic import default_semantic  # noqa: E402
from training.labeled import LABELS, load_items  # noqa: E402


def evaluate(split: str, restrict_to: set[str] | None = None) -> dict:
    scorer = GovernanceScorer(PolicySet.load(), default_semantic())
    items = [i for i in load_items() if i.split == split]
    if restrict_to is not None:  # e.g. the items an earlier version of the dataset had
        items = [i for i in items if i.text in restrict_to]
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    support: Counter[str] = Counter()
    benign_total = benign_flagged = 0
    hazard_total = hazard_caught = 0  # harmful items flagged under any hazard category
    confusions: Counter[str] = Counter()
    for item in items:
        direction = "output" if item.kind == "response" else "input"
        verdict = scorer.evaluate(item.text, direction, "permissive")  # type: ignore[arg-type]
        predicted = {v.category for v in verdict.violations}
        # An item may hold a second label's span too (`Item.also`: an IP address inside a
        # code-interpreter attack is PII as well): finding it is then no false positive.
        gold = (set() if item.label == "benign" else {item.label}) | set(item.also)
        if item.label == "benign":
            benign_total += 1
            benign_flagged += bool(predicted)
        if item.label in HAZARDS:
            hazard_total += 1
            hazard_caught += bool(predicted & set(HAZARDS))
        for label in gold:
            support[label] += 1
        for label in predicted | gold:
            if label in predicted and label in gold:
                tp[label] += 1
            elif label in predicted:
                fp[label] += 1
                confusions[f"{item.label}->{label}"] += 1
            else:
                fn[label] += 1
    per_category = {}
    for label in LABELS:
        if label == "benign":
            continue
        p = tp[label] / (tp[label] + fp[label]) if tp[label] + fp[label] else 0.0
        r = tp[label] / (tp[label] + fn[label]) if tp[label] + fn[label] else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        per_category[label] = {
            "precision": round(p, 3),
            "recall": round(r, 3),
            "f1": round(f1, 3),
            "support": support[label],
        }
    harmful = [c for c in per_category if c not in ("pii", "secrets", "prompt_injection")]
    return {
        "split": split,
        "items": len(items),
        "per_category": per_category,
        "macro_f1_harmful": round(statistics.mean(per_category[c]["f1"] for c in harmful), 3),
        # What blocking needs: a harmful item flagged as any hazard is blocked (strict,
        # standard) even when its category is wrong.
        "hazard_items": hazard_total,
        "hazard_flagged_any_category": round(hazard_caught / hazard_total, 4)
        if hazard_total
        else None,
        "benign_items": benign_total,
        "benign_false_positive_rate": round(benign_flagged / benign_total, 4)
        if benign_total
        else None,
        "top_confusions": dict(confusions.most_common(8)),
    }


def operating_points(split: str, restrict_to: set[str] | None = None) -> dict:
    """The hazard classifier alone at other thresholds: for each benign false-positive
    rate, the threshold on the harmful mass that gives it on this split and the share of
    harmful items it flags (under any hazard). Shows what the served threshold trades."""
    import numpy as np

    from serve_app.governance.hazards import BENIGN, BENIGN_FPR_BUDGETS, CLASSES

    model = default_semantic()
    items = [i for i in load_items() if i.split == split and i.label in CLASSES]
    if restrict_to is not None:
        items = [i for i in items if i.text in restrict_to]
    # As served: a text the lexical screen or the early exit decided is never flagged (its
    # mass counts as 0).
    screened = model.screen([i.text for i in items])
    b = CLASSES.index(BENIGN)
    early = np.array([stage == "early" for _, stage in screened])
    lexical = np.array([stage == "lexical" for _, stage in screened])
    mass = np.array([0.0 if stage != "full" else 1.0 - p[b] for p, stage in screened])
    benign = np.array([i.label == BENIGN for i in items])
    harmful = np.array([i.label in HAZARDS for i in items])
    served = model.classifier.threshold
    points = {
        # Shares of the split's benign and harmful items the lexical screen passed (the
        # encoder did not run) and the early exit decided.
        "passed_lexical": {
            "benign": round(float(lexical[benign].mean()), 4) if benign.any() else None,
            "harmful": round(float(lexical[harmful].mean()), 4) if harmful.any() else None,
        },
        "exited_early": {
            "benign": round(float(early[benign].mean()), 4) if benign.any() else None,
            "harmful": round(float(early[harmful].mean()), 4) if harmful.any() else None,
        },
        "served": {
            "threshold": served,
            "benign_fpr": round(float((mass[benign] >= served).mean()), 4),
            "hazard_recall_any": round(float((mass[harmful] >= served).mean()), 4),
        },
    }
    for fpr in BENIGN_FPR_BUDGETS:  # the budgets a policy file may choose
        # The lowest threshold that flags at most `fpr` of the benign items.
        t = float(np.quantile(mass[benign], 1.0 - fpr, method="higher")) + 1e-9
        points[f"benign_fpr_{fpr:.2f}"] = {
            "threshold": round(t, 4),
            "benign_fpr": round(float((mass[benign] >= t).mean()), 4),
            "hazard_recall_any": round(float((mass[harmful] >= t).mean()), 4),
        }
    return points


def latency() -> dict:
    """Input + output scoring of one request (messages under 1,000 characters), in-process:
    the same measurement as bench/governance_cost.py (distinct input and output texts)."""
    from bench.governance_cost import measure

    return measure(requests=200, repeats=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", default="test", choices=["train", "dev", "test"])
    ap.add_argument("--out", type=Path)
    ap.add_argument(
        "--only-texts",
        type=Path,
        help="a JSON list of item texts: evaluate only the split's items among them",
    )
    ap.add_argument("--no-latency", action="store_true")
    args = ap.parse_args()
    only = set(json.loads(args.only_texts.read_text())) if args.only_texts else None
    result: dict = {"quality": evaluate(args.split, only)}
    result["classifier_operating_points"] = operating_points(args.split, only)
    if not args.no_latency:
        result["latency"] = latency()
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
