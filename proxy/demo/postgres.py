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

import asyncio
import atexit
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

LOOPBACK = "127.0.0.1"
SUPERUSER = "jitproxy"
SERVICE_ACCOUNT = "postgres"  # who runs the server when we are root
_PACKAGE_BINDIRS = Path("/usr/lib/postgresql")  # Debian: /usr/lib/postgresql/<major>/bin
# The socket path must fit in sockaddr_un.sun_path (108 bytes on Linux, with the NUL).
_MAX_SOCKET_PATH_BYTES = 107
_PORT_ATTEMPTS = 3
_POLL_INTERVAL_S = 0.05
_LOG_TAIL_LINES = 25
# SQLSTATEs of a connection attempt that mean "not ready yet": None is no server answering
# (refused, socket missing), 57P03 is "the database system is starting up".
_NOT_READY_YET = frozenset({None, "57P03"})
# Throwaway data: trade crash safety for speed.
_FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


class LocalPostgresError(RuntimeError):
    """The local server could not be initialised, started or queried."""


class LocalPostgres:
    """One postgres process owning `basedir` (data, socket, logs, the superuser's password).

    `start()` initialises the cluster the first time only, so a stopped instance (or a new
    object on the same basedir) starts again with its data and password intact.
    """

    host = LOOPBACK

    def __init__(
        self,
        basedir: Path,
        port: int | None = None,
        *,
        settings: Mapping[str, str] | None = None,
        startup_timeout_s: float = 60.0,
        shutdown_timeout_s: float = 30.0,
    ) -> None:
        self.basedir = Path(basedir).resolve()
        self.settings = {**_FAST_SETTINGS, **(settings or {})}
        self.startup_timeout_s = startup_timeout_s
        self.shutdown_timeout_s = shutdown_timeout_s
        self.user = SUPERUSER
        self._port = port
        self._password: str | None = None
        self._process: subprocess.Popen[bytes] | None = None
        # The longest socket name: ".s.PGSQL." and a five-digit port.
        longest = self.basedir / ".s.PGSQL.65535"
        if len(os.fsencode(longest)) > _MAX_SOCKET_PATH_BYTES:
            raise ValueError(
                f"unix socket path {longest} is too long for the OS "
                f"(max {_MAX_SOCKET_PATH_BYTES} bytes); use a shorter basedir"
            )

    # -- where things are ---------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise LocalPostgresError("no port yet: it is picked when the server first starts")
        return self._port

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
    def datadir(self) -> Path:
        return self.basedir / "data"

    @property
    def log_path(self) -> Path:
        return self.basedir / "postgres.log"

    @property
    def _password_file(self) -> Path:
        # Kept after initdb (0600) so that a later start on this basedir knows the password.
        return self.basedir / "superuser.password"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        if self.running:
            raise LocalPostgresError(f"PostgreSQL in {self.basedir} is already running")
        self.basedir.mkdir(parents=True, exist_ok=True)
        account = _service_account()
        if account is not None:
            _hand_over(self.basedir, account)
        if not (self.datadir / "PG_VERSION").exists():
            self._initdb(account)
        try:
            self._password = self._password_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise LocalPostgresError(
                f"{self.datadir} exists but {self._password_file.name} does not: the superuser's "
                "password is unknown; delete the base directory to start over"
            ) from None
        self._launch(account)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), wait up to `shutdown_timeout_s`, then SIGKILL. Idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        if process.poll() is None:
            # SIGTERM would be a "smart" shutdown, which waits for every client to leave.
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=self.shutdown_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    async def astart(self) -> None:
        await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> LocalPostgres:
        await self.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

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

    def _initdb(self, account: pwd.struct_passwd | None) -> None:
        log_path = self.basedir / "initdb.log"
        _write_private(self._password_file, secrets.token_urlsafe(24), account)
        command = [
            str(_bindir() / "initdb"),
            f"--pgdata={self.datadir}",
            f"--username={self.user}",
            f"--pwfile={self._password_file}",
            "--auth=scram-sha-256",  # socket and TCP alike: only the password opens it
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ]
        with open(log_path, "wb") as log:
            try:
                result = subprocess.run(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=self.startup_timeout_s,
                    check=False,
                    **_run_as(account, self.basedir),
                )
                failure = f"exit code {result.returncode}" if result.returncode != 0 else None
            except subprocess.TimeoutExpired:
                failure = f"no result within {self.startup_timeout_s}s"
        if failure is not None:
            shutil.rmtree(self.datadir, ignore_errors=True)  # half-initialised: retry from scratch
            raise LocalPostgresError(
                f"initdb failed ({failure}; full output in {log_path}):\n{_tail(_read_from(log_path, 0))}"
            )

    def _launch(self, account: pwd.struct_passwd | None) -> None:
        """Start postgres and wait until it answers; retry a picked port taken meanwhile."""
        picked_port = self._port is None
        deadline = time.monotonic() + self.startup_timeout_s
        for _ in range(_PORT_ATTEMPTS if picked_port else 1):
            port = self._port if self._port is not None else _free_loopback_port()
            log_offset = _size(self.log_path)
            process = self._spawn(port, account)
            try:
                failure = self._wait_until_ready(process, port, deadline)
            except BaseException:
                _kill(process)
                raise
            if failure is None:
                self._port, self._process = port, process
                atexit.register(self.stop)
                return
            log = _read_from(self.log_path, log_offset)
            if not (picked_port and "Address already in use" in log):
                raise LocalPostgresError(f"postgres exited early ({failure}):\n{_tail(log)}")
        raise LocalPostgresError(f"postgres could not bind a free port in {_PORT_ATTEMPTS} tries")

    def _spawn(self, port: int, account: pwd.struct_passwd | None) -> subprocess.Popen[bytes]:
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
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C at the terminal reaches us, and we stop it
                **_run_as(account, self.basedir),
            )

    def _wait_until_ready(
        self, process: subprocess.Popen[bytes], port: int, deadline: float
    ) -> str | None:
        """Poll until the superuser can run a query; a description if postgres exited."""
        url = self._url("postgres", port)
        while True:
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise LocalPostgresError(
                    f"postgres did not accept connections within {self.startup_timeout_s}s:\n"
                    f"{_tail(_read_from(self.log_path, 0))}"
                )
            if process.poll() is not None:
                return f"exit code {process.returncode}"
            try:
                timeout_s = max(1, min(int(remaining_s), 5))
                with psycopg.connect(url, connect_timeout=timeout_s) as conn:
                    conn.execute("SELECT 1")
                return None
            except psycopg.OperationalError as exc:
                if exc.sqlstate not in _NOT_READY_YET:
                    raise LocalPostgresError(f"postgres refused the superuser: {exc}") from exc
            try:
                process.wait(timeout=min(_POLL_INTERVAL_S, max(remaining_s, 0.0)))
            except subprocess.TimeoutExpired:
                pass


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


def _write_private(path: Path, text: str, account: pwd.struct_passwd | None) -> None:
    """Write a 0600 file, owned by `account` when given (it must read it)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        os.fchmod(out.fileno(), 0o600)
        if account is not None:
            os.fchown(out.fileno(), account.pw_uid, account.pw_gid)
        out.write(text + "\n")


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


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def _kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(text: str, lines: int = _LOG_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
