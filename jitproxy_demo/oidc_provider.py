"""A small OpenID Connect provider on loopback, for the tests and the demo: a real HTTP server.

It serves what jitproxy's relying party (proxy.identity.oidc) uses: discovery, the JWKS, the
authorization endpoint (code + PKCE S256, the person "signed in" being `browser_user`), the
device authorization endpoint (RFC 8628) with its verification page and the token endpoint for
both grants. The verification page (`GET /activate`, the code filled in from `?user_code=`) is a
form a person fills in: a user name and Approve (or Deny); `POST /activate` with `user_code`
(form or query) and `username` approves, `deny=1` denies, so without a browser
`curl -d username=dev '<the page's URL with its code>'` does the same. With `known_users_only`
only the names in `users` may sign in (the demo: dev and admin).
ID tokens are RS256, signed with the current key; `rotate()` makes a new key (the old one is
dropped from the JWKS), `id_token_overrides` changes the claims of the next ID tokens (a wrong
audience, an end in the past, another issuer), and `users` holds each person's claims (change a
person's groups between two sign-ins). Every person signs in without a password: it is no IdP
for anything but a test or a demo on one machine.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa


@dataclass
class _Device:
    user_code: str
    client_id: str
    expires: float
    user: str | None = None
    denied: bool = False


@dataclass
class _Code:
    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    user: str


@dataclass
class LocalOidcProvider:
    client_id: str = "jitproxy"
    users: dict[str, dict[str, Any]] = field(default_factory=dict)
    id_token_ttl_s: int = 3600
    interval_s: int = 1
    browser_user: str | None = None
    id_token_overrides: dict[str, Any] = field(default_factory=dict)
    known_users_only: bool = False

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._devices: dict[str, _Device] = {}
        self._codes: dict[str, _Code] = {}
        self.rotate()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="oidc-provider", daemon=True)

    def start(self) -> LocalOidcProvider:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- keys and tokens ------------------------------------------------------------------------

    def rotate(self) -> None:
        """A new signing key; the JWKS then holds only it."""
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(8)

    def jwks(self) -> dict[str, Any]:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self._key.public_key()))
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def id_token(self, user: str, nonce: str | None) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {"iss": self.issuer, "aud": self.client_id, "sub": f"sub-{user}",
                                  "preferred_username": user, "iat": now, "exp": now + self.id_token_ttl_s,
                                  **self.users.get(user, {})}
        if nonce is not None:
            claims["nonce"] = nonce
        claims.update(self.id_token_overrides)
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid})

    def _tokens(self, user: str, nonce: str | None) -> dict[str, Any]:
        return {"access_token": secrets.token_urlsafe(24), "token_type": "Bearer", "expires_in": 3600,
                "id_token": self.id_token(user, nonce)}

    def discovery(self) -> dict[str, Any]:
        i = self.issuer
        return {"issuer": i, "authorization_endpoint": f"{i}/authorize", "token_endpoint": f"{i}/token",
                "jwks_uri": f"{i}/jwks", "device_authorization_endpoint": f"{i}/device",
                "response_types_supported": ["code"], "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"], "code_challenge_methods_supported": ["S256"],
                "grant_types_supported": ["authorization_code", "urn:ietf:params:oauth:grant-type:device_code"]}

    # -- the device flow ------------------------------------------------------------------------

    def device_authorization(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if form.get("client_id") != self.client_id:
            return 401, {"error": "invalid_client"}
        device_code = secrets.token_urlsafe(32)
        user_code = "-".join(secrets.token_hex(2).upper() for _ in range(2))
        with self._lock:
            self._devices[device_code] = _Device(user_code, form["client_id"], time.monotonic() + 600)
        return 200, {"device_code": device_code, "user_code": user_code,
                     "verification_uri": f"{self.issuer}/activate",
                     "verification_uri_complete": f"{self.issuer}/activate?user_code={user_code}",
                     "expires_in": 600, "interval": self.interval_s}

    def activate(self, user_code: str, username: str, deny: bool = False) -> bool:
        """What the verification page does when the person approves (or denies) the code."""
        user_code = user_code.strip().upper()
        username = username.strip()
        if not deny and (not username or (self.known_users_only and username not in self.users)):
            return False
        with self._lock:
            for device in self._devices.values():
                if device.user_code == user_code and device.user is None and not device.denied:
                    device.denied = deny
                    device.user = None if deny else username
                    return True
        return False

    def _device_token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            device = self._devices.get(form.get("device_code", ""))
            if device is None or device.client_id != form.get("client_id", device.client_id):
                return 400, {"error": "invalid_grant"}
            if time.monotonic() > device.expires:
                return 400, {"error": "expired_token"}
            if device.denied:
                return 400, {"error": "access_denied"}
            if device.user is None:
                return 400, {"error": "authorization_pending"}
            del self._devices[form["device_code"]]
        return 200, self._tokens(device.user, None)

    # -- the code flow --------------------------------------------------------------------------

    def authorize(self, query: dict[str, str], username: str | None = None) -> tuple[int, str]:
        """Redirect back with a code for the person signed in at the IdP: `browser_user` (the
        tests' preset), else `username` typed into the sign-in page; with neither, 200 and
        that page (`query` carried along in hidden fields)."""
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            return 400, "bad request"
        if query.get("code_challenge_method") != "S256" or not query.get("code_challenge"):
            return 400, "PKCE S256 required"
        user = self.browser_user or (username or "").strip()
        if not user:
            return 200, _sign_in_page(query, self)
        if self.known_users_only and user not in self.users:
            return 403, "unknown user"
        code = secrets.token_urlsafe(24)
        with self._lock:
            self._codes[code] = _Code(self.client_id, query["redirect_uri"], query["code_challenge"],
                                      query.get("nonce"), user)
        return 302, query["redirect_uri"] + "?" + urlencode({"code": code, "state": query.get("state", "")})

    def _code_token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            found = self._codes.pop(form.get("code", ""), None)
        if found is None or found.redirect_uri != form.get("redirect_uri"):
            return 400, {"error": "invalid_grant"}
        verifier = form.get("code_verifier", "")
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if challenge != found.challenge:
            return 400, {"error": "invalid_grant", "error_description": "PKCE verification failed"}
        return 200, self._tokens(found.user, found.nonce)

    def token(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = form.get("grant_type")
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            return self._device_token(form)
        if grant == "authorization_code":
            return self._code_token(form)
        return 400, {"error": "unsupported_grant_type"}


def _handler(provider: LocalOidcProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_: Any) -> None:  # quiet: tests read their own output
            pass

        def _send(self, status: int, body: Any, content_type: str = "application/json",
                  location: str | None = None) -> None:
            data = (json.dumps(body) if content_type == "application/json" else str(body)).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Cache-Control", "no-store")
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _form(self) -> dict[str, str]:
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            auth = self.headers.get("Authorization", "")
            if auth.startswith("Basic "):
                form.setdefault("client_id", base64.b64decode(auth[6:]).decode().split(":", 1)[0])
            return form

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urlparse(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if url.path == "/.well-known/openid-configuration":
                self._send(200, provider.discovery())
            elif url.path == "/jwks":
                self._send(200, provider.jwks())
            elif url.path == "/authorize":
                self._authorized(*provider.authorize(query))
            elif url.path == "/activate":
                self._send(200, _activate_page(query.get("user_code", ""), provider), "text/html; charset=utf-8")
            else:
                self._send(404, {"error": "not_found"})

        def _authorized(self, status: int, answer: str) -> None:
            if status == 302:
                self._send(302, "", "text/plain", location=answer)
            else:
                self._send(status, answer, "text/html; charset=utf-8" if status == 200 else "text/plain")

        def do_POST(self) -> None:  # noqa: N802
            path = urlparse(self.path).path
            form = self._form()
            if path == "/authorize":  # the sign-in page's form: the code flow's query and who
                username = form.pop("username", "")
                self._authorized(*provider.authorize(form, username))
            elif path == "/device":
                self._send(*provider.device_authorization(form))
            elif path == "/token":
                self._send(*provider.token(form))
            elif path == "/activate":
                query = {k: v[0] for k, v in parse_qs(urlparse(self.path).query).items()}
                code = form.get("user_code") or query.get("user_code", "")
                deny = bool(form.get("deny"))
                ok = provider.activate(code, form.get("username", ""), deny)
                answer = ("Denied." if deny else f"Signed in as {form.get('username', '').strip()}: "
                          "go back to your terminal.") if ok else "Unknown or used code, or unknown user."
                self._send(200 if ok else 400, answer + "\n", "text/plain; charset=utf-8")
            else:
                self._send(404, {"error": "not_found"})

    return Handler


def _sign_in_page(query: dict[str, str], provider: LocalOidcProvider) -> str:
    """The code flow's sign-in page (a browser sent here by jitproxy's console): who signs in,
    the request's parameters carried in hidden fields. Everything shown is escaped."""
    known = ", ".join(sorted(provider.users)) if provider.known_users_only else ""
    who = f" ({html.escape(known)})" if known else ""
    hidden = "".join(f'<input type=hidden name="{html.escape(k, quote=True)}" value="{html.escape(v, quote=True)}">'
                     for k, v in query.items())
    return (
        "<!doctype html><html><head><title>Sign in</title></head><body>"
        "<h1>Sign in to jitproxy</h1>"
        "<p>A local test IdP: nobody here has a password.</p>"
        f"<form method=post action=/authorize>{hidden}"
        f"<label>User name{who} <input name=username autofocus></label> <button>Sign in</button>"
        "</form></body></html>"
    )


def _activate_page(user_code: str, provider: LocalOidcProvider) -> str:
    """The device flow's verification page: the code (filled in when the URL carries it) and
    who signs in. Everything shown is escaped."""
    known = ", ".join(sorted(provider.users)) if provider.known_users_only else ""
    who = f" ({html.escape(known)})" if known else ""
    return (
        "<!doctype html><html><head><title>Sign in</title></head><body>"
        "<h1>Sign in to jitproxy</h1>"
        "<p>A local test IdP: nobody here has a password.</p>"
        "<form method=post action=/activate>"
        f"<label>Code <input name=user_code value=\"{html.escape(user_code, quote=True)}\"></label> "
        f"<label>User name{who} <input name=username autofocus></label> "
        "<button>Approve</button> <button name=deny value=1>Deny</button>"
        "</form></body></html>"
    )
