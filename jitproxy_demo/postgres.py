"""A private PostgreSQL server in a temporary directory, for the state-store tests and the demo.

`LocalPostgres` initialises a cluster with `initdb`, runs `postgres` on a loopback port (unix
socket inside the base directory) and stops it again. One superuser with a random password is
the only account; `dsn` is a postgresql:// URL for it. Durability is switched off (fsync,
synchronous commit, full-page writes): the data is throwaway and tests want speed.

PostgreSQL refuses to run as root. When this process is root (containers, CI), initdb and
postgres run as the `postgres` system user, which Debian's postgresql package creates: the child
process drops to it (subprocess's `user=`/`group=`, the same setuid `runuser` would do, but
without a process in between, so our signals reach the postmaster itself). The base directory
is chowned to that user, so it must be somewhere the user can reach: under /tmp, not under a
private home or pytest's 0700 tmp_path.

The methods block; use the `astart`/`astop` wrappers or `async with` from asyncio code.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Unpack
from urllib.parse import quote

import psycopg
from psycopg import sql

from jitproxy_demo.process import (LOOPBACK, LocalServer, LocalServerError, Timeouts,
                                   check_socket_path, start_in_session, write_private)

SUPERUSER = "jitproxy"
SERVICE_ACCOUNT = "postgres"  # who runs the server when we are root
_PACKAGE_BINDIRS = Path("/usr/lib/postgresql")  # Debian: /usr/lib/postgresql/<major>/bin
# SQLSTATEs of a connection attempt that mean "not ready yet": None is no server answering
# (refused, socket missing), 57P03 is "the database system is starting up".
_NOT_READY_YET = frozenset({None, "57P03"})
# Throwaway data: trade crash safety for speed.
_FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class LocalPostgresError(LocalServerError):
    """The local PostgreSQL could not be initialised, started or queried."""


class LocalPostgres(LocalServer):
    """One postgres process owning `basedir` (data, socket, logs, the superuser's password).

    `start()` initialises the cluster the first time only, so a stopped instance (or a new
    object on the same basedir) starts again with its data and password intact. Stopping is a
    fast shutdown (SIGINT): SIGTERM would be a "smart" one, which waits for every client to leave.
    """

    _product = "PostgreSQL"
    _program = "postgres"
    _error = LocalPostgresError
    _stop_signal = signal.SIGINT

    def __init__(
        self,
        basedir: Path,
        port: int | None = None,
        *,
        settings: Mapping[str, str] | None = None,
        **timeouts: Unpack[Timeouts],
    ) -> None:
        super().__init__(basedir, port, **timeouts)
        self.settings = {**_FAST_SETTINGS, **(settings or {})}
        self.user = SUPERUSER
        self._password: str | None = None
        self._account: pwd.struct_passwd | None = None  # who runs initdb and postgres
        # The longest socket name: ".s.PGSQL." and a five-digit port.
        check_socket_path(self.basedir / ".s.PGSQL.65535")

    # -- where things are ---------------------------------------------------------------

    @property
    def password(self) -> str:
        if self._password is None:
            raise LocalPostgresError("no password yet: the server has not been started")
        return self._password

    @property
    def dsn(self) -> str:
        """A postgresql:// URL for the superuser on the `postgres` database."""
        return self.dsn_for("postgres")

    def dsn_for(self, database: str) -> str:
        """A postgresql:// URL for the superuser on `database`."""
        return self._url(database, self.port)

    def _url(self, database: str, port: int) -> str:
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{self.host}:{port}/{quote(database, safe='')}"
        )

    @property
    def log_path(self) -> Path:
        return self.basedir / "postgres.log"

    @property
    def _password_file(self) -> Path:
        # Kept after initdb (0600) so that a later start on this basedir knows the password.
        return self.basedir / "superuser.password"

    @property
    def _server_log(self) -> Path:
        return self.log_path

    # -- talking to it as the superuser -------------------------------------------------

    def connect(self, database: str = "postgres", **kwargs: Any) -> psycopg.Connection[Any]:
        """A new autocommit psycopg connection as the superuser."""
        return psycopg.connect(self.dsn_for(database), autocommit=True, **kwargs)

    def create_database(self, name: str) -> str:
        """CREATE DATABASE `name`; returns its DSN."""
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn_for(name)

    def drop_database(self, name: str) -> None:
        """DROP DATABASE `name` if it exists, disconnecting whoever is still on it."""
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    # -- internals ----------------------------------------------------------------------

    def _prepare(self) -> None:
        self._account = account = _service_account()
        if account is not None:
            _hand_over(self.basedir, account)
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb()
        try:
            self._password = self._password_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise LocalPostgresError(
                f"{self.datadir} exists but {self._password_file.name} does not: the superuser's "
                "password is unknown; delete the base directory to start over"
            ) from None

    def _initdb(self) -> None:
        write_private(self._password_file, secrets.token_urlsafe(24) + "\n", self._account)
        self._run_install(
            "initdb",
            self.basedir / "initdb.log",
            [
                str(_bindir() / "initdb"),
                f"--pgdata={self.datadir}",
                f"--username={self.user}",
                f"--pwfile={self._password_file}",
                "--auth=scram-sha-256",  # socket and TCP alike: only the password opens it
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ],
            **_run_as(self._account, self.basedir),
        )

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        settings = {
            "listen_addresses": LOOPBACK,
            "port": str(port),
            "unix_socket_directories": str(self.basedir),
            **self.settings,
        }
        command = [str(_bindir() / "postgres"), "-D", str(self.datadir)]
        for name, value in settings.items():
            command += ["-c", f"{name}={value}"]
        # The server logs to stderr (no logging collector): append it all to postgres.log.
        return start_in_session(command, self.log_path, **_run_as(self._account, self.basedir))

    def _ready(self, port: int, remaining_s: float) -> bool:
        """One try at `SELECT 1` as the superuser on `port`."""
        try:
            timeout_s = max(1, min(int(remaining_s), 5))
            with psycopg.connect(self._url("postgres", port), connect_timeout=timeout_s) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError as exc:
            if exc.sqlstate not in _NOT_READY_YET:
                raise LocalPostgresError(f"postgres refused the superuser: {exc}") from exc
            return False


def _service_account() -> pwd.struct_passwd | None:
    """The account to run PostgreSQL as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_ACCOUNT)
    except KeyError:
        raise LocalPostgresError(
            f"running as root, and PostgreSQL refuses root; there is no {SERVICE_ACCOUNT!r} "
            "system user to run it as (install Debian's postgresql package: scripts/setup.sh)"
        ) from None


def _run_as(account: pwd.struct_passwd | None, cwd: Path) -> dict[str, Any]:
    """subprocess arguments that run a child as `account` (when set), from `cwd`.

    The working directory matters: initdb and postgres fail if they cannot read theirs, and
    ours may be private to root.
    """
    if account is None:
        return {"cwd": cwd}
    return {
        "cwd": cwd,
        "user": account.pw_uid,
        "group": account.pw_gid,
        "extra_groups": [],  # drop root's supplementary groups too
    }


def _hand_over(basedir: Path, account: pwd.struct_passwd) -> None:
    """Give `basedir` to `account` and check that the account can actually get there."""
    os.chown(basedir, account.pw_uid, account.pw_gid)
    reachable = subprocess.run(
        ["test", "-w", str(basedir)], check=False, **_run_as(account, Path("/"))
    )
    if reachable.returncode != 0:
        raise LocalPostgresError(
            f"the {account.pw_name!r} user cannot write to {basedir}: a parent directory is "
            "private to root; use a base directory under /tmp (e.g. tempfile.mkdtemp(dir='/tmp'))"
        )


def _bindir() -> Path:
    """The newest packaged PostgreSQL's bin directory, else the one holding `postgres` on PATH.

    Debian keeps initdb and postgres out of PATH, in /usr/lib/postgresql/<major>/bin.
    """
    packaged = [path.parent for path in _PACKAGE_BINDIRS.glob("*/bin/postgres")]
    if packaged:
        return max(packaged, key=lambda bindir: _version_key(bindir.parent.name))
    found = shutil.which("postgres")
    if found and (Path(found).parent / "initdb").exists():
        return Path(found).parent
    raise LocalPostgresError(
        f"no PostgreSQL server binaries (postgres, initdb) in {_PACKAGE_BINDIRS}/*/bin or on "
        "PATH; install Debian's postgresql package (scripts/setup.sh)"
    )


def _version_key(name: str) -> tuple[int, ...]:
    """"15" -> (15,), "9.6" -> (9, 6); anything else sorts first."""
    parts = name.split(".")
    return tuple(int(part) for part in parts) if all(part.isdigit() for part in parts) else (-1,)
