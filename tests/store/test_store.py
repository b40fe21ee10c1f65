"""The Store against real SQLite and real PostgreSQL (``db_url`` runs each test on both)."""

from __future__ import annotations

import hashlib
import pickle
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.exc import OperationalError

from serve_app.store import AgentNotFoundError, InteractionRecord, Store
from serve_app.store.engine import alembic_config
from serve_app.store.models import ApiKey, Base

TABLES = {"users", "api_keys", "agents", "deployments", "interactions", "alembic_version"}


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.migrate()
    try:
        yield s
    finally:
        s.close()


def run_concurrently(n: int, fn: Callable[[int], object]) -> list[object]:
    """Run fn(0..n-1) in threads released together; re-raise the first error."""
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n
    errors: list[BaseException] = []

    def target(i: int) -> None:
        try:
            barrier.wait()
            results[i] = fn(i)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    if errors:
        raise errors[0]
    return results


# -- migrations ---------------------------------------------------------------


def test_migrate_creates_schema_and_is_idempotent(db_url: str) -> None:
    with Store(db_url) as s:
        s.migrate()
        s.migrate()
        assert TABLES <= set(inspect(s.engine).get_table_names())
        # Issues branch from 0001 (upgrade runs "heads"): every head is applied.
        heads = set(ScriptDirectory.from_config(alembic_config()).get_heads())
        with s.engine.connect() as conn:
            assert set(MigrationContext.configure(conn).get_current_heads()) == heads


def test_models_match_migrations(store: Store) -> None:
    with store.engine.connect() as conn:
        diff = compare_metadata(
            MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata
        )
    assert diff == []


def test_concurrent_first_migrations(db_url: str) -> None:
    stores = [Store(db_url) for _ in range(4)]
    try:
        run_concurrently(4, lambda i: stores[i].migrate())
        assert stores[0].count_interactions("x") == 0
    finally:
        for s in stores:
            s.close()


def test_ping(store: Store, tmp_path: Path) -> None:
    store.ping()
    broken = Store(f"sqlite:///{tmp_path / 'missing' / 'x.db'}", create_dirs=False)
    with broken, pytest.raises(OperationalError):
        broken.ping()


def test_unsupported_backend_is_refused() -> None:
    with pytest.raises(ValueError, match="unsupported"):
        Store("mysql://u@localhost/db")


# -- users and keys -----------------------------------------------------------


def test_api_key_is_stored_only_as_its_hash(store: Store) -> None:
    key = store.create_api_key("alice")
    assert key.startswith("pn_") and len(key) == 43
    assert store.user_for_api_key(key) == "alice"
    with store.engine.connect() as conn:
        row = conn.execute(select(ApiKey.key_hash, ApiKey.prefix)).one()
        assert row.key_hash == hashlib.sha256(key.encode()).hexdigest()
        assert row.prefix == key[:8]
        for table in ("users", "api_keys"):
            dump = repr(conn.execute(text(f"SELECT * FROM {table}")).all())
            assert key not in dump and key[3:] not in dump


def test_unknown_revoked_and_malformed_keys_are_refused(store: Store) -> None:
    key = store.create_api_key("alice")
    other = store.create_api_key("alice")
    assert store.user_for_api_key("pn_" + "A" * 40) is None
    for bad in ("", "Bearer x", key[:-1], key + "x", key.upper(), None, 42):
        assert store.user_for_api_key(bad) is None  # type: ignore[arg-type]
    assert store.revoke_api_key(key) is True
    assert store.revoke_api_key(key) is False
    assert store.user_for_api_key(key) is None
    assert store.user_for_api_key(other) == "alice"


def test_ensure_user_is_idempotent_and_validates(store: Store) -> None:
    store.ensure_user("bob")
    store.ensure_user("bob")
    run_concurrently(4, lambda i: store.ensure_user("carol"))
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM users")).scalar_one() == 2
    for bad in ("", "x" * 129):
        with pytest.raises(ValueError):
            store.ensure_user(bad)


# -- agents -------------------------------------------------------------------


def test_agents_are_private_to_their_owner(store: Store) -> None:
    config = {"name": "Helper", "compliance_mode": "strict", "nested": {"k": [1, 2]}}
    agent = store.create_agent("alice", "Helper", "helps", config)
    assert agent.agent_id.startswith("native-") and len(agent.agent_id) == len("native-") + 8
    assert agent.created_at.tzinfo is not None
    assert store.get_agent(agent.agent_id, "alice") == agent
    assert store.get_agent(agent.agent_id, "mallory") is None
    assert store.get_agent("native-00000000", "alice") is None
    second = store.create_agent("alice", "Other", None, {})
    store.create_agent("mallory", "Theirs", None, {})
    assert [a.agent_id for a in store.list_agents("alice")] == [agent.agent_id, second.agent_id]

    assert store.delete_agent(agent.agent_id, "mallory") is False
    assert store.delete_agent(agent.agent_id, "alice") is True
    assert store.get_agent(agent.agent_id, "alice") is None
    assert store.delete_agent(agent.agent_id, "alice") is False


def test_agent_config_must_be_json(store: Store) -> None:
    with pytest.raises(TypeError):
        store.create_agent("alice", "Bad", None, {"when": datetime.now()})


# -- deployments --------------------------------------------------------------


def test_deploy_and_redeploy_keep_the_production_id(store: Store) -> None:
    agent = store.create_agent("alice", "Helper", None, {"v": 1})
    first = store.create_deployment(agent.agent_id, "alice", {"v": 1})
    prod = "prod-" + agent.agent_id
    assert first.production_agent_id == prod
    assert first.deployment_url == f"/api/v1/agents/{prod}/chat"
    assert first.status == "deployed" and first.is_active
    assert first.deployment_id.startswith("deploy-") and len(first.deployment_id) >= 13
    assert store.get_active_deployment(prod) == first
    assert store.get_active_deployment_for_agent(agent.agent_id) == first

    second = store.create_deployment(agent.agent_id, "alice", {"v": 2})
    assert second.deployment_id != first.deployment_id
    assert second.production_agent_id == prod
    assert store.get_active_deployment(prod) == second
    with store.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT deployment_id, status, retired_at FROM deployments ORDER BY deployed_at")
        ).all()
    assert [(r[0], r[1], r[2] is not None) for r in rows] == [
        (first.deployment_id, "retired", True),
        (second.deployment_id, "deployed", False),
    ]

    assert store.delete_agent(agent.agent_id, "alice")
    assert store.get_active_deployment(prod) is None


def test_deploying_someone_elses_agent_fails(store: Store) -> None:
    agent = store.create_agent("alice", "Helper", None, {})
    with pytest.raises(AgentNotFoundError):
        store.create_deployment(agent.agent_id, "mallory", {})
    with pytest.raises(AgentNotFoundError):
        store.create_deployment("native-missing", "alice", {})
    assert store.get_active_deployment("prod-" + agent.agent_id) is None


def test_concurrent_redeploys_leave_one_active(store: Store) -> None:
    agent = store.create_agent("alice", "Helper", None, {})
    made = run_concurrently(4, lambda i: store.create_deployment(agent.agent_id, "alice", {"i": i}))
    active = store.get_active_deployment("prod-" + agent.agent_id)
    assert active is not None and active in made
    with store.engine.connect() as conn:
        counts = conn.execute(text("SELECT count(*), count(retired_at) FROM deployments")).one()
    assert tuple(counts) == (4, 3)


# -- interactions -------------------------------------------------------------


def make_interaction(i: int, agent_id: str = "native-aaaa0001", **kw: object) -> InteractionRecord:
    fields: dict[str, object] = {
        "message_id": f"msg-{agent_id}-{i}",
        "agent_id": agent_id,
        "user_id": "alice",
        "input": f"question {i}",
        "response": f"answer {i}",
        "trust_score": 0.9,
        "compliance_rate": 1.0,
        "constitutional_adherence": 0.95,
        "response_time_ms": 100.0,
        "prompt_tokens": 5,
        "completion_tokens": 7,
    }
    fields.update(kw)
    return InteractionRecord(**fields)  # type: ignore[arg-type]


def test_insert_interactions_is_idempotent_by_message_id(store: Store) -> None:
    batch = [make_interaction(i) for i in range(5)]
    assert store.insert_interactions(batch) == 5
    assert store.insert_interactions(batch) == 0
    mixed = batch[3:] + [make_interaction(i) for i in range(5, 8)] + [make_interaction(7)]
    assert store.insert_interactions(mixed) == 3
    assert store.insert_interactions([]) == 0
    assert store.count_interactions("native-aaaa0001") == 8
    assert store.count_interactions("native-other") == 0


def test_agent_stats_match_hand_computed_values(store: Store) -> None:
    agent = "native-stats001"
    now = datetime.now(timezone.utc)
    old = now - timedelta(hours=3)
    v = {"policy": "pii", "severity": "high"}
    records = [
        make_interaction(
            0,
            agent,
            trust_score=0.9,
            compliance_rate=1.0,
            constitutional_adherence=1.0,
            response_time_ms=100.0,
            created_at=old,
        ),
        make_interaction(
            1,
            agent,
            status="blocked",
            trust_score=0.2,
            compliance_rate=0.0,
            constitutional_adherence=0.5,
            policy_violations=[v, v],
            governance_interventions=1,
            response_time_ms=50.0,
            created_at=now - timedelta(minutes=30),
        ),
        make_interaction(
            2,
            agent,
            trust_score=0.7,
            compliance_rate=0.5,
            constitutional_adherence=0.9,
            policy_violations=[v],
            governance_interventions=2,
            response_time_ms=300.0,
            created_at=now - timedelta(minutes=5),
        ),
        make_interaction(
            3,
            agent,
            status="error",
            trust_score=None,
            compliance_rate=None,
            constitutional_adherence=None,
            response_time_ms=None,
            created_at=now,
        ),
        make_interaction(9, "native-unrelated", trust_score=0.0, policy_violations=[v] * 5),
    ]
    store.insert_interactions(records)

    s = store.agent_stats(agent)
    assert (s.total, s.ok_count, s.blocked_count, s.error_count) == (4, 2, 1, 1)
    assert s.mean_trust_score == pytest.approx((0.9 + 0.2 + 0.7) / 3)
    assert s.mean_compliance_rate == pytest.approx(1.5 / 3)
    assert s.mean_constitutional_adherence == pytest.approx(2.4 / 3)
    assert (s.violation_count, s.interactions_with_violations) == (3, 2)
    assert s.governance_interventions == 3
    assert s.mean_response_time_ms == pytest.approx(150.0)
    assert s.interactions_last_hour == 3
    assert s.first_at is not None and s.last_at is not None
    assert abs(s.first_at - old) < timedelta(milliseconds=1)
    assert abs(s.last_at - now) < timedelta(milliseconds=1)
    assert s.first_at.tzinfo is not None

    recent = store.agent_stats(agent, since=now - timedelta(minutes=10))
    assert (recent.total, recent.ok_count, recent.error_count) == (2, 1, 1)
    assert recent.mean_trust_score == pytest.approx(0.7)
    assert recent.violation_count == 1

    empty = store.agent_stats("native-nothing")
    assert empty.total == 0 and empty.violation_count == 0
    assert empty.mean_trust_score is None and empty.first_at is None


def test_naive_and_offset_times_are_stored_as_utc(store: Store) -> None:
    plus2 = timezone(timedelta(hours=2))
    local = datetime(2024, 1, 15, 12, 30, tzinfo=plus2)
    naive = datetime(2024, 1, 15, 10, 31)
    store.insert_interactions(
        [make_interaction(0, created_at=local), make_interaction(1, created_at=naive)]
    )
    s = store.agent_stats("native-aaaa0001")
    assert s.first_at == datetime(2024, 1, 15, 10, 30, tzinfo=timezone.utc)
    assert s.last_at == datetime(2024, 1, 15, 10, 31, tzinfo=timezone.utc)
    assert store.agent_stats("native-aaaa0001", since=local + timedelta(seconds=1)).total == 1


# -- records (no database) ------------------------------------------------------


def test_interaction_record_pickles_and_round_trips() -> None:
    rec = make_interaction(
        1, policy_violations=[{"policy": "pii"}], deployment_id="deploy-1", channel="production"
    )
    assert pickle.loads(pickle.dumps(rec)) == rec
    data = rec.to_dict()
    assert isinstance(data["created_at"], str)
    assert InteractionRecord.from_dict(data) == rec
    assert InteractionRecord.from_dict({**data, "extra": 1}) == rec
    assert rec.violation_count == 1
    with pytest.raises(ValueError):
        make_interaction(2, status="fine")
    with pytest.raises(ValueError):
        make_interaction(2, channel="web")
    with pytest.raises(KeyError):
        InteractionRecord.from_dict({"agent_id": "a", "user_id": "u"})
