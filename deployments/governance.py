"""Governance-scoring replicas (CPU): the policy set applied to inputs and outputs."""

from __future__ import annotations

from ray import serve

from serve_app.governance.policy import DEFAULT_POLICY_FILE, PolicySet
from serve_app.governance.scorer import GovernanceScorer, Verdict


@serve.deployment(
    name="GovernanceScorer", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256
)
class GovernanceScorerDeployment:
    """Scores texts against the constitution; `evaluate` returns a Verdict."""

    def __init__(self, policy_file: str | None = None) -> None:
        self.policies = PolicySet.load(policy_file or DEFAULT_POLICY_FILE)
        self.scorer = GovernanceScorer(self.policies)

    def evaluate(
        self, text: str, direction: str, mode: str, trust_threshold: float = 0.0
    ) -> Verdict:
        return self.scorer.evaluate(text, direction, mode, trust_threshold)  # type: ignore[arg-type]

    def policy_set(self) -> PolicySet:
        return self.policies
