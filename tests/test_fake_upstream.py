"""The gateway bench's fake upstream: its delay, its answers, its stream."""

from __future__ import annotations

import json
import time

import httpx

from bench.gateway import start_fake_upstream
from harness.launcher import stop_group


def test_the_fake_upstream_answers_after_its_delay_and_streams(tmp_path) -> None:  # noqa: ANN001
    base, proc = start_fake_upstream(80.0, 6, tmp_path / "up.log")
    try:
        body = {"model": "fake", "messages": [{"role": "user", "content": "Where is my parcel?"}]}
        with httpx.Client(base_url=base, timeout=10) as c:
            c.post("/v1/chat/completions", json=body)  # connection warm
            t0 = time.perf_counter()
            done = c.post("/v1/chat/completions", json=body).json()
            assert time.perf_counter() - t0 >= 0.08
            text = done["choices"][0]["message"]["content"]
            assert text.startswith("Where is my parcel?") and len(text.split()) == 6
            assert done["usage"]["completion_tokens"] == 6
            pieces, usage = [], None
            with c.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as s:
                lines = [x[6:] for x in s.iter_lines() if x.startswith("data: ")]
            assert lines[-1] == "[DONE]"
            for chunk in map(json.loads, lines[:-1]):
                if chunk["choices"]:
                    pieces.append(chunk["choices"][0]["delta"].get("content", ""))
                usage = chunk.get("usage", usage)
            assert "".join(pieces) == text and usage["completion_tokens"] == 6
            assert c.post("/v1/chat/completions", json={"messages": []}).status_code == 400
    finally:
        stop_group(proc, 10)
