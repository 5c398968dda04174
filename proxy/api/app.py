"""The admin API: JSON over HTTP(S), served by the proxy on its own port (FastAPI; the OpenAPI
document is at /openapi.json). Authenticated with the same personal tokens as MySQL logins
(`Authorization: Bearer <token>`); roles come from the token's groups. The `jitproxy` CLI is a
client of it, so nobody needs credentials for the state store.

Workflow calls are synchronous store transactions: they run in a worker thread so the proxy's
event loop keeps relaying statements meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from proxy.authz.model import Principal
from proxy.config import parse_duration
from proxy.identity.tokens import TokenError, TokenVerifier
from proxy.store.base import RequestStatus, StoreError
from proxy.workflow.service import AccessService, WorkflowError, grant_fields, request_fields

_bearer = HTTPBearer(auto_error=False)
_INSTANCE_HELP = ("the upstream instance (its configured name); may be left out when the proxy "
                  "has one instance")


class RequestIn(BaseModel):
    db: str = Field(max_length=64)
    tables: list[str] = Field(min_length=1, max_length=50)
    privileges: list[str] = Field(default=["SELECT"], max_length=10)
    reason: str = Field(max_length=2000)
    duration: str | None = Field(default=None, description="e.g. 30m, 4h, 2d")
    until: datetime | None = None
    instance: str | None = Field(default=None, max_length=64, description=_INSTANCE_HELP)


class DecisionIn(BaseModel):
    comment: str = Field(default="", max_length=2000)


class GrantIn(BaseModel):
    subject: str = Field(description="user:NAME or group:NAME", max_length=90)
    objects: list[str] = Field(min_length=1, max_length=50, description="db.table or db.*")
    privileges: list[str] = Field(default=["SELECT"], max_length=10)
    reason: str = Field(default="", max_length=2000)
    duration: str | None = None
    until: datetime | None = None
    instance: str | None = Field(default=None, max_length=64, description=_INSTANCE_HELP)


async def principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The person behind `Authorization: Bearer <personal token>`."""
    if creds is None or creds.scheme.lower() != "bearer":
        raise HTTPException(401, "a personal token is required: Authorization: Bearer <token>",
                            headers={"WWW-Authenticate": "Bearer"})
    verifier: TokenVerifier = request.app.state.verifier
    try:
        return await verifier.verify_async(None, creds.credentials)
    except TokenError as e:
        raise HTTPException(401, f"token rejected ({e.code})", headers={"WWW-Authenticate": "Bearer"}) from None


Who = Annotated[Principal, Depends(principal)]


def _duration(text: str | None) -> timedelta | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as e:
        raise HTTPException(400, str(e)) from None


def create_app(
    service: AccessService,
    verifier: TokenVerifier,
    *,
    access: Callable[[Principal], list[dict[str, Any]]] | None = None,
    on_change: Callable[[], Awaitable[None]] | None = None,
    health: Callable[[], dict[str, Any]] | None = None,
) -> FastAPI:
    """`access(principal)`: every grant in effect for the person (policies and store), for
    GET /v1/access. `on_change`: awaited after each write (the proxy refreshes its grants).
    `health()`: the upstream instances' and the store's state, for GET /healthz (no token:
    load balancers and monitors ask it; it names no host, user or credential)."""
    app = FastAPI(title="jitproxy admin API", version="1", docs_url=None, redoc_url=None)
    app.state.verifier = verifier

    async def run(fn: Callable[..., Any], *args: Any, write: bool = False, **kwargs: Any) -> Any:
        result = await asyncio.to_thread(fn, *args, **kwargs)
        if write and on_change is not None:
            await on_change()
        return result

    @app.exception_handler(WorkflowError)
    async def _workflow_error(_: Request, e: WorkflowError) -> JSONResponse:
        return JSONResponse({"detail": e.message}, status_code=e.status)

    @app.exception_handler(StoreError)
    async def _store_error(_: Request, e: StoreError) -> JSONResponse:
        return JSONResponse({"detail": "the state store is unavailable; try again"}, status_code=503)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        """Always 200 while the proxy serves: a database that is down is reported ("degraded"),
        not a reason to restart the proxy."""
        return health() if health is not None else {"status": "ok"}

    @app.get("/v1/whoami")
    async def whoami(who: Who) -> dict[str, Any]:
        return {"user": who.user, "groups": list(who.groups), "admin": service.is_admin(who)}

    @app.post("/v1/requests", status_code=201)
    async def create_request(body: RequestIn, who: Who) -> dict[str, Any]:
        r = await run(service.create_request, who, body.db, body.tables, body.privileges, body.reason,
                      duration=_duration(body.duration), until=body.until, instance=body.instance, write=True)
        return request_fields(r)

    @app.get("/v1/requests")
    async def list_requests(
        who: Who, status: RequestStatus | None = None, mine: Annotated[bool, Query()] = False
    ) -> list[dict[str, Any]]:
        return [request_fields(r) for r in await run(service.list_requests, who, status, mine)]

    @app.get("/v1/requests/{request_id}")
    async def get_request(request_id: str, who: Who) -> dict[str, Any]:
        return request_fields(await run(service.get_request, who, request_id))

    @app.post("/v1/requests/{request_id}/approve")
    async def approve(request_id: str, body: DecisionIn, who: Who) -> dict[str, Any]:
        return request_fields(await run(service.approve, who, request_id, body.comment, write=True))

    @app.post("/v1/requests/{request_id}/deny")
    async def deny(request_id: str, body: DecisionIn, who: Who) -> dict[str, Any]:
        return request_fields(await run(service.deny, who, request_id, body.comment, write=True))

    @app.post("/v1/requests/{request_id}/cancel")
    async def cancel(request_id: str, who: Who) -> dict[str, Any]:
        return request_fields(await run(service.cancel, who, request_id, write=True))

    @app.post("/v1/grants", status_code=201)
    async def add_grants(body: GrantIn, who: Who) -> list[dict[str, Any]]:
        grants = await run(service.add_grants, who, body.subject, body.objects, body.privileges, body.reason,
                           duration=_duration(body.duration), until=body.until, instance=body.instance,
                           write=True)
        return [grant_fields(g) for g in grants]

    @app.get("/v1/grants")
    async def list_grants(who: Who, everyone: Annotated[bool, Query(alias="all")] = False) -> list[dict[str, Any]]:
        return [grant_fields(g) for g in await run(service.list_grants, who, everyone)]

    @app.delete("/v1/grants/{grant_id}")
    async def revoke(grant_id: str, who: Who) -> dict[str, Any]:
        return grant_fields(await run(service.revoke_grant, who, grant_id, write=True))

    @app.get("/v1/access")
    async def my_access(who: Who) -> list[dict[str, Any]]:
        return access(who) if access is not None else []

    return app
