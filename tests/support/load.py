"""Load for fault tests: chats and OpenAI streams from worker threads until stopped, every
answer kept; and the record check (every answered chat has exactly one interaction row).

Works against any running graph object with `client(key)` and `database_url` (the
`serve run` graph of tests/integration and the multi-node cluster of tests/cluster).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Self

import httpx
from sqlalchemy import bindparam, create_engine, text


@dataclass
class _Workers:
    """`workers` threads, each sending one request after another (`_one`) until stopped."""

    graph: Any  # client(key) -> httpx.Client, database_url
    key: str
    agent_id: str
    workers: int = 3
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _one(self, c: httpx.Client, n: int, i: int) -> None:
        raise NotImplementedError

    def _run(self, n: int) -> None:
        with self.graph.client(self.key) as c:
            i = 0
            while not self._stop.is_set():
                i += 1
                self._one(c, n, i)

    def __enter__(self) -> Self:
        for n in range(self.workers):
            t = threading.Thread(target=self._run, args=(n,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=180)


@dataclass
class Load(_Workers):
    """Chats from `workers` threads until stopped; every answer kept."""

    max_tokens: int = 8
    temperature: float = 0.7
    # (sent, answered, status, body), times from time.monotonic()
    answers: list[tuple[float, float, int, dict]] = field(default_factory=list)

    def _one(self, c: httpx.Client, n: int, i: int) -> None:
        sent = time.monotonic()
        try:
            resp = c.post(
                f"/native-llm/agent/{self.agent_id}/chat",
                json={
                    "message": f"Tell me where my order {n}-{i} is.",
                    "max_tokens": self.max_tokens,
                    "temperature": self.temperature,
                },
                timeout=120,
            )
            body = resp.json()
            status = resp.status_code
        except (httpx.HTTPError, ValueError) as exc:
            status, body = 0, {"transport_error": repr(exc)}
        self.answers.append((sent, time.monotonic(), status, body))

    def ok_ids(self) -> list[str]:
        return [b["data"]["message_id"] for _, _, s, b in self.answers if s == 200]

    def count(self, status: int) -> int:
        return sum(1 for _, _, s, _ in self.answers if s == status)


@dataclass
class StreamLoad(_Workers):
    """OpenAI streaming chats from `workers` threads until stopped; each stream kept as
    (sent, ended, text, finish_reason, error_code)."""

    workers: int = 2
    max_tokens: int = 160
    streams: list[tuple[float, float, str, str | None, str | None]] = field(default_factory=list)

    def _one(self, c: httpx.Client, n: int, i: int) -> None:
        sent, text_, finish, error = time.monotonic(), "", None, None
        body = {
            "model": self.agent_id,
            "messages": [{"role": "user", "content": f"Tell me a long story, {n}-{i}."}],
            "max_tokens": self.max_tokens,
            "temperature": 1.0,
            "stream": True,
        }
        try:
            with c.stream("POST", "/v1/chat/completions", json=body, timeout=120) as resp:
                if resp.status_code != 200:
                    resp.read()
                    error = resp.json()["error"]["code"]
                for line in resp.iter_lines() if resp.status_code == 200 else []:
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        error = chunk["error"]["code"]
                    for choice in chunk.get("choices", []):
                        text_ += choice["delta"].get("content") or ""
                        finish = choice.get("finish_reason") or finish
        except (httpx.HTTPError, ValueError) as exc:
            error = f"transport: {exc!r}"
        self.streams.append((sent, time.monotonic(), text_, finish, error))


def assert_envelope_error(body: dict, status: int) -> None:
    assert body.get("success") is False and set(body) == {"success", "error"}, (status, body)
    assert body["error"]["code"] and body["error"]["message"], body


def rows_per_message(database_url: str, message_ids: list[str]) -> dict[str, int]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT message_id, COUNT(*) FROM interactions "
                    "WHERE message_id IN :ids GROUP BY message_id"
                ).bindparams(bindparam("ids", expanding=True)),
                {"ids": message_ids},
            ).all()
    finally:
        engine.dispose()
    return {m: int(n) for m, n in rows}


def wait_until_every_row(graph: Any, ids: list[str], timeout_s: float = 120.0) -> None:
    """Every id in `ids` has exactly one row (within `timeout_s`: the writer's interval)."""
    deadline = time.monotonic() + timeout_s
    while True:
        counts = {}
        for i in range(0, len(ids), 500):
            counts.update(rows_per_message(graph.database_url, ids[i : i + 500]))
        missing = [m for m in ids if m not in counts]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert not missing, f"{len(missing)} of {len(ids)} answered chats have no row: {missing[:5]}"
    doubled = {m: n for m, n in counts.items() if n != 1}
    assert not doubled, f"rows recorded more than once: {doubled}"
