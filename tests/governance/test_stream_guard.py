"""StreamGuard: released text has always passed governance; blocks stop the stream."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.governance.policy import DEFAULT_POLICY_FILE, PolicySet
from serve_app.governance.scorer import GovernanceScorer, Verdict, Violation
from serve_app.governance.stream_guard import StreamGuard


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)]


async def _run(guard: StreamGuard, deltas: list[str]) -> tuple[list[str], bool]:
    out: list[str] = []
    for d in deltas:
        step = await guard.feed(d)
        out.append(step.release)
        if step.stopped:
            return out, True
    step = await guard.finish()
    out.append(step.release)
    return out, step.stopped


def _scorer(mode: str = "standard"):
    scorer = GovernanceScorer(PolicySet.load(DEFAULT_POLICY_FILE))
    calls: list[str] = []

    async def evaluate(text: str) -> Verdict:
        calls.append(text)
        return scorer.evaluate(text, "output", mode)  # type: ignore[arg-type]

    return evaluate, calls


def test_clean_text_is_released_in_pieces_before_the_end() -> None:
    evaluate, calls = _scorer()
    text = "Thank you for reaching out. Your order shipped yesterday and should arrive soon."
    guard = StreamGuard(evaluate, check_every=10, hold_back=16)
    out, stopped = asyncio.run(_run(guard, _chunks(text, 4)))
    assert not stopped and "".join(out) == text
    # text left before the model finished: not one buffer at the end
    assert sum(len(p) for p in out[:-1]) >= len(text) - 16 - 10
    assert len(calls) == guard.checks >= len(text) // 12


def test_a_blocked_span_never_leaves() -> None:
    evaluate, _ = _scorer("strict")
    secret = "my AWS key is AKIAIOSFODNN7EXAMPLE ok"
    text = "Here is the information you asked for, " + secret + " and more words after it."
    guard = StreamGuard(evaluate, check_every=8, hold_back=24)
    out, stopped = asyncio.run(_run(guard, _chunks(text, 3)))
    sent = "".join(out)
    assert stopped and guard.last_verdict is not None and guard.last_verdict.blocked
    assert "AKIA" not in sent
    assert text.startswith(sent)


def test_redaction_is_applied_before_release() -> None:
    evaluate, _ = _scorer("standard")
    text = "You can write to jane.doe@example.com for help with the return of the item."
    guard = StreamGuard(evaluate, check_every=6, hold_back=24)
    out, stopped = asyncio.run(_run(guard, _chunks(text, 5)))
    sent = "".join(out)
    assert not stopped
    assert "jane.doe@example.com" not in sent and "[REDACTED:" in sent


def test_nothing_is_released_past_a_marked_span_start() -> None:
    async def evaluate(text: str) -> Verdict:
        i = text.find("X")
        violations = []
        if i >= 0:
            violations = [Violation("p", "pr", "c", "low", "flag", "output", (i, len(text)), "d")]
        return Verdict("output", "flag" if violations else "allow", text, violations)

    guard = StreamGuard(evaluate, check_every=5, hold_back=0)
    out = asyncio.run(guard.feed("abcdeXfghij"))
    assert out.release == "abcde"


def test_a_redaction_reaching_into_sent_text_stops_the_stream() -> None:
    async def evaluate(text: str) -> Verdict:
        if len(text) > 20:
            return Verdict("output", "redact", "[REDACTED:X]" + text[10:])
        return Verdict("output", "allow", text)

    guard = StreamGuard(evaluate, check_every=5, hold_back=2)
    out, stopped = asyncio.run(_run(guard, _chunks("a" * 40, 5)))
    assert stopped and guard.withdrawn
    assert "REDACTED" not in "".join(out)


def test_bad_parameters_are_refused() -> None:
    async def evaluate(text: str) -> Verdict:
        return Verdict("output", "allow", text)

    with pytest.raises(ValueError):
        StreamGuard(evaluate, check_every=0)
