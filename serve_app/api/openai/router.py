"""HTTP routes of the OpenAI-compatible API: parse, admit, call the service, respond.

Errors on these routes use OpenAI's shape (`{"error": {...}}`); see api/http.py.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from serve_app.api.deps import CurrentUser, ServicesDep
from serve_app.api.limits import admit, settler
from serve_app.api.openai.protocol import ChatCompletionRequest
from serve_app.api.openai.service import OpenAIService

router = APIRouter(prefix="/v1")


def _service(services: ServicesDep) -> OpenAIService:
    return services.service(OpenAIService)


@router.get("/models")
async def list_models(user: CurrentUser, services: ServicesDep) -> dict:
    return await _service(services).list_models(user)


@router.get("/models/{model}")
async def get_model(model: str, user: CurrentUser, services: ServicesDep) -> dict:
    return await _service(services).get_model(model, user)


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, user: CurrentUser, services: ServicesDep
) -> JSONResponse | StreamingResponse:
    svc = _service(services)
    agent, dep = await svc.resolve(body.model, user)
    admission = await admit(services, request, dep, user)
    headers = admission.headers() if admission else {}
    settle = settler(services)
    if body.stream:
        events, first = await svc.open_stream(agent, dep, body)
        return StreamingResponse(
            svc.sse(events, first, body, settle, admission),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"},
        )
    payload, result = await svc.complete(agent, dep, body)
    await settle(admission, result.prompt_tokens + result.completion_tokens)
    return JSONResponse(payload, headers=headers)
