"""Sign in to the console with the company's IdP: the authorization code flow with PKCE of
proxy.identity.oidc (the relying party the CLI's sign-in uses), with the console's own callback.

    GET /console/login/sso        -> 303 to the IdP; the flow's `state` bound to this browser
    GET /console/login/callback   <- the IdP's redirect: code and state -> a console session

The callback address is `{public_url}/console/login/callback` (config `console.public_url`, else
the origin of `oidc.redirect_uri`, else the address the browser used): register it with the IdP
next to the CLI's /v1/login/callback. The ID token's checks (signature, issuer, audience, nonce,
PKCE verifier), the person's name and groups (oidc.user_claim, groups_claim, group_map) are the
relying party's; the session then lives no longer than the token it would have issued.

Login CSRF: a callback URL carries a code for whoever started the flow. The state is bound to
the browser that started it by a signed cookie (SameSite=Lax: the IdP's redirect back is a
cross-site navigation), so another person's callback link signs nobody in here. The code and
state are one-time values that only this app can redeem; the audit middleware records the path
of the callback, never its query.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlparse

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from proxy.authz.model import Principal
from proxy.console.routes import _HEADERS, PREFIX, Console
from proxy.console.session import SSO_COOKIE, SSO_TTL
from proxy.identity.oidc import SignInError

CALLBACK = "/login/callback"


def callback_url(console: Console, request: Request) -> str:
    base = console.public_url or str(request.base_url).rstrip("/")
    return f"{base}{PREFIX}{CALLBACK}"


def sso_routes(console: Console) -> APIRouter:
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    oidc = console.oidc
    assert oidc is not None

    def forget(response: Response) -> Response:
        response.delete_cookie(SSO_COOKIE, path="/", secure=True, httponly=True, samesite="lax")
        return response

    @router.get("/login/sso")
    async def start(request: Request) -> Response:
        """To the IdP, with this browser's state remembered in a signed cookie."""
        try:
            url = await oidc.start_browser(callback_url(console, request))
        except SignInError as e:
            return console.login_page(request, f"the sign-in with your identity provider could not start: {e}",
                                      e.status)
        state = parse_qs(urlparse(url).query).get("state", [""])[0]
        response = RedirectResponse(url, status_code=303, headers=_HEADERS)
        response.set_cookie(SSO_COOKIE, console.sessions.sso_started(state), max_age=int(SSO_TTL.total_seconds()),
                            path="/", secure=True, httponly=True, samesite="lax")
        return response

    @router.get(CALLBACK)
    async def finish(request: Request) -> Response:
        """The IdP sent the browser back: the state must be this browser's, the code is
        exchanged and the ID token checked; then a console session as for a pasted token."""
        params = request.query_params
        state, code, error = params.get("state", ""), params.get("code", ""), params.get("error", "")
        if not console.sessions.sso_state_matches(request.cookies.get(SSO_COOKIE), state):
            # (this browser's own sign-in, if one is under way, is left to finish)
            return console.login_page(
                request, "this sign-in was not started in this browser, or took too long: sign in again", 403)
        if error or not code:
            why = f" ({error[:80]})" if error else ""
            return forget(console.login_page(request, f"your identity provider did not sign you in{why}", 401))
        try:
            signed_in = await oidc.finish_browser(code, state)
        except SignInError as e:
            return forget(console.login_page(request, f"sign-in refused: {e}", e.status))
        who = Principal(signed_in.user, tuple(signed_in.groups), token_expires_at=signed_in.expires_at)
        return forget(console.start_session(request, who, via="oidc"))

    return router
