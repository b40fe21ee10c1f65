"""Governed streaming: model text is released only after output governance has passed it.

`StreamGuard` accumulates the model's deltas and, each time `check_every` new
characters have arrived, scores the whole text so far. It releases the scored
(possibly redacted) text except the last `hold_back` characters, and never past
the start of a span a detector has marked, since more text may extend that span
into something that must be redacted or blocked. When the model finishes,
`finish` scores the complete text and releases the rest.

Guarantees:
- every released character is part of a prefix of a text whose verdict was not
  a block;
- a block verdict stops the guard; nothing of the blocked text after what was
  already released leaves;
- if a later verdict would change text already released (a redaction reaching
  back past the window), the guard stops too (fails closed): it cannot unsend.

The whole answer is never buffered: text leaves `hold_back` characters behind
the model, at most `check_every` characters later than that.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from serve_app.governance.scorer import Verdict

Evaluate = Callable[[str], Awaitable[Verdict]]

DEFAULT_CHECK_EVERY = 24
DEFAULT_HOLD_BACK = 32


@dataclass(frozen=True)
class GuardStep:
    """What one fed delta (or the finish) allows: text to send now, and whether to stop."""

    release: str
    verdict: Verdict | None
    stopped: bool = False


class StreamGuard:
    """Holds back a window of streamed output until governance has passed it."""

    def __init__(
        self,
        evaluate: Evaluate,
        *,
        check_every: int = DEFAULT_CHECK_EVERY,
        hold_back: int = DEFAULT_HOLD_BACK,
    ) -> None:
        if check_every <= 0 or hold_back < 0:
            raise ValueError("check_every must be > 0 and hold_back >= 0")
        self._evaluate = evaluate
        self.check_every = check_every
        self.hold_back = hold_back
        self._raw = ""
        self._sent = ""
        self._unchecked = 0
        self.checks = 0
        self.last_verdict: Verdict | None = None
        self.stopped = False
        self.withdrawn = False

    @property
    def sent(self) -> str:
        """Everything released so far."""
        return self._sent

    @property
    def raw(self) -> str:
        """Everything the model produced so far (never sent as such)."""
        return self._raw

    async def feed(self, delta: str) -> GuardStep:
        """Take a model delta; returns the text now safe to send (often empty)."""
        if self.stopped:
            raise RuntimeError("the guard has stopped")
        self._raw += delta
        self._unchecked += len(delta)
        if self._unchecked < self.check_every:
            return GuardStep("", None)
        return await self._check(final=False)

    async def finish(self) -> GuardStep:
        """Score the complete text; returns the rest to send, or stops on a block."""
        if self.stopped:
            raise RuntimeError("the guard has stopped")
        return await self._check(final=True)

    async def _check(self, *, final: bool) -> GuardStep:
        self._unchecked = 0
        verdict = await self._evaluate(self._raw)
        self.checks += 1
        self.last_verdict = verdict
        if verdict.blocked:
            self.stopped = True
            return GuardStep("", verdict, stopped=True)
        text = verdict.text
        if not text.startswith(self._sent):
            self.stopped = self.withdrawn = True
            return GuardStep("", verdict, stopped=True)
        if final:
            limit = len(text)
        else:
            limit = len(text) - self.hold_back
            # Text before the first marked span is the same in raw and redacted form.
            for v in verdict.violations:
                limit = min(limit, v.span[0])
        if limit <= len(self._sent):
            return GuardStep("", verdict)
        release = text[len(self._sent) : limit]
        self._sent += release
        return GuardStep(release, verdict)
