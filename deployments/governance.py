"""Governance-scoring replicas (CPU): the policy set applied to inputs and outputs.

A thin wrapper: the scoring itself is `serve_app.governance.service.ScoringService`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from ray import serve

from serve_app.governance.library import PolicyLibrary
from serve_app.governance.policy import DEFAULT_POLICY_FILE, PolicySet
from serve_app.governance.scorer import Verdict
from serve_app.governance.semantic import Screening, SemanticModel
from serve_app.governance.service import ScoringService
from serve_app.observability.logs import configure_from_settings
from serve_app.settings import get_settings

log = logging.getLogger("promethios.governance")


@serve.deployment(
    name="GovernanceScorer", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256
)
class GovernanceScorerDeployment:
    """Scores texts against the constitution: `evaluate_many` returns a Verdict per call
    (the ingress sends concurrent requests' texts in one call; serve_app/coalesce.py)."""

    def __init__(self, policy_file: str | None = None) -> None:
        configure_from_settings("GovernanceScorer")
        self.library = PolicyLibrary(policy_file or DEFAULT_POLICY_FILE)
        self.policies = self.library.get(None)
        self.semantic = SemanticModel.load(get_settings().var_dir)
        self.semantic.screen(["warm-up"])
        self.service = ScoringService(self.library, self.semantic, screen=self._screen)

    # No wait for a batch to fill: texts that queued while the previous batch was encoded
    # form the next one, and a lone request (concurrency 1) is not held back 2 ms twice.
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _screen(self, texts: list[str]) -> list[Screening]:
        """Class probabilities of concurrent requests' texts (the lexical screen's, the early
        exit's or the full classifier's), computed as one batch off the event loop."""
        return await asyncio.to_thread(self.semantic.screen, texts)

    async def evaluate_many(
        self, calls: Sequence[Sequence[Any]], request_ids: Sequence[str] = ()
    ) -> list[Verdict | Exception]:
        """`ScoringService.evaluate(*call)` for each call (text, direction, mode, trust
        threshold, policy name or None): its verdict, or the exception of that call (an
        unusable policy file: the ingress answers 503)."""
        verdicts = await self.service.evaluate_many(calls)
        # One line per batch (not per text): the requests it served, by id.
        log.info("screened %d text(s)", len(calls), extra={"request_ids": list(request_ids)})
        return verdicts

    def policy_set(self) -> PolicySet:
        return self.policies
