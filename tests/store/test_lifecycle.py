"""Store lifecycle operations: pages, edits, undeploy, idempotency keys, conversations."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serve_app.store import Store
from serve_app.store.lifecycle import TurnRecord
from serve_app.store.records import utcnow


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store(db_url) as s:
        s.migrate()
        yield s


def test_pages_edit_and_retire(store: Store) -> None:
    ids = [store.create_agent("u", f"a{i}", None, {"name": f"a{i}"}).agent_id for i in range(5)]
    page, more = store.list_agents_page("u", 2)
    assert more and [a.agent_id for a in page] == ids[:2]
    page2, _ = store.list_agents_page("u", 2, page[-1].agent_id)
    page3, more3 = store.list_agents_page("u", 2, page2[-1].agent_id)
    assert [a.agent_id for a in page + page2 + page3] == ids and not more3
    with pytest.raises(LookupError):
        store.list_agents_page("other", 2, ids[0])
    updated = store.update_agent(ids[0], "u", "renamed", "d", {"name": "renamed"})
    assert updated is not None and updated.name == "renamed"
    assert store.update_agent(ids[0], "other", "x", None, {}) is None
    dep = store.create_deployment(ids[0], "u", {"name": "renamed"}, {"requests_per_minute": 5})
    assert dep.rate_limit == {"requests_per_minute": 5}
    assert [d.deployment_id for d in store.active_deployments("u")] == [dep.deployment_id]
    retired = store.retire_deployment(ids[0], "u")
    assert retired is not None and not retired.is_active
    assert store.get_active_deployment(dep.production_agent_id) is None
    assert store.latest_deployment(dep.production_agent_id).retired_at is not None  # type: ignore[union-attr]
    assert store.retire_deployment(ids[0], "u") is None


def test_idempotency_key_claims(store: Store) -> None:
    store.ensure_user("u")
    assert store.claim_idempotency_key("u", "s", "k", "h1") == ("new", None)
    assert store.claim_idempotency_key("u", "s", "k", "h1") == ("pending", None)
    assert store.claim_idempotency_key("u", "s", "k", "h2") == ("mismatch", None)
    store.complete_idempotency_key("u", "s", "k", {"agent_id": "x"})
    assert store.claim_idempotency_key("u", "s", "k", "h1") == ("done", {"agent_id": "x"})
    assert store.claim_idempotency_key("u", "s2", "k", "h1") == ("new", None)
    store.release_idempotency_key("u", "s2", "k")
    assert store.claim_idempotency_key("u", "s2", "k", "h1") == ("new", None)


def test_conversation_turns(store: Store) -> None:
    now = utcnow()
    turns = [
        TurnRecord("c", "a", "u", f"m{i}", role, f"t{i}", now)
        for i, role in enumerate(["user", "assistant"])
    ]
    store.add_turns(turns)
    assert [t.content for t in store.conversation("a", "u", "c")] == ["t0", "t1"]
    assert store.conversation("a", "other", "c") == []
