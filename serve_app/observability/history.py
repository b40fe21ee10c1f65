"""An agent's stored interactions over time: time series for the console, audit reports.

Read-only queries over the Store's engine, and plain functions that turn rows
into buckets or report rows (testable without Ray or HTTP).
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import func, select

from serve_app.store import Store
from serve_app.store.models import Deployment, Interaction
from serve_app.store.records import as_utc

MAX_REPORT_ROWS = 50_000
MAX_BUCKETS = 1_000


@dataclass(frozen=True)
class Row:
    """One stored interaction, as the report and the time series need it."""

    message_id: str
    created_at: datetime
    channel: str
    deployment_id: str | None
    status: str
    input: str
    response: str
    trust_score: float | None
    compliance_rate: float | None
    constitutional_adherence: float | None
    violations: list[dict[str, Any]]
    governance_interventions: int
    response_time_ms: float | None
    prompt_tokens: int
    completion_tokens: int


def interactions(
    store: Store,
    agent_id: str | list[str],
    start: datetime,
    end: datetime,
    limit: int = MAX_REPORT_ROWS,
) -> list[Row]:
    """The agent's (or agents') interactions with start <= created_at < end, oldest first
    (at most `limit`)."""
    i = Interaction
    ids = [agent_id] if isinstance(agent_id, str) else list(agent_id)
    if not ids:
        return []
    stmt = (
        select(i)
        .where(i.agent_id.in_(ids), i.created_at >= as_utc(start), i.created_at < as_utc(end))
        .order_by(i.created_at, i.id)
        .limit(limit)
    )
    with store.engine.connect() as conn:
        result = conn.execute(stmt)
        return [
            Row(
                message_id=r.message_id,
                created_at=as_utc(r.created_at),
                channel=r.channel,
                deployment_id=r.deployment_id,
                status=r.status,
                input=r.input,
                response=r.response,
                trust_score=r.trust_score,
                compliance_rate=r.compliance_rate,
                constitutional_adherence=r.constitutional_adherence,
                violations=list(r.policy_violations or []),
                governance_interventions=int(r.governance_interventions or 0),
                response_time_ms=r.response_time_ms,
                prompt_tokens=int(r.prompt_tokens or 0),
                completion_tokens=int(r.completion_tokens or 0),
            )
            for r in result
        ]


def active_deployments(store: Store) -> int:
    """Deployments currently serving a production route."""
    stmt = select(func.count()).select_from(Deployment).where(Deployment.retired_at.is_(None))
    with store.engine.connect() as conn:
        return int(conn.execute(stmt).scalar_one())


def percentile(values: list[float], q: float) -> float | None:
    """The q-quantile (0-1) by linear interpolation; None for no values."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def summarize(rows: list[Row]) -> dict[str, Any]:
    """Counts, means, latency percentiles and violations by category over the rows."""
    trust = [r.trust_score for r in rows if r.trust_score is not None]
    comp = [r.compliance_rate for r in rows if r.compliance_rate is not None]
    adher = [r.constitutional_adherence for r in rows if r.constitutional_adherence is not None]
    lat = [r.response_time_ms for r in rows if r.response_time_ms is not None]
    statuses = Counter(r.status for r in rows)
    by_category = Counter(v.get("category", "unknown") for r in rows for v in r.violations)
    by_policy = Counter(v.get("policy_id", "unknown") for r in rows for v in r.violations)
    return {
        "interactions": len(rows),
        "ok": statuses.get("ok", 0),
        "blocked": statuses.get("blocked", 0),
        "errors": statuses.get("error", 0),
        "trust_score_mean": _r(_mean(trust)),
        "trust_score_min": _r(min(trust)) if trust else None,
        "compliance_rate_mean": _r(_mean(comp)),
        "constitutional_adherence_mean": _r(_mean(adher)),
        "latency_ms_p50": _r(percentile(lat, 0.5), 2),
        "latency_ms_p95": _r(percentile(lat, 0.95), 2),
        "violations": sum(len(r.violations) for r in rows),
        "violations_by_category": dict(sorted(by_category.items())),
        "violations_by_policy": dict(sorted(by_policy.items())),
        "governance_interventions": sum(r.governance_interventions for r in rows),
        "prompt_tokens": sum(r.prompt_tokens for r in rows),
        "completion_tokens": sum(r.completion_tokens for r in rows),
    }


INJECTION_CATEGORY = "prompt_injection"


def comparison_row(rows: list[Row], start: datetime, end: datetime) -> dict[str, Any]:
    """`summarize` plus what the native-vs-wrapped comparison adds: throughput over the
    window, and injection/jailbreak attempts detected and those that got an answer."""
    out = summarize(rows)
    seconds = max((as_utc(end) - as_utc(start)).total_seconds(), 1e-9)
    if rows:  # the span the rows cover, so a quiet window does not dilute a burst
        first, last = rows[0].created_at, rows[-1].created_at
        seconds = max((last - first).total_seconds(), 1.0)
    attempts = [
        r for r in rows if any(v.get("category") == INJECTION_CATEGORY for v in r.violations)
    ]
    out["throughput_per_min"] = round(len(rows) * 60.0 / seconds, 4) if rows else 0.0
    out["injection_attempts_detected"] = len(attempts)
    out["injection_attempts_answered"] = sum(1 for r in attempts if r.status == "ok")
    answered = out["ok"] + out["blocked"]
    out["compliance_share"] = _r(out["ok"] / answered) if answered else None
    return out


def timeseries(rows: list[Row], start: datetime, end: datetime, bucket_s: int) -> dict[str, Any]:
    """Per-bucket figures over [start, end): one entry per bucket, empty buckets included."""
    start, end = as_utc(start), as_utc(end)
    n = max(1, math.ceil((end - start).total_seconds() / bucket_s))
    grouped: list[list[Row]] = [[] for _ in range(n)]
    for r in rows:
        idx = int((r.created_at - start).total_seconds() // bucket_s)
        if 0 <= idx < n:
            grouped[idx].append(r)
    buckets = []
    for k, group in enumerate(grouped):
        s = summarize(group)
        buckets.append(
            {
                "start": iso(start + timedelta(seconds=k * bucket_s)),
                "interactions": s["interactions"],
                "throughput_per_min": round(s["interactions"] * 60.0 / bucket_s, 4),
                "trust_score": s["trust_score_mean"],
                "compliance_rate": s["compliance_rate_mean"],
                "latency_ms_p50": s["latency_ms_p50"],
                "latency_ms_p95": s["latency_ms_p95"],
                "violations": s["violations"],
                "violations_by_category": s["violations_by_category"],
                "interventions": s["governance_interventions"],
                "blocked": s["blocked"],
                "errors": s["errors"],
            }
        )
    return {"from": iso(start), "to": iso(end), "bucket_seconds": bucket_s, "buckets": buckets}


def iso(ts: datetime) -> str:
    return as_utc(ts).isoformat().replace("+00:00", "Z")


CSV_COLUMNS = (
    "message_id", "created_at", "channel", "deployment_id", "status", "trust_score",
    "compliance_rate", "constitutional_adherence", "violation_count", "violations",
    "governance_interventions", "response_time_ms", "prompt_tokens", "completion_tokens",
    "input", "response",
)  # fmt: skip


def row_dict(r: Row) -> dict[str, Any]:
    return {
        "message_id": r.message_id,
        "created_at": iso(r.created_at),
        "channel": r.channel,
        "deployment_id": r.deployment_id,
        "status": r.status,
        "trust_score": r.trust_score,
        "compliance_rate": r.compliance_rate,
        "constitutional_adherence": r.constitutional_adherence,
        "violation_count": len(r.violations),
        "violations": r.violations,
        "governance_interventions": r.governance_interventions,
        "response_time_ms": r.response_time_ms,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "input": r.input,
        "response": r.response,
    }


FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r", "\n")


def csv_safe(value: Any) -> Any:
    """A cell a spreadsheet will not run: text starting with a formula character (`=`,
    `+`, `-`, `@`, tab, CR, LF) gets a leading `'`. Numbers stay numbers. A chat message
    is user text, and the report is opened by someone else (OWASP: CSV injection)."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        try:
            float(value)
        except ValueError:
            return "'" + value
    return value


def report_csv(rows: list[Row]) -> str:
    """One CSV line per interaction; violations as `policy/category/severity/action/direction`.
    Text cells are neutralised against formula injection (`csv_safe`)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        d = row_dict(r)
        d["violations"] = "; ".join(
            "/".join(
                str(v.get(k, ""))
                for k in ("policy_id", "category", "severity", "action", "direction")
            )
            for v in r.violations
        )
        writer.writerow({k: csv_safe(v) for k, v in d.items()})
    return out.getvalue()


def parse_time(value: str | None, default: datetime) -> datetime:
    """An ISO-8601 time (a trailing Z allowed; naive means UTC) or the default."""
    if not value:
        return default
    ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts.astimezone(timezone.utc)
