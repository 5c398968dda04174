"""The web console: Requests, Access, Audit and Policies pages for approvers and auditors,
served by the admin API's app at /console (proxy.console.routes), signed in with the same
identities (proxy.console.session)."""

from proxy.console.routes import Console, install_console
from proxy.console.session import Sessions, session_key

__all__ = ["Console", "Sessions", "install_console", "session_key"]
