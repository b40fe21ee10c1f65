"""Governance-scoring replicas (CPU): the policy set applied to inputs and outputs."""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from serve_app.governance.library import PolicyLibrary
from serve_app.governance.policy import DEFAULT_POLICY_FILE, PolicySet
from serve_app.governance.scorer import GovernanceScorer, Verdict
from serve_app.governance.semantic import Screening, SemanticModel
from serve_app.observability.logs import configure_from_settings
from serve_app.settings import get_settings

log = logging.getLogger("promethios.governance")


@serve.deployment(
    name="GovernanceScorer", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256
)
class GovernanceScorerDeployment:
    """Scores texts against the constitution; `evaluate` returns a Verdict."""

    def __init__(self, policy_file: str | None = None) -> None:
        configure_from_settings("GovernanceScorer")
        self.library = PolicyLibrary(policy_file or DEFAULT_POLICY_FILE)
        self.policies = self.library.get(None)
        self.semantic = SemanticModel.load(get_settings().var_dir)
        self.semantic.screen(["warm-up"])
        self._scorers: dict[int, GovernanceScorer] = {}

    # No wait for a batch to fill: texts that queued while the previous batch was encoded
    # form the next one, and a lone request (concurrency 1) is not held back 2 ms twice.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _screen(self, texts: list[str]) -> list[Screening]:
        """Class probabilities of concurrent requests' texts (the lexical screen's, the early
        exit's or the full classifier's), computed as one batch off the event loop."""
        return await asyncio.to_thread(self.semantic.screen, texts)

    def _scorer(self, policies: PolicySet) -> GovernanceScorer:
        scorer = self._scorers.get(id(policies))
        if scorer is None or scorer.policies is not policies:
            scorer = self._scorers[id(policies)] = GovernanceScorer(policies, self.semantic)
        return scorer

    async def evaluate(
        self,
        text: str,
        direction: str,
        mode: str,
        trust_threshold: float = 0.0,
        policy: str | None = None,
    ) -> Verdict:
        """The verdict on `text` under the agent's policy file (None: the default).

        Raises when the policy file cannot be used; the ingress answers 503 then.
        """
        policies = self.library.get(policy)
        classification = None
        if policies.needs_semantic:
            probs, stage = await self._screen(text)
            classification = self.semantic.classifier.decide(
                probs, stage, policies.classifier_max_benign_fpr
            )
        verdict = self._scorer(policies).evaluate(
            text,
            direction,  # type: ignore[arg-type]
            mode,  # type: ignore[arg-type]
            trust_threshold,
            classification=classification,
        )
        log.info(
            "screened %s: %s",
            direction,
            verdict.action,
            extra={"violations": [v.policy_id for v in verdict.violations]},
        )
        return verdict

    def policy_set(self) -> PolicySet:
        return self.policies
