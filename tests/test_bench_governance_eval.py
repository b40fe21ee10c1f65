"""bench/governance_eval.py's operating points: the served classifier's trade (the lexical
screen and the early exit in front) between flagging harmful items and flagging benign
ones, computed from the real model on dev items."""

from __future__ import annotations

from bench import governance_eval
from training.labeled import load_items


def test_operating_points_trade_recall_for_false_positives() -> None:
    dev = [i for i in load_items() if i.split == "dev"]
    # A slice with benign and harmful items of several seeds (fast: ~200 embeddings).
    some = {i.text for i in dev if i.label == "benign"}
    some = set(sorted(some)[:100]) | {i.text for i in dev if i.label != "benign"}
    some = set(sorted(some)[:200])
    points = governance_eval.operating_points("dev", some)
    served = points.pop("served")
    assert 0.3 <= served["threshold"] < 1.0
    # As served by default the shortcuts are off (PROMETHIOS_GOVERNANCE_SHORTCUTS): the
    # classifier decides every text. The shortcuts themselves: test_early_exit.py and
    # test_lexical_screen.py, loaded with shortcuts=True.
    passed, exited = points.pop("passed_lexical"), points.pop("exited_early")
    assert passed == exited == {"benign": 0.0, "harmful": 0.0}, (passed, exited)
    rates = sorted(points, key=lambda k: float(k.rsplit("_", 1)[1]))
    assert [float(k.rsplit("_", 1)[1]) for k in rates] == [0.01, 0.02, 0.03, 0.05, 0.1]
    for key in rates:  # never over the false-positive rate asked for
        assert points[key]["benign_fpr"] <= float(key.rsplit("_", 1)[1]) + 1e-9
    recalls = [points[k]["hazard_recall_any"] for k in rates]
    thresholds = [points[k]["threshold"] for k in rates]
    assert recalls == sorted(recalls) and thresholds == sorted(thresholds, reverse=True)
    assert 0.0 < recalls[-1] <= 1.0


def test_a_second_label_span_counts_as_found_not_as_a_false_positive() -> None:
    # Test items annotated `also_contains: pii` (IP addresses inside code-interpreter
    # attacks): the PII detector's finding there is a true positive.
    also = {i.text for i in load_items() if i.split == "test" and "pii" in i.also}
    assert len(also) == 2
    pii = governance_eval.evaluate("test", also)["per_category"]["pii"]
    assert pii == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 2}
