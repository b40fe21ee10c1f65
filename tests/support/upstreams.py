"""A misbehaving OpenAI-compatible HTTP server, for the failure paths of wrapped agents.

A real server on a loopback port (uvicorn in a thread), not a mock of anything we ship:
it stands in for a third party's upstream when that upstream fails. The requested
`model` picks the behaviour:

    echo            answers "echo: <last user message>" (stream or not), with usage
    flaky-N         answers 503 N times per distinct request id, then like echo
    limited         answers 429 with Retry-After: 0 once per request id, then like echo
    garbage         200 with an HTML body
    no-choices      200 with JSON that is not a completion
    slow            sleeps 30 s before answering
    reject          400 with an OpenAI error body
    stall-stream    streams one chunk, then stalls for 30 s
    leak            echoes the Authorization header it received (to test what we send)
    pii             answers with an e-mail address and a phone number (output screening)
    talkative       500 whose error body holds internals (a host, a key, another tenant's text)
    redirect        307 to its own echo (a client that follows redirects would succeed)
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from harness.fake_upstream import completion
from harness.launcher import free_port

TALKATIVE_ERROR = (
    "db 10.0.3.7:5432 refused user svc_llm; last prompt from tenant bob: 'my card is "
    "4111 1111 1111 1111'; key sk-live-51Hcafe"
)
PII_ANSWER = "Our support lead is jane.doe@example.com and you can call her at +1 415 555 0132."


def _completion(model: str, text: str, prompt_tokens: int = 7) -> dict:
    return completion(model, text, prompt_tokens, completion_id="chatcmpl-test")


def _sse(model: str, text: str, stall_after_first: bool = False):
    async def gen():
        words = text.split(" ")
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            chunk = {"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            yield f"data: {json.dumps(chunk)}\n\n"
            if stall_after_first:
                await asyncio.sleep(30)
        done = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        yield f"data: {json.dumps(done)}\n\n"
        usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": len(words)}}
        yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(gen(), media_type="text/event-stream")


@dataclass
class FaultyUpstream:
    base_url: str  # ends in /v1
    calls: Counter = field(default_factory=Counter)
    server: uvicorn.Server | None = None
    thread: threading.Thread | None = None

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout=10)


def start_faulty_upstream() -> FaultyUpstream:
    app = FastAPI()
    port = free_port()
    up = FaultyUpstream(base_url=f"http://127.0.0.1:{port}/v1")

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        model = body.get("model", "")
        rid = request.headers.get("x-request-id", "")
        up.calls[(model, rid)] += 1
        n = up.calls[(model, rid)]
        last = body["messages"][-1]["content"]
        if model.startswith("flaky-") and n <= int(model.split("-")[1]):
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        if model == "limited" and n == 1:
            return JSONResponse(
                {"error": {"message": "slow down"}}, status_code=429, headers={"Retry-After": "0"}
            )
        if model == "garbage":
            return PlainTextResponse("<html>502 Bad Gateway</html>", status_code=200)
        if model == "no-choices":
            return JSONResponse({"object": "chat.completion", "choices": []})
        if model == "slow":
            await asyncio.sleep(30)
        if model == "reject":
            return JSONResponse(
                {"error": {"message": "This model's maximum context length is 16 tokens"}},
                status_code=400,
            )
        if model == "talkative":
            return JSONResponse({"error": {"message": TALKATIVE_ERROR}}, status_code=500)
        if model == "redirect" and not request.query_params.get("followed"):
            where = str(request.url.include_query_params(followed="1"))
            return JSONResponse({}, status_code=307, headers={"Location": where})
        if model == "leak":
            text = "auth=" + request.headers.get("authorization", "none")
        elif model == "pii":
            text = PII_ANSWER
        else:
            text = f"echo: {last}"
        if body.get("stream"):
            return _sse(model, text, stall_after_first=model == "stall-stream")
        return _completion(model, text)

    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    up.server = uvicorn.Server(config)
    up.thread = threading.Thread(target=up.server.run, daemon=True)
    up.thread.start()
    deadline = time.monotonic() + 20
    while not up.server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("faulty upstream did not start")
        time.sleep(0.05)
    return up
