"""The governance scorer: policies applied to a text, giving a `Verdict` with scores.

Score definitions (also in the README):
- risk = 1 - prod(1 - w(severity)) over the violations found, w from SEVERITY_WEIGHT.
- trust_score = 1 - risk.
- compliance_rate = policies passed / policies evaluated.
- constitutional_adherence = principles with no violation / principles.
- governance_interventions = number of block and redact actions taken.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from serve_app.governance.detectors import DETECTORS
from serve_app.governance.findings import Finding
from serve_app.governance.harm import Classification
from serve_app.governance.hazards import SEMANTIC_DETECTORS
from serve_app.governance.policy import SEVERITY_WEIGHT, ComplianceMode, PolicySet

Direction = Literal["input", "output"]
VerdictAction = Literal["allow", "flag", "redact", "block"]
_ACTION_RANK = {"allow": 0, "flag": 1, "redact": 2, "block": 3}


@dataclass(frozen=True)
class Violation:
    """One policy breached by one span of the text."""

    policy_id: str
    principle: str
    category: str
    severity: str
    action: str
    direction: str
    span: tuple[int, int]
    detector: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["span"] = list(self.span)
        return d


@dataclass(frozen=True)
class Verdict:
    """What governance decided about one text, and the scores behind it."""

    direction: str
    action: VerdictAction
    text: str
    violations: list[Violation] = field(default_factory=list)
    trust_score: float = 1.0
    compliance_rate: float = 1.0
    constitutional_adherence: float = 1.0
    governance_interventions: int = 0
    policies_evaluated: int = 0
    principles_evaluated: int = 0
    # The harmful-content classifier's view: {"flagged", "confidence", "probs", "stage"}
    # (None: not run); stage "early": the early exit's head decided, "lexical": the lexical
    # screen did, before the encoder (see Classification).
    classifier: dict | None = None
    policy_version: str | None = None

    @property
    def blocked(self) -> bool:
        return self.action == "block"


def combined_risk(severities: list[str]) -> float:
    """1 - prod(1 - w) over the severities; 0.0 when there are none."""
    keep = 1.0
    for severity in severities:
        keep *= 1.0 - SEVERITY_WEIGHT[severity]
    return 1.0 - keep


class GovernanceScorer:
    """Applies a PolicySet to texts in one compliance mode at a time."""

    def __init__(self, policies: PolicySet, semantic: Any = None) -> None:
        self.policies = policies
        self.semantic = semantic  # a SemanticModel, needed when a policy is semantic

    def evaluate(
        self,
        text: str,
        direction: Direction,
        mode: ComplianceMode,
        trust_threshold: float = 0.0,
        classification: Classification | None = None,
    ) -> Verdict:
        """Run every policy's detector over `text`; return the verdict with scores.

        The action is the strongest one the violated policies call for in `mode`;
        in strict and standard modes a trust score under `trust_threshold` blocks.
        Semantic policies use `classification` (computed here when not given; a
        scorer built without a semantic model loads the default one on first need).
        """
        if classification is None and self.policies.needs_semantic:
            if self.semantic is None:
                from serve_app.governance.semantic import default_semantic

                self.semantic = default_semantic()
            budget = self.policies.classifier_max_benign_fpr
            classification = self.semantic.classify([text], budget)[0]
        violations: list[Violation] = []
        for policy in self.policies.policies:
            action = policy.actions[mode]
            for finding in _findings(policy.detector, text, classification):
                violations.append(
                    Violation(
                        policy_id=policy.id,
                        principle=policy.principle,
                        category=policy.category,
                        severity=policy.severity,
                        action=action,
                        direction=direction,
                        span=(finding.start, finding.end),
                        detector=finding.detector,
                    )
                )
        violations = _drop_shadowed(violations)
        action: VerdictAction = "allow"
        for v in violations:
            if _ACTION_RANK[v.action] > _ACTION_RANK[action]:
                action = v.action  # type: ignore[assignment]
        trust = round(1.0 - combined_risk([v.severity for v in violations]), 6)
        if action != "block" and mode != "permissive" and trust < trust_threshold:
            action = "block"
        out_text = text
        if action == "redact":
            out_text = redact(text, [v for v in violations if v.action == "redact"])
        n_policies = len(self.policies.policies)
        n_principles = len(self.policies.principles)
        violated_policies = {v.policy_id for v in violations}
        violated_principles = {v.principle for v in violations}
        interventions = 1 if action == "block" else sum(v.action == "redact" for v in violations)
        return Verdict(
            direction=direction,
            action=action,
            text="" if action == "block" else out_text,
            violations=violations,
            trust_score=trust,
            compliance_rate=(n_policies - len(violated_policies)) / n_policies
            if n_policies
            else 1.0,
            constitutional_adherence=(
                (n_principles - len(violated_principles)) / n_principles if n_principles else 1.0
            ),
            governance_interventions=interventions,
            policies_evaluated=n_policies,
            principles_evaluated=n_principles,
            classifier=(
                {
                    "flagged": classification.flagged,
                    "confidence": classification.confidence,
                    "probs": classification.probs,
                    "stage": classification.stage,
                }
                if classification is not None
                else None
            ),
            policy_version=self.policies.version,
        )


def _findings(detector: str, text: str, classification: Classification | None) -> Iterator[Finding]:
    """A rule detector's spans, or the whole text when the classifier flags its class."""
    if detector in DETECTORS:
        yield from DETECTORS[detector](text)
    elif classification is not None and classification.flagged == SEMANTIC_DETECTORS[detector]:
        yield Finding(detector, 0, len(text), classification.flagged.upper())


def _drop_shadowed(violations: list[Violation]) -> list[Violation]:
    """Drop a finding inside another's span that is at least as severe (a card is not a phone)."""

    # Only span (rule) detectors shadow each other: a classifier verdict is about the
    # whole text and a different risk. Identical span and severity: the first one stays.
    def shadows(i: int, a: Violation, j: int, b: Violation) -> bool:
        if a.detector in SEMANTIC_DETECTORS or b.detector in SEMANTIC_DETECTORS:
            return False
        if i == j or a.detector == b.detector:
            return False
        if not (a.span[0] <= b.span[0] and b.span[1] <= a.span[1]):
            return False
        wa, wb = SEVERITY_WEIGHT[a.severity], SEVERITY_WEIGHT[b.severity]
        if a.span == b.span and wa == wb:
            return i < j
        return wa >= wb

    indexed = list(enumerate(violations))
    return [b for j, b in indexed if not any(shadows(i, a, j, b) for i, a in indexed)]


def redact(text: str, violations: list[Violation]) -> str:
    """Replace exactly each violation's span with `[REDACTED:LABEL]` (overlaps merged)."""
    spans = sorted((v.span[0], v.span[1], v.detector.upper()) for v in violations)
    merged: list[list] = []
    for start, end, label in spans:
        if merged and start < merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end, label])
    out, pos = [], 0
    for start, end, label in merged:
        out.append(text[pos:start])
        out.append(f"[REDACTED:{label}]")
        pos = end
    out.append(text[pos:])
    return "".join(out)


@dataclass(frozen=True)
class InteractionScores:
    """The scores of one exchange: the input verdict and, if the model ran, the output's."""

    trust_score: float
    compliance_rate: float
    constitutional_adherence: float
    governance_interventions: int
    policy_violations: list[dict]


def combine(verdicts: list[Verdict], policies: PolicySet) -> InteractionScores:
    """Scores over all verdicts of one interaction (same formulas, over every check made)."""
    violations = [v for verdict in verdicts for v in verdict.violations]
    checks = sum(verdict.policies_evaluated for verdict in verdicts)
    failed_checks = len({(v.direction, v.policy_id) for v in violations})
    n_principles = max((v.principles_evaluated for v in verdicts), default=0) or len(
        policies.principles
    )
    violated_principles = {v.principle for v in violations}
    return InteractionScores(
        trust_score=round(1.0 - combined_risk([v.severity for v in violations]), 6),
        compliance_rate=round((checks - failed_checks) / checks, 6) if checks else 1.0,
        constitutional_adherence=(
            round((n_principles - len(violated_principles)) / n_principles, 6)
            if n_principles
            else 1.0
        ),
        governance_interventions=sum(verdict.governance_interventions for verdict in verdicts),
        policy_violations=[v.to_dict() for v in violations],
    )
