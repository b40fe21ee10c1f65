"""Every flag an answer carries is true for a reason (issue 23, item 7): each is computed
from evidence gathered through the running parts (serve_app/assurance.py), and each turns
false when what it rests on is taken away. The parts here are real: the shipped scorer and
policy file, a real recorder; the one removal per test is the attack."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import yaml

from serve_app.assurance import (
    Assurance,
    UngovernedCall,
    blocking_policies,
    governance_flags,
    governed,
    native_advantages,
    require_governed,
)
from serve_app.governance.policy import DEFAULT_POLICY_FILE, PolicySet
from serve_app.governance.scorer import GovernanceScorer
from serve_app.recording import InteractionRecorder


def _scorer(policies: PolicySet) -> Any:
    scorer = GovernanceScorer(policies)

    async def evaluate(text, direction, mode, threshold, policy=None):  # noqa: ANN001, ANN202
        return scorer.evaluate(text, direction, mode, threshold)

    return evaluate


async def _guarded_generate(messages, sampling, request_id, upstream=None):  # noqa: ANN001, ANN202
    require_governed("the model")  # as RayBackends and LocalBackends do
    return "text"


async def _unguarded_generate(messages, sampling, request_id, upstream=None):  # noqa: ANN001, ANN202
    return "text"  # a backend wired without the guard


def _assurance(**overrides: Any) -> Assurance:
    policies = PolicySet.load()
    recorder = InteractionRecorder(lambda records: len(records))

    async def writer_stats() -> dict:
        return recorder.stats()

    args: dict[str, Any] = {
        "evaluate": _scorer(policies),
        "generate": _guarded_generate,
        "writer_stats": writer_stats,
        "blocking_policies": blocking_policies(policies),
        "bench_routes_on": False,
        "governance_trained_model": True,
        "param_count": 1_173_248,
    }
    args.update(overrides)
    return Assurance(**args)


def _flags(assurance: Assurance) -> tuple[dict, dict]:
    ev = asyncio.run(assurance.evidence())
    return governance_flags(ev, native=True), native_advantages(ev, violation_count=0)


def test_with_everything_in_place_the_flags_hold_and_the_tiny_model_is_no_7b() -> None:
    gov, adv = _flags(_assurance())
    assert gov == {
        "native_governance": True,
        "bypass_proof": True,
        "constitutional_compliance": True,
        "real_time_monitoring": True,
    }
    assert adv["bypass_proof_governance"] and adv["dataset_optimized"]
    assert adv["lambda_7b_performance"] is False  # 1.2M parameters
    assert _flags(_assurance(param_count=7_241_732_096))[1]["lambda_7b_performance"] is True


def test_a_route_that_skips_governance_fails_closed_and_bypass_proof_turns_false() -> None:
    with pytest.raises(UngovernedCall):
        asyncio.run(_guarded_generate([], {}, "r"))

    async def inside() -> str:
        with governed("test"):
            return await _guarded_generate([], {}, "r")

    assert asyncio.run(inside()) == "text"
    gov, adv = _flags(_assurance(generate=_unguarded_generate))
    assert gov["bypass_proof"] is False and adv["bypass_proof_governance"] is False
    assert gov["native_governance"] is False


def test_bench_routes_on_make_the_deployment_not_bypass_proof() -> None:
    assert _flags(_assurance(bench_routes_on=True))[0]["bypass_proof"] is False


def test_a_policy_file_that_only_flags_turns_constitutional_compliance_false(
    tmp_path: Path,
) -> None:
    raw = yaml.safe_load(Path(DEFAULT_POLICY_FILE).read_text())
    for policy in raw["policies"]:
        policy["actions"] = {"strict": "flag", "standard": "flag", "permissive": "flag"}
    path = tmp_path / "flag-only.yaml"
    path.write_text(yaml.safe_dump(raw))
    loose = PolicySet.load(path)
    gov, _ = _flags(_assurance(evaluate=_scorer(loose), blocking_policies=blocking_policies(loose)))
    assert gov["constitutional_compliance"] is False
    # The canary is still blocked (its trust score is under the agent's threshold): the
    # scorer still governs, so bypass_proof rests on the guard and the canary, not policies.
    assert gov["bypass_proof"] is True


def test_a_scorer_that_does_not_answer_turns_the_flags_false() -> None:
    async def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionError("scorer unreachable")

    gov, _ = _flags(_assurance(evaluate=down))
    assert not gov["bypass_proof"] and not gov["constitutional_compliance"]


def test_a_writer_that_does_not_answer_turns_monitoring_false() -> None:
    async def down() -> dict:
        raise ConnectionError("writer unreachable")

    assert _flags(_assurance(writer_stats=down))[0]["real_time_monitoring"] is False


def test_a_model_not_built_on_the_governance_corpus_is_not_native_or_dataset_optimized() -> None:
    gov, adv = _flags(_assurance(governance_trained_model=False))
    assert gov["native_governance"] is False
    assert adv["dataset_optimized"] is False and adv["constitutional_by_design"] is False


def test_a_wrapped_agent_is_not_native_governance() -> None:
    ev = asyncio.run(_assurance().evidence())
    assert governance_flags(ev, native=False)["native_governance"] is False
