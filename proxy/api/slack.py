"""POST /v1/slack/interactions: where Slack posts the clicks on the Approve / Deny buttons of
request messages (the Slack app's "Interactivity" Request URL). No bearer token: Slack signs the
request instead, and proxy.notify.slack verifies the signature before anything else. Each call is
still an `admin.api_call` audit event, naming the person once the Slack user is mapped to one.

Answers: 200 when the decision was recorded; 401 unsigned, stale or badly signed; 400 not a
button click of ours; 403 an unknown Slack user, another workspace, or the workflow's refusal
(self-approval, not an approver); 404 / 409 as the workflow says (no such request, no longer
pending). A refused person is also told why in Slack, in a message only they see.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse

if TYPE_CHECKING:
    from proxy.notify.slack import SlackApprovals

MAX_BODY_BYTES = 256 * 1024  # a click's payload carries its message: a few KB, 50 blocks at most


def slack_routes(slack: SlackApprovals, on_change: Callable[[], Awaitable[None]] | None) -> APIRouter:
    """The interactions endpoint; `on_change` is awaited after a decision (grants may change)."""
    router = APIRouter()

    @router.post("/v1/slack/interactions", summary="Slack's button clicks (signed by Slack; no token)")
    async def interactions(request: Request) -> JSONResponse:
        body = await _body(request)
        headers = {k.lower(): v for k, v in request.headers.items()}
        answer = await asyncio.to_thread(slack.handle_interaction, body, headers)
        if answer.principal is not None:
            request.state.principal = answer.principal  # for the audit middleware's admin.api_call
        if answer.changed and on_change is not None:
            await on_change()
        return JSONResponse(answer.body, status_code=answer.status)

    return router


async def _body(request: Request) -> bytes:
    """The raw body (the signature covers these exact bytes), at most MAX_BODY_BYTES."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise HTTPException(413, f"at most {MAX_BODY_BYTES} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise HTTPException(413, f"at most {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
