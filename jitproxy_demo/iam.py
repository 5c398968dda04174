"""A local MariaDB that checks RDS IAM auth tokens the way Aurora MySQL does, on the same wire path.

Aurora asks the client for `mysql_clear_password` (over TLS) and checks the password as a SigV4
presigned `connect` request. Here MariaDB's `auth_pam` plugin, with `pam_use_cleartext_plugin`
on, asks for the same thing and hands the password to a PAM service:

    auth    required pam_exec.so expose_authtok quiet <python> -I -S iam_verify.py <config.json>
    account required pam_permit.so

`jitproxy_demo.iam_verify` recomputes the signature with the accepted test credentials and checks
DBUser, host, port, region, Action=connect and age, and appends one JSON line per decision to a
log (never the token or a secret). The database user is `IDENTIFIED VIA pam ... REQUIRE SSL`.

    db = LocalMariaDB(tmp, tls=tls_files, extra_args=IAM_SERVER_ARGS)
    with db, install_iam_auth(db, host="127.0.0.1", port=db.port, keys=[key]) as iam:
        token = boto3_rds_client.generate_db_auth_token("127.0.0.1", db.port, "iam_app")

Needs root: it writes a PAM service into /etc/pam.d (a new name per setup, so parallel runs do
not collide), and auth_pam runs PAM through its setuid `auth_pam_tool`.

Limit: pam_exec passes at most 511 characters of the password on, so a token signed with an STS
session token (~1000 characters) arrives cut short and is refused ("truncated"); only tokens
from long-term keys (~360 characters) get through the server. `check_token` itself accepts both.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import pymysql

from jitproxy_demo import iam_verify
from jitproxy_demo.mariadb import LocalMariaDB

# mariadbd options: load auth_pam (v2, which runs PAM in the setuid
# <plugin_dir>/auth_pam_tool_dir/auth_pam_tool) and make it ask for mysql_clear_password, as
# Aurora does, instead of the `dialog` plugin.
IAM_SERVER_ARGS: tuple[str, ...] = (
    "--plugin-load-add=auth_pam",
    "--pam-use-cleartext-plugin=ON",
)
PAM_DIR = Path("/etc/pam.d")
PAM_EXEC_PATHS = (
    Path("/usr/lib/x86_64-linux-gnu/security/pam_exec.so"),
    Path("/usr/lib/aarch64-linux-gnu/security/pam_exec.so"),
    Path("/lib/x86_64-linux-gnu/security/pam_exec.so"),
    Path("/usr/lib64/security/pam_exec.so"),
    Path("/usr/lib/security/pam_exec.so"),
)
SERVICE_PREFIX = "jitproxy-iam-"
DEFAULT_MAX_AGE_S = 900  # what RDS allows, and what generate_db_auth_token signs for


class IamAuthError(RuntimeError):
    """IAM authentication could not be installed on the local server."""


@dataclass(frozen=True)
class AwsKey:
    """One AWS credential the verifier accepts; secrets stay out of repr()."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)

    def to_json(self) -> dict[str, str | None]:
        return {
            "access_key_id": self.access_key_id,
            "secret_access_key": self.secret_access_key,
            "session_token": self.session_token,
        }


class IamAuthSetup:
    """A PAM service, its verifier config and one database user; made by `install_iam_auth`.

    `set_keys` and `set_clock_offset` rewrite the config atomically; the next login reads it.
    `remove()` (or leaving a `with` block) deletes the PAM service, the config (it holds the
    secret keys) and the database user; the decision log stays for inspection.
    """

    def __init__(
        self,
        server: LocalMariaDB,
        service_name: str,
        config: dict[str, Any],
        config_path: Path,
        pam_path: Path,
    ) -> None:
        self._server = server
        self._service_name = service_name
        self._config = config
        self._config_path = config_path
        self._pam_path = pam_path
        self._user_created = False
        self._removed = False

    # -- where things are ---------------------------------------------------------------

    @property
    def service_name(self) -> str:
        return self._service_name

    @property
    def config_path(self) -> Path:
        return self._config_path

    @property
    def log_path(self) -> Path:
        return Path(self._config["log_path"])

    @property
    def pam_path(self) -> Path:
        return self._pam_path

    @property
    def user(self) -> str:
        return str(self._config["user"])

    @property
    def host(self) -> str:
        return str(self._config["host"])

    @property
    def port(self) -> int:
        return int(self._config["port"])

    @property
    def region(self) -> str:
        return str(self._config["region"])

    # -- changing what the verifier accepts ---------------------------------------------

    def set_keys(self, keys: Sequence[AwsKey]) -> None:
        """Accept exactly `keys` from the next login on (rotation)."""
        self._config["keys"] = _keys_json(keys)
        self._write_config()

    def set_clock_offset(self, seconds: float) -> None:
        """Move the verifier's clock: +1000 makes a fresh token look 1000 seconds old."""
        self._config["clock_offset_s"] = float(seconds)
        self._write_config()

    def decisions(self) -> list[dict[str, Any]]:
        """Every decision so far, oldest first: {"ok", "reason", "user", "at", "service", "key"}."""
        try:
            text = self.log_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in text.splitlines() if line.strip()]

    # -- cleaning up --------------------------------------------------------------------

    def remove(self) -> None:
        """Delete the PAM service, the config and the database user. Idempotent."""
        if self._removed:
            return
        self._removed = True
        atexit.unregister(self.remove)
        self._pam_path.unlink(missing_ok=True)
        self._config_path.unlink(missing_ok=True)
        if self._user_created and self._server.running:
            try:
                self._server.execute_root("DROP USER IF EXISTS %s@'%%'", (self.user,))
            except pymysql.err.MySQLError:
                pass  # the server is going away; the PAM service it pointed at is gone already

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def _create_user(self, grants_sql: Sequence[str]) -> None:
        self._server.execute_root(
            "CREATE USER %s@'%%' IDENTIFIED VIA pam USING %s REQUIRE SSL",
            (self.user, self._service_name),
        )
        self._user_created = True
        for statement in grants_sql:
            self._server.execute_root(statement)

    def _write_config(self) -> None:
        if self._removed:
            raise IamAuthError(f"{self._service_name} has been removed")
        _write_private_json(self._config_path, self._config)


def install_iam_auth(
    server: LocalMariaDB,
    *,
    user: str = "iam_app",
    region: str = "eu-west-1",
    host: str,
    port: int,
    keys: Sequence[AwsKey],
    grants_sql: Sequence[str] = (),
    max_age_s: int = DEFAULT_MAX_AGE_S,
) -> IamAuthSetup:
    """Make `user`@'%' on `server` log in with RDS IAM tokens for `host`:`port` in `region`.

    `server` must be running with `IAM_SERVER_ARGS`. Tokens signed by any of `keys` are
    accepted. `grants_sql` are statements run as root afterwards, e.g.
    "GRANT SELECT ON hr_prod.* TO iam_app@'%'".
    """
    _check_privileges()
    _check_server(server)
    if not user or not region or not host:
        raise IamAuthError("user, region and host must not be empty")
    if max_age_s < 1:
        raise IamAuthError(f"max_age_s must be at least 1, got {max_age_s}")

    service_name = SERVICE_PREFIX + secrets.token_hex(6)
    config_path = server.basedir / f"{service_name}.json"
    config: dict[str, Any] = {
        "host": host,
        "port": int(port),
        "user": user,
        "region": region,
        "keys": _keys_json(keys),
        "max_age_s": int(max_age_s),
        "max_future_skew_s": iam_verify.DEFAULT_MAX_FUTURE_SKEW_S,
        "clock_offset_s": 0.0,
        "log_path": str(server.basedir / f"{service_name}.decisions.jsonl"),
    }
    pam_path = PAM_DIR / service_name
    setup = IamAuthSetup(server, service_name, config, config_path, pam_path)
    try:
        _write_private_json(config_path, config)
        _write_pam_service(pam_path, config_path)
        atexit.register(setup.remove)  # /etc/pam.d outlives the temporary directory otherwise
        setup._create_user(grants_sql)
    except BaseException:
        setup.remove()
        raise
    return setup


def pam_service_text(config_path: Path) -> str:
    """The PAM service file that runs the verifier with this interpreter on `config_path`."""
    python, verifier = Path(sys.executable), Path(iam_verify.__file__).resolve()
    for path in (python, verifier, config_path):
        # PAM splits arguments on whitespace.
        if any(c.isspace() for c in str(path)):
            raise IamAuthError(f"{path} contains whitespace, which a PAM service line cannot hold")
    return (
        "# jitproxy RDS IAM test harness (jitproxy_demo/iam.py); safe to delete.\n"
        f"auth required {_pam_exec()} expose_authtok quiet"
        f" {python} -I -S {verifier} {config_path}\n"
        "account required pam_permit.so\n"
    )


# -- internals ------------------------------------------------------------------------------


def _check_privileges() -> None:
    if os.geteuid() != 0:
        raise IamAuthError(
            "install_iam_auth needs root: it writes a PAM service into /etc/pam.d, and "
            "MariaDB's auth_pam runs PAM through its setuid auth_pam_tool (run the tests as root)"
        )
    if not os.access(PAM_DIR, os.W_OK):
        raise IamAuthError(f"install_iam_auth needs a writable {PAM_DIR} to add a PAM service")
    _pam_exec()


def _pam_exec() -> Path:
    for path in PAM_EXEC_PATHS:
        if path.exists():
            return path
    raise IamAuthError("pam_exec.so not found; install libpam-modules")


def _check_server(server: LocalMariaDB) -> None:
    if not server.running:
        raise IamAuthError("start the LocalMariaDB before install_iam_auth")
    rows = server.execute_root(
        "SELECT PLUGIN_STATUS FROM information_schema.PLUGINS WHERE PLUGIN_NAME = 'pam'"
    )
    cleartext = server.execute_root("SHOW GLOBAL VARIABLES LIKE 'pam_use_cleartext_plugin'")
    if rows != [("ACTIVE",)] or cleartext != [("pam_use_cleartext_plugin", "ON")]:
        raise IamAuthError(
            "the server needs auth_pam with pam_use_cleartext_plugin=ON: start it with "
            "LocalMariaDB(..., extra_args=IAM_SERVER_ARGS)"
        )


def _keys_json(keys: Sequence[AwsKey]) -> list[dict[str, str | None]]:
    if not keys:
        raise IamAuthError("at least one AwsKey is needed")
    return [key.to_json() for key in keys]


def _write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` (mode 0600) by renaming a complete file over it."""
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(data, out)
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def _write_pam_service(pam_path: Path, config_path: Path) -> None:
    text = pam_service_text(config_path)
    fd = os.open(pam_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
