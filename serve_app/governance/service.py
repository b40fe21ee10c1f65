"""The scoring service behind the GovernanceScorer deployment, without Ray.

Policy lookup (the agent's policy file, or the default), one `GovernanceScorer` per
policy set, the semantic classifier's decision at the policy's operating point, the
verdict. `screen` computes one text's class probabilities: the deployment passes its
batched call (texts of concurrent requests encoded together); without it the model
screens the text alone. Tests call this class directly.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from serve_app.governance.library import PolicyLibrary
from serve_app.governance.policy import PolicySet
from serve_app.governance.scorer import GovernanceScorer, Verdict
from serve_app.governance.semantic import Screening, SemanticModel

log = logging.getLogger("promethios.governance")

Screen = Callable[[str], Awaitable[Screening]]


class ScoringService:
    def __init__(
        self, library: PolicyLibrary, semantic: SemanticModel, screen: Screen | None = None
    ) -> None:
        self.library = library
        self.semantic = semantic
        self._screen = screen or self._screen_alone
        self._scorers: dict[int, GovernanceScorer] = {}

    async def _screen_alone(self, text: str) -> Screening:
        return (await asyncio.to_thread(self.semantic.screen, [text]))[0]

    def scorer(self, policies: PolicySet) -> GovernanceScorer:
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
        """The verdict on `text` under the policy file `policy` (None: the default).

        Raises PolicyFileError when that file cannot be used (the ingress answers 503).
        """
        policies = self.library.get(policy)
        classification = None
        if policies.needs_semantic:
            probs, stage = await self._screen(text)
            classification = self.semantic.classifier.decide(
                probs, stage, policies.classifier_max_benign_fpr
            )
        verdict = self.scorer(policies).evaluate(
            text,
            direction,  # type: ignore[arg-type]
            mode,  # type: ignore[arg-type]
            trust_threshold,
            classification=classification,
        )
        if log.isEnabledFor(logging.DEBUG):  # no per-request line at INFO (hot path)
            log.debug("screened %s: %s", direction, verdict.action,
                      extra={"violations": [v.policy_id for v in verdict.violations]})  # fmt: skip
        return verdict

    async def evaluate_many(self, calls: Sequence[Sequence[Any]]) -> list[Verdict | Exception]:
        """`evaluate(*call)` for each call, concurrently (their texts screened as one
        batch); a call that fails has its exception in its place, the others their
        verdicts."""
        return list(
            await asyncio.gather(*(self.evaluate(*call) for call in calls), return_exceptions=True)
        )
