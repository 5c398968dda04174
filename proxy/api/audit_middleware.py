"""Every admin API call is an audit event (`admin.api_call`): who (the token's person, once the
endpoint has verified it), from where, what (method, path — never the query string's values
or the body), the HTTP status and the time it took. Events the call causes (request.created,
grant.revoked...) carry the same caller address and program, through `CALLER`."""

from __future__ import annotations

import time
from typing import Any

from proxy.audit.events import CALLER, AuditEmitter, EventType

Scope = dict[str, Any]


class AuditMiddleware:
    """Pure ASGI middleware around the API app. Health checks are not audited (monitors call
    them every few seconds; they change and reveal nothing), nor the web console's script and
    style and its requests list's 5-second poll (the page that polls is audited when loaded)."""

    QUIET = frozenset({"/healthz", "/readyz", "/metrics",
                       "/console/requests/list"})  # the console's 5-second poll (the page load is audited)
    QUIET_PREFIXES = ("/console/static/",)  # the console's script and style

    def __init__(self, app: Any, audit: AuditEmitter) -> None:
        self.app = app
        self.audit = audit

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.QUIET or path.startswith(self.QUIET_PREFIXES):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        client = scope.get("client")
        agent = next((v.decode("latin-1")[:200] for k, v in scope.get("headers", ()) if k == b"user-agent"), None)
        caller = {"client_addr": f"{client[0]}:{client[1]}" if client else None, "client_program": agent}
        token = CALLER.set(caller)
        status = 500

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            CALLER.reset(token)
            who = scope.get("state", {}).get("principal")
            self.audit.emit(
                EventType.ADMIN_API_CALL, None,
                **caller,
                user=getattr(who, "user", None),
                groups=list(getattr(who, "groups", ())),
                actor=getattr(who, "user", None),
                method=scope.get("method"),
                path=scope.get("path"),
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
