"""The web console: Requests, Access, Audit and Policies pages for approvers and auditors,
served by the admin API's app at /console (proxy.console.routes), signed in with the same
identities (proxy.console.session: a pasted personal token; proxy.console.sso: the IdP's browser
login when OIDC is configured)."""

from typing import Any

from fastapi import FastAPI

from proxy.console.routes import Console, mount_console
from proxy.console.session import Sessions, session_key
from proxy.console.sso import sso_routes


def install_console(app: FastAPI, *args: Any, **kwargs: Any) -> Console:
    """The console on `app` (routes.mount_console says what the arguments are), with "Sign in
    with SSO" when `oidc` is given."""
    console = mount_console(app, *args, **kwargs)
    if kwargs.get("oidc") is not None:
        app.include_router(sso_routes(console))
    return console


__all__ = ["Console", "Sessions", "install_console", "session_key"]
