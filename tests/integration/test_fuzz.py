"""Schemathesis fuzzes every operation of the graph's own OpenAPI schema, authenticated
with a real key, in valid and invalid shapes: no answer is a 5xx, and every error is in
the envelope of its route (`{"success": false, "error": {"code", "message"}}`, or
OpenAI's `{"error": {...}}` under /v1/).

Bounded: `PROMETHIOS_FUZZ_EXAMPLES` examples per operation (default 20) and a time
limit on the whole run; both schemathesis modes: positive (valid per the schema)
and negative (violating it). Marked slow with the rest of the graph's tests.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from tests.integration.conftest import Graph

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("PROMETHIOS_FUZZ_EXAMPLES", "20"))


@pytest.fixture(scope="module")
def fuzzer_key(graph: Graph) -> str:
    """A user of its own, so the fuzzer's rate-limit buckets and agents are its own."""
    return graph.new_user("fuzzer")


def _check(case: Any, response: Any) -> None:
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    assert response.status_code < 500, where
    if response.status_code < 400:
        return
    body = response.json()
    if case.formatted_path.startswith("/v1/"):
        assert set(body) == {"error"}, where
        assert body["error"]["message"] and body["error"]["code"], where
    else:
        assert body.get("success") is False and set(body) == {"success", "error"}, where
        assert set(body["error"]) == {"code", "message"}, where
        assert body["error"]["code"] and body["error"]["message"], where


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_server_error_and_every_error_in_the_envelope(
    graph: Graph, fuzzer_key: str, mode: GenerationMode
) -> None:
    """Every operation, `EXAMPLES` cases each; all failures are collected, then reported."""
    schema = schemathesis.openapi.from_url(f"{graph.base_url}/openapi.json")
    headers = {"Authorization": f"Bearer {fuzzer_key}"}
    failures: list[str] = []
    statuses: list[int] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: Any) -> None:
            response = case.call(headers=headers, timeout=120)
            statuses.append(response.status_code)
            _check(case, response)

        try:
            fuzz()
        except Unsatisfiable:
            continue  # nothing to negate (no parameters, no body): nothing to send
        except AssertionError as exc:
            failures.append(f"{operation.label}: {str(exc).splitlines()[0]}")
        operations += 1
    assert not failures, "\n".join(failures)
    # Negative mode has nothing to negate where every input is a free-form string.
    assert operations >= (20 if mode == GenerationMode.POSITIVE else 8), operations
    assert len(statuses) >= operations * 2
    if mode == GenerationMode.POSITIVE:  # the key works: valid cases get through
        assert sum(200 <= s < 300 for s in statuses) >= 10, statuses
    else:
        assert sum(400 <= s < 500 for s in statuses) >= len(statuses) // 2, statuses
