"""Token-bucket rate limits on requests and tokens per minute, per deployment and per API key.

Plain Python (no Ray): `deployments/rate_limiter.py` holds one `RateLimiter` in
a single Serve replica so every ingress replica shares its state.

Semantics:
- each scope (a deployment, an API key) has a request bucket and a token bucket;
  a bucket holds up to its per-minute limit and refills continuously at
  limit / 60 per second;
- `acquire` admits a request when every scope's request bucket holds at least
  one request and every token bucket is positive, and then takes one request
  from each; if any scope refuses, nothing is taken;
- tokens are charged after the answer (`charge`), by the measured prompt plus
  completion tokens; a bucket may go into debt, and the scope is refused until
  it refills above zero;
- charges may arrive folded into the next `acquire` (`Charges`: tokens per scope
  key, summed): they are applied before that admission is decided, so a caller
  that defers its charges sees the same decisions as one that sends them at once.

Durability: the buckets live in one replica's memory. `LimiterSnapshot` writes them (levels
and wall-clock time) to a file on the shared spool volume at most once a second while they
change, and a new limiter replica (restarted, or moved to another node) starts from that
file, refilled by the time that passed, instead of with full buckets. What was admitted in
the last second before a crash is not in the file: the error is at most one second of
admissions per scope.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

log = logging.getLogger("promethios.ratelimit")


@dataclass(frozen=True)
class Limit:
    """Per-minute limits of one scope; None means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None

    @property
    def unlimited(self) -> bool:
        return self.requests_per_minute is None and self.tokens_per_minute is None


# Deferred token charges: scope key -> (its limit, tokens to take).
Charges: TypeAlias = dict[str, tuple[Limit, int]]


@dataclass
class TokenBucket:
    capacity: float
    level: float
    updated: float

    @property
    def rate(self) -> float:
        return self.capacity / 60.0

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    def seconds_until(self, level: float) -> float:
        """Seconds until the bucket holds `level` (0 when it already does)."""
        return max(0.0, (level - self.level) / self.rate)


@dataclass(frozen=True)
class Decision:
    """The outcome of `acquire`, with the figures of the tightest scope for the headers."""

    allowed: bool
    retry_after_s: float = 0.0
    scope: str | None = None
    limit_requests: int | None = None
    remaining_requests: int | None = None
    reset_requests_s: float | None = None
    limit_tokens: int | None = None
    remaining_tokens: int | None = None
    reset_tokens_s: float | None = None

    def headers(self) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers (and Retry-After when refused)."""
        out: dict[str, str] = {}
        if self.limit_requests is not None:
            out["x-ratelimit-limit-requests"] = str(self.limit_requests)
            out["x-ratelimit-remaining-requests"] = str(self.remaining_requests)
            out["x-ratelimit-reset-requests"] = duration(self.reset_requests_s or 0.0)
        if self.limit_tokens is not None:
            out["x-ratelimit-limit-tokens"] = str(self.limit_tokens)
            out["x-ratelimit-remaining-tokens"] = str(self.remaining_tokens)
            out["x-ratelimit-reset-tokens"] = duration(self.reset_tokens_s or 0.0)
        if not self.allowed:
            out["retry-after"] = str(max(1, math.ceil(self.retry_after_s)))
        return out


def duration(seconds: float) -> str:
    """OpenAI's reset format: '1s', '6m0s', '0.5s'."""
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest):d}s"


@dataclass
class _Scope:
    limit: Limit
    requests: TokenBucket | None
    tokens: TokenBucket | None
    used_at: float = field(default=0.0)


class RateLimiter:
    """Buckets per scope key; `acquire` before a request, `charge` tokens after it."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        max_idle_s: float = 600.0,
        wall: Callable[[], float] = time.time,
    ):
        self._clock = clock
        self._wall = wall
        self._scopes: dict[str, _Scope] = {}
        self._max_idle_s = max_idle_s
        self.changes = 0  # admissions and charges so far (the snapshot writes on a change)

    def snapshot(self) -> dict[str, Any]:
        """Every bucket's level now, with the wall-clock time (monotonic clocks differ
        between processes)."""
        now = self._clock()
        scopes = {}
        for key, s in self._scopes.items():
            levels = []
            for bucket in (s.requests, s.tokens):
                if bucket is not None:
                    bucket.refill(now)
                levels.append(None if bucket is None else bucket.level)
            scopes[key] = {
                "limit": [s.limit.requests_per_minute, s.limit.tokens_per_minute],
                "levels": levels,
            }
        return {"version": 1, "at": self._wall(), "scopes": scopes}

    def restore(self, data: dict[str, Any]) -> int:
        """Start from a snapshot, refilled by the wall-clock time since it was taken.
        Returns the number of scopes restored."""
        if data.get("version") != 1:
            raise ValueError(f"unknown rate-limit snapshot version {data.get('version')!r}")
        elapsed = max(0.0, self._wall() - float(data["at"]))
        now = self._clock()
        for key, entry in data["scopes"].items():
            rpm, tpm = entry["limit"]
            limit = Limit(requests_per_minute=rpm, tokens_per_minute=tpm)
            buckets = []
            for per_minute, level in zip((rpm, tpm), entry["levels"], strict=True):
                bucket = _bucket(per_minute, now)
                if bucket is not None and level is not None:
                    bucket.level = min(bucket.capacity, float(level) + elapsed * bucket.rate)
                buckets.append(bucket)
            self._scopes[key] = _Scope(limit, buckets[0], buckets[1], used_at=now)
        return len(data["scopes"])

    def _scope(self, key: str, limit: Limit, now: float) -> _Scope:
        scope = self._scopes.get(key)
        if scope is None or scope.limit != limit:
            scope = _Scope(
                limit=limit,
                requests=_bucket(limit.requests_per_minute, now),
                tokens=_bucket(limit.tokens_per_minute, now),
            )
            self._scopes[key] = scope
        for bucket in (scope.requests, scope.tokens):
            if bucket is not None:
                bucket.refill(now)
        scope.used_at = now
        return scope

    def acquire(self, scopes: dict[str, Limit], charges: Charges | None = None) -> Decision:
        """Apply `charges` (tokens of earlier answers), then admit one request under every
        scope, or refuse without taking anything."""
        if charges:
            self.charge_many(charges)
        now = self._clock()
        self._prune(now)
        live = {k: self._scope(k, lim, now) for k, lim in scopes.items() if not lim.unlimited}
        waits: dict[str, float] = {}
        for key, s in live.items():
            wait = 0.0
            if s.requests is not None and s.requests.level < 1.0:
                wait = max(wait, s.requests.seconds_until(1.0))
            if s.tokens is not None and s.tokens.level <= 0.0:
                wait = max(wait, s.tokens.seconds_until(1.0))
            if wait > 0.0:
                waits[key] = wait
        if waits:
            key = max(waits, key=lambda k: waits[k])
            return _decision(False, key, live[key], waits[key])
        for s in live.values():
            if s.requests is not None:
                s.requests.level -= 1.0
                self.changes += 1
        if not live:
            return Decision(True)
        tightest = min(live, key=lambda k: _headroom(live[k]))
        return _decision(True, tightest, live[tightest], 0.0)

    def charge(self, scopes: dict[str, Limit], tokens: int) -> None:
        """Take `tokens` from each scope's token bucket (it may go into debt)."""
        if tokens <= 0:
            return
        now = self._clock()
        for key, lim in scopes.items():
            if lim.tokens_per_minute is None:
                continue
            s = self._scope(key, lim, now)
            assert s.tokens is not None
            s.tokens.level -= tokens
            self.changes += 1

    def charge_many(self, charges: Charges) -> None:
        """Each scope's tokens, as `charge` takes them."""
        for key, (lim, tokens) in charges.items():
            self.charge({key: lim}, tokens)

    def _prune(self, now: float) -> None:
        if len(self._scopes) < 1024:
            return
        for key in [k for k, s in self._scopes.items() if now - s.used_at > self._max_idle_s]:
            del self._scopes[key]


class LimiterSnapshot:
    """A limiter's buckets in a file: `load` at start, `maybe_save` after each call (it
    writes at most every `every_s` seconds, and only after a change; atomically)."""

    def __init__(
        self, path: Path, every_s: float = 1.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = Path(path)
        self.every_s = every_s
        self._clock = clock
        self._saved_at = -math.inf
        self._saved_changes = 0

    def load(self, limiter: RateLimiter) -> int:
        """Restore `limiter` from the file; a missing file starts fresh, an unreadable one
        too (logged: the buckets start full, as before this file existed)."""
        try:
            data = json.loads(self.path.read_text())
            restored = limiter.restore(data)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("rate-limit state %s unreadable (%s): buckets start full", self.path, exc)
            return 0
        self._saved_changes = limiter.changes
        log.info("rate-limit state restored: %d scopes from %s", restored, self.path)
        return restored

    def maybe_save(self, limiter: RateLimiter) -> bool:
        now = self._clock()
        if limiter.changes == self._saved_changes or now - self._saved_at < self.every_s:
            return False
        self._saved_at, self._saved_changes = now, limiter.changes
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(limiter.snapshot()))
            tmp.replace(self.path)
        except OSError as exc:  # the limits still hold in memory; only durability is lost
            log.warning("rate-limit state not saved to %s: %s", self.path, exc)
            return False
        return True


def _bucket(per_minute: int | None, now: float) -> TokenBucket | None:
    if per_minute is None:
        return None
    return TokenBucket(capacity=float(per_minute), level=float(per_minute), updated=now)


def _headroom(s: _Scope) -> float:
    shares = []
    if s.requests is not None:
        shares.append(s.requests.level / s.requests.capacity)
    if s.tokens is not None:
        shares.append(s.tokens.level / s.tokens.capacity)
    return min(shares) if shares else 1.0


def _decision(allowed: bool, key: str, s: _Scope, wait: float) -> Decision:
    r, t = s.requests, s.tokens
    return Decision(
        allowed=allowed,
        retry_after_s=wait,
        scope=key,
        limit_requests=int(r.capacity) if r else None,
        remaining_requests=max(0, math.floor(r.level)) if r else None,
        reset_requests_s=r.seconds_until(r.capacity) if r else None,
        limit_tokens=int(t.capacity) if t else None,
        remaining_tokens=max(0, math.floor(t.level)) if t else None,
        reset_tokens_s=t.seconds_until(t.capacity) if t else None,
    )
