"""Idempotency-Key on create and deploy: a retried request returns the first result.

The first request claims the key in the database before doing its work, so two
concurrent requests with one key cannot both create something (the second gets
409 while the first runs). A failed request releases its claim.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from serve_app.errors import BadRequest, Conflict

MAX_KEY_LEN = 255


async def idempotent(
    store: Any,
    user: str,
    scope: str,
    key: str | None,
    request: dict[str, Any],
    run: Callable[[], Awaitable[dict[str, Any]]],
) -> dict[str, Any]:
    """`run()`'s result, or the stored result of the first request with this key."""
    if key is None:
        return await run()
    if not key or len(key) > MAX_KEY_LEN:
        raise BadRequest(f"Idempotency-Key must be 1-{MAX_KEY_LEN} characters")
    digest = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()
    state, stored = await asyncio.to_thread(store.claim_idempotency_key, user, scope, key, digest)
    if state == "done":
        assert stored is not None
        return stored
    if state == "pending":
        raise Conflict("a request with this Idempotency-Key is still in progress")
    if state == "mismatch":
        raise Conflict("this Idempotency-Key was used with a different request")
    try:
        data = await run()
    except BaseException:
        await asyncio.to_thread(store.release_idempotency_key, user, scope, key)
        raise
    await asyncio.to_thread(store.complete_idempotency_key, user, scope, key, data)
    return data
