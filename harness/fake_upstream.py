"""A fake OpenAI-compatible upstream that answers after a fixed delay (the gateway bench).

    python -m harness.fake_upstream --port 9100 --delay-ms 50 --words 32

`POST /v1/chat/completions` waits `--delay-ms`, then answers a completion of `--words`
words that repeats the last user message (so every answer differs as the questions do:
governance screens new texts, as in service, instead of hitting its embedding cache).
With `"stream": true` it sends the first chunk after the delay, then one chunk per word,
the usage chunk and `[DONE]`. `GET /health` answers 200. A bare ASGI app on uvicorn with
httptools and uvloop in its own process: what it costs is measured with it, by calling it
directly (the bench's baseline).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

FILLER = (
    "thanks for asking here is what to do next please check the order page and follow the "
    "steps shown there if that does not help reply to this message and we will look again"
).split()


def answer_words(question: str, words: int) -> list[str]:
    """`words` words: the question's own, then a fixed filler (never empty)."""
    out = (question.split() + FILLER) * (1 + words // max(1, len(FILLER)))
    return out[: max(1, words)]


def completion(
    model: str, text: str, prompt_tokens: int, completion_id: str = "chatcmpl-fake"
) -> dict[str, Any]:
    """An OpenAI chat.completion body for `text` (its words counted as tokens)."""
    n = len(text.split())
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": n,
            "total_tokens": prompt_tokens + n,
        },
    }


def make_app(delay_s: float, words: int):
    async def read_body(receive) -> bytes:
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                return body

    async def send_json(send, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})

    async def app(scope, receive, send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path, method = scope["path"], scope["method"]
        if method == "GET" and path == "/health":
            await send_json(send, 200, {"status": "ok"})
            return
        if method != "POST" or path != "/v1/chat/completions":
            await send_json(send, 404, {"error": {"message": "not found"}})
            return
        try:
            body = json.loads(await read_body(receive))
            question = str(body["messages"][-1]["content"])
        except (ValueError, KeyError, IndexError, TypeError):
            await send_json(send, 400, {"error": {"message": "not a chat completion request"}})
            return
        model = str(body.get("model", "fake"))
        n = int(body.get("max_tokens") or words)
        text_words = answer_words(question, min(n, words))
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
        await asyncio.sleep(delay_s)
        if not body.get("stream"):
            await send_json(send, 200, completion(model, " ".join(text_words), prompt_tokens))
            return
        headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for i, word in enumerate(text_words):
            delta = {"content": word if i == 0 else " " + word}
            chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            await send(_event(chunk))
        await send(_event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(text_words)}
        await send(_event({"choices": [], "usage": usage}))
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    return app


def _event(payload: dict[str, Any]) -> dict[str, Any]:
    body = b"data: " + json.dumps(payload).encode() + b"\n\n"
    return {"type": "http.response.body", "body": body, "more_body": True}


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--words", type=int, default=32)
    args = parser.parse_args()
    uvicorn.run(
        make_app(args.delay_ms / 1000.0, args.words),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        http="httptools",
        loop="uvloop",
    )


if __name__ == "__main__":
    main()
