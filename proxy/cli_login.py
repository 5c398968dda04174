"""`jitproxy login|logout|password|connect`: sign in with the company's IdP and connect with any client.

`login` runs the device flow through the admin API (proxy.api.oidc): it prints the IdP's URL and
code (and opens a browser with --open), waits for the person to approve, and keeps jitproxy's
token in the person's config directory ($JITPROXY_HOME, else $XDG_CONFIG_HOME/jitproxy, else
~/.config/jitproxy), in `session.json`, mode 0600, with the API's URL and CA. The other commands
(and `whoami`, `request`, ...: proxy.cli_api) use that token when JITPROXY_TOKEN is not set.

`connect` starts the `mariadb` (or `mysql`) CLI with the user, TLS flags and the token in an
option file of mode 0600 that it removes when the client ends: the token is never on a command
line that `ps` shows. `--print-jdbc` prints JDBC URLs (MariaDB Connector/J 2.x and 3.x, MySQL
Connector/J) and DBeaver's settings, none with a secret in them; `--write-mycnf` writes a
`[client-jitproxy]` group for `mariadb --defaults-group-suffix=-jitproxy`.

`password` asks for a short session password (`jp_…`, proxy.identity.session_passwords) for
prompts and dialogs that cut a token off at 79 characters; it is the one secret these commands
print, because showing it is what it is for.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import webbrowser
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

DEFAULT_API = "https://127.0.0.1:8443"
SESSION_FILE = "session.json"
MYCNF_GROUP = "client-jitproxy"
_WILDCARDS = ("", "0.0.0.0", "::", "[::]")


class LoginError(SystemExit):
    pass


# -- the stored session -----------------------------------------------------------------------------


def config_dir() -> Path:
    """Where the person's sign-in is kept (not the proxy's config)."""
    home = os.environ.get("JITPROXY_HOME")
    if home:
        return Path(home)
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "jitproxy"


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path` with mode 0600 from the first byte (a new file, renamed over)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def load_session() -> dict[str, Any] | None:
    """The stored sign-in, or None (none, unreadable or expired)."""
    path = config_dir() / SESSION_FILE
    try:
        session = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(session, dict) or not isinstance(session.get("token"), str):
        return None
    if _expires(session) <= datetime.now(timezone.utc):
        return None
    return session


def stored(key: str) -> str | None:
    """The token (`token`), API URL (`api`) or CA (`ca`) of the stored sign-in, for
    proxy.cli_api's defaults (after its flags and environment variables)."""
    session = load_session()
    value = session.get(key) if session else None
    return value if isinstance(value, str) else None


def _expires(session: dict[str, Any]) -> datetime:
    try:
        return datetime.fromisoformat(str(session.get("expires_at")))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)


def _require_session() -> dict[str, Any]:
    session = load_session()
    if session is None:
        raise LoginError("jitproxy: not signed in, or the sign-in has ended: run jitproxy login")
    return session


# -- the API ------------------------------------------------------------------------------------------


def _http(api: str, ca: str | None, token: str | None = None) -> Any:
    import httpx

    if not api.startswith("https://"):
        raise LoginError("jitproxy: the API URL must be https:// (tokens are never sent in clear text)")
    try:
        verify: Any = ssl.create_default_context(cafile=ca) if ca else True
    except (OSError, ssl.SSLError) as e:
        raise LoginError(f"jitproxy: cannot read the CA bundle {ca} (--ca / JITPROXY_CA): {e}") from None
    headers = {"User-Agent": "jitproxy-cli"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.Client(base_url=api, verify=verify, timeout=30, headers=headers)


def _request(client: Any, method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as e:
        raise LoginError(f"jitproxy: cannot reach the jitproxy API: {type(e).__name__}: {e}") from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text[:300]
        raise LoginError(f"jitproxy: refused ({response.status_code}): {detail}")
    return response


def _api_of(args: argparse.Namespace) -> tuple[str, str | None]:
    api = args.api or os.environ.get("JITPROXY_API") or stored("api") or DEFAULT_API
    ca = args.ca or os.environ.get("JITPROXY_CA") or stored("ca")
    return str(api).rstrip("/"), ca


# -- login / logout -------------------------------------------------------------------------------------


def cmd_login(args: argparse.Namespace) -> int:
    api, ca = _api_of(args)
    if ca:
        ca = str(Path(ca).resolve())
    with _http(api, ca) as client:
        info = _request(client, "GET", "/v1/login").json()
        if not info.get("oidc"):
            raise LoginError("jitproxy: this proxy has no IdP sign-in configured (oidc: in its config)")
        device = _request(client, "POST", "/v1/login/device").json()
        _tell_device(device, args.open)
        signed_in = _poll(client, device, args.timeout)
    session = {"api": api, "ca": ca, "token": signed_in["token"], "user": signed_in["user"],
               "groups": signed_in["groups"], "expires_at": signed_in["expires_at"],
               "mysql": info.get("mysql") or {}}
    _write_private(config_dir() / SESSION_FILE, json.dumps(session, indent=2) + "\n")
    groups = ", ".join(signed_in["groups"]) or "none"
    print(f"signed in as {signed_in['user']} (groups: {groups}) until {_local(signed_in['expires_at'])}")
    return 0


def _tell_device(device: dict[str, Any], open_browser: bool) -> None:
    """The URL and code go to stderr (stdout stays for the result), flushed at once."""
    url = device.get("verification_uri_complete") or device.get("verification_uri")
    print(f"To sign in, open {device.get('verification_uri')} and enter the code {device.get('user_code')}",
          file=sys.stderr)
    if device.get("verification_uri_complete"):
        print(f"  (or open {device['verification_uri_complete']})", file=sys.stderr)
    print("Waiting for the sign-in...", file=sys.stderr, flush=True)
    if open_browser and url:
        with contextlib.suppress(Exception):
            webbrowser.open(str(url))


def _poll(client: Any, device: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Poll the API (which polls the IdP) at the IdP's interval until approved, denied or expired."""
    interval = max(float(device.get("interval") or 5), 0.2)
    deadline = time.monotonic() + min(float(device.get("expires_in") or 600), timeout_s)
    while time.monotonic() < deadline:
        time.sleep(interval)
        response = _request(client, "POST", "/v1/login/device/token", json={"device_code": device["device_code"]})
        if response.status_code == 200:
            return response.json()
        if response.json().get("slow_down"):
            interval += 5  # RFC 8628 §3.5
    raise LoginError("jitproxy: the sign-in was not completed in time: run jitproxy login again")


def cmd_logout(args: argparse.Namespace) -> int:
    """End the stored sign-in: its session passwords are revoked (when the API is reachable) and
    the token file removed. The token itself lives until its end (it is a signed JWT)."""
    session = load_session()
    path = config_dir() / SESSION_FILE
    if session is not None:
        with contextlib.suppress(LoginError), _http(session["api"], session.get("ca"), session["token"]) as client:
            _request(client, "DELETE", "/v1/session-passwords")
    existed = path.exists()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    print("signed out" if existed else "not signed in")
    return 0


# -- session passwords ----------------------------------------------------------------------------------


def cmd_password(args: argparse.Namespace) -> int:
    session = _require_session()
    body = {"instance": args.instance, "bind_address": args.bind_address}
    with _http(session["api"], session.get("ca"), session["token"]) as client:
        answer = _request(client, "POST", "/v1/session-passwords", json=body).json()
    print(f"session password for {answer['user']} on {answer['instance']}, until {_local(answer['expires_at'])} "
          f"({answer['id']}; jitproxy logout ends it):", file=sys.stderr)
    print(answer["password"])
    return 0


# -- connect --------------------------------------------------------------------------------------------


def _endpoint(session: dict[str, Any], args: argparse.Namespace) -> tuple[str, int]:
    """The proxy's MySQL host and port: flags, else what the API said at login."""
    mysql = session.get("mysql") or {}
    ports = mysql.get("ports") or {}
    port = args.port or (ports.get(args.instance) if args.instance else None)
    if port is None and ports:
        if len(ports) > 1 and not args.instance:
            raise LoginError(f"jitproxy: this proxy has several instances ({', '.join(ports)}): pass --instance")
        port = next(iter(ports.values()))
    host = args.host or mysql.get("host") or ""
    if host in _WILDCARDS:
        host = urlparse(session["api"]).hostname or "127.0.0.1"
    if not port:
        raise LoginError("jitproxy: the proxy's MySQL port is not known: pass --port")
    return host, int(port)


def option_file_text(*, user: str, password: str, host: str, port: int, ca: str | None,
                     group: str = "client") -> str:
    """A MySQL option file group. Values are quoted (a JWT has no quote or backslash)."""
    lines = [f"[{group}]", f'user="{user}"', f'password="{password}"', f'host="{host}"', f"port={port}"]
    if ca:
        lines.append(f'ssl-ca="{ca}"')
    lines.append("ssl-verify-server-cert")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _option_file(text: str) -> Iterator[Path]:
    """A 0600 option file in the person's config dir, removed whatever happens."""
    directory = config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, name = tempfile.mkstemp(dir=directory, prefix="connect-", suffix=".cnf")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _client_program(explicit: str | None) -> str:
    for name in ([explicit] if explicit else ["mariadb", "mysql"]):
        found = shutil.which(name)
        if found:
            return found
    raise LoginError("jitproxy: no mariadb or mysql client found on PATH (--client PATH)")


def jdbc_text(*, user: str, host: str, port: int, db: str | None, ca: str | None) -> str:
    """The JDBC URLs and DBeaver settings for the proxy, with TLS verified (certificate and host
    name); no secret in them. The first works with MariaDB Connector/J 2.x and 3.x alike: 3.x
    reads 2.x's `useSsl=true` as `sslMode=verify-full`, while 2.x ignores `sslMode` (3.x's own
    spelling, printed second) and would connect without TLS, which the proxy refuses."""
    path = f"/{quote(db)}" if db else "/"
    u = quote(user)
    lines = []
    if ca:
        lines += [
            "MariaDB Connector/J 2.x and 3.x (DBeaver's MariaDB driver):",
            f"  jdbc:mariadb://{host}:{port}{path}?user={u}&useSsl=true&serverSslCert={quote(ca)}",
            "MariaDB Connector/J 3.x only (its own spelling; 2.x ignores sslMode and connects without TLS):",
            f"  jdbc:mariadb://{host}:{port}{path}?user={u}&sslMode=verify-full&serverSslCert={quote(ca)}",
            "MySQL Connector/J 8.x / 9.x (a truststore, not a PEM file: "
            f"keytool -importcert -noprompt -alias jitproxy -file {ca} -keystore jitproxy.p12 "
            "-storetype PKCS12 -storepass changeit):",
            f"  jdbc:mysql://{host}:{port}{path}?user={u}&sslMode=VERIFY_IDENTITY"
            "&trustCertificateKeyStoreUrl=file:jitproxy.p12&trustCertificateKeyStoreType=PKCS12"
            "&trustCertificateKeyStorePassword=changeit",
        ]
    else:  # the proxy's certificate is signed by a CA the system trusts
        lines += [
            "MariaDB Connector/J 2.x and 3.x (DBeaver's MariaDB driver):",
            f"  jdbc:mariadb://{host}:{port}{path}?user={u}&useSsl=true",
            "MariaDB Connector/J 3.x only (its own spelling; 2.x ignores sslMode and connects without TLS):",
            f"  jdbc:mariadb://{host}:{port}{path}?user={u}&sslMode=verify-full",
            "MySQL Connector/J 8.x / 9.x:",
            f"  jdbc:mysql://{host}:{port}{path}?user={u}&sslMode=VERIFY_IDENTITY",
        ]
    lines += [
        "Password: a short session password (jitproxy password), which fits any dialog.",
        "DBeaver: driver MariaDB; Main: host " + host + f", port {port}, user {user}, the session password;",
        "  SSL: use SSL, verify server certificate" + (f", CA certificate {ca}" if ca else "") + ".",
    ]
    return "\n".join(lines) + "\n"


def _write_mycnf(path: Path, group_text: str) -> None:
    """Replace (or add) the [client-jitproxy] group of `path`, keeping every other line; 0600."""
    try:
        old = path.read_text(encoding="utf-8").splitlines(keepends=True)
    except FileNotFoundError:
        old = []
    kept, skipping = [], False
    for line in old:
        header = line.strip()
        if header.startswith("[") and header.endswith("]"):
            skipping = header[1:-1].strip() == MYCNF_GROUP
        if not skipping:
            kept.append(line)
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    if kept and kept[-1].strip():
        kept.append("\n")
    _write_private(path, "".join(kept) + group_text)


def cmd_connect(args: argparse.Namespace) -> int:
    session = _require_session()
    host, port = _endpoint(session, args)
    ca = session.get("ca")
    user = session["user"]
    if args.print_jdbc:
        print(jdbc_text(user=user, host=host, port=port, db=args.db, ca=ca), end="")
        return 0
    if args.write_mycnf:
        path = Path(args.mycnf).expanduser()
        _write_mycnf(path, option_file_text(user=user, password=session["token"], host=host, port=port, ca=ca,
                                            group=MYCNF_GROUP))
        print(f"wrote [{MYCNF_GROUP}] to {path} (valid until {_local(session['expires_at'])}): "
              "mariadb --defaults-group-suffix=-jitproxy")
        return 0
    program = _client_program(args.client)
    extra = [a for a in args.extra if a != "--"]
    text = option_file_text(user=user, password=session["token"], host=host, port=port, ca=ca)
    with _option_file(text) as option_file:
        command = [program, f"--defaults-extra-file={option_file}", *([args.db] if args.db else []), *extra]
        return subprocess.call(command)


def _local(text: str) -> str:
    try:
        return datetime.fromisoformat(text).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    except ValueError:
        return text


# -- the parser -------------------------------------------------------------------------------------------


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add login, logout, password and connect."""
    s = sub.add_parser("login", help="sign in with your company's IdP and keep jitproxy's token here")
    s.add_argument("--api", help="the jitproxy API's URL (default: $JITPROXY_API, the last login's, or "
                                 "https://127.0.0.1:8443)")
    s.add_argument("--ca", help="CA bundle for the API's and the proxy's certificate (default: $JITPROXY_CA)")
    s.add_argument("--open", action="store_true", help="open the sign-in page in a browser")
    s.add_argument("--timeout", type=float, default=900, help="give up after this many seconds (default 900)")
    s.set_defaults(func=cmd_login)

    s = sub.add_parser("logout", help="forget the stored token and end its session passwords")
    s.set_defaults(func=cmd_logout)

    s = sub.add_parser("password", help="a short session password for prompts and dialogs (shown once)")
    s.add_argument("--instance", help="the instance it logs in to (default: any; with one instance, that one)")
    s.add_argument("--bind-address", action="store_true", help="usable only from this machine's address")
    s.set_defaults(func=cmd_password)

    s = sub.add_parser("connect", help="start the mariadb/mysql client signed in through jitproxy",
                       description="Extra client arguments go after --: jitproxy connect --db hr -- -e 'SELECT 1'")
    s.add_argument("--instance", help="the instance (when the proxy has several)")
    s.add_argument("--db", help="the database to use")
    s.add_argument("--host", help="the proxy's MySQL host (default: as the API said at login)")
    s.add_argument("--port", type=int, help="the proxy's MySQL port (default: as the API said at login)")
    s.add_argument("--client", help="the client program (default: mariadb, else mysql)")
    s.add_argument("--print-jdbc", action="store_true", help="print JDBC URLs and DBeaver settings instead")
    s.add_argument("--write-mycnf", action="store_true",
                   help=f"write a [{MYCNF_GROUP}] group (the token, until it ends) to --mycnf instead")
    s.add_argument("--mycnf", default="~/.my.cnf", help="the option file for --write-mycnf (default ~/.my.cnf)")
    s.add_argument("extra", nargs=argparse.REMAINDER, help="-- then arguments for the client")
    s.set_defaults(func=cmd_connect)
