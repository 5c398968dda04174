"""A private MariaDB server in a temporary directory, for the demo and the tests.

`LocalMariaDB` initialises a data directory with `mariadb-install-db`, runs `mariadbd` on a
loopback port and a unix socket inside that directory, and stops it again. Only loopback is
listened on, anonymous accounts are removed and root gets a random password that is written to
`client.cnf` next to the data, so `mariadb --defaults-file=<basedir>/client.cnf` opens a root
shell on it.

The methods block; use the `astart`/`astop` wrappers or `async with` from asyncio code.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Unpack

import pymysql

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.process import (LOOPBACK, LocalServer, LocalServerError, Timeouts,
                                   check_socket_path, start_in_session, write_private)

ROOT_USER = "root"
# Root keeps these hosts (socket, IPv4 and IPv6 loopback); every other root row is deleted.
_ROOT_HOSTS = ("localhost", "127.0.0.1", "::1")
_SCRIPT_TIMEOUT_S = 120.0
# PyMySQL error codes that mean "nobody is answering yet", as opposed to a real refusal.
_NOT_LISTENING_YET = frozenset({2002, 2003, 2006, 2013})


class LocalMariaDBError(LocalServerError):
    """The local MariaDB could not be initialised, started or queried."""


@dataclass(frozen=True)
class Credentials:
    user: str
    password: str


class LocalMariaDB(LocalServer):
    """One mariadbd process owning `basedir` (data, socket, logs, client.cnf).

    `start()` initialises the data directory the first time only, so a stopped instance can be
    started again with its data, port and root password intact. Stopping is SIGTERM.
    """

    _product = "MariaDB"
    _program = "mariadbd"
    _error = LocalMariaDBError

    def __init__(
        self,
        basedir: Path,
        port: int | None = None,
        tls: TlsFiles | None = None,
        extra_args: Sequence[str] = (),
        *,
        general_log: bool = False,
        **timeouts: Unpack[Timeouts],
    ) -> None:
        super().__init__(basedir, port, **timeouts)
        self.tls = tls
        self.general_log = general_log
        self.extra_args = tuple(extra_args)
        self._root = Credentials(ROOT_USER, secrets.token_urlsafe(24))
        self._root_password_set = False
        self._fresh = False  # the data directory was initialised by this start()
        check_socket_path(self.socket_path)

    # -- where things are ---------------------------------------------------------------

    @property
    def root(self) -> Credentials:
        return self._root

    @property
    def socket_path(self) -> Path:
        return self.basedir / "mysqld.sock"

    @property
    def pid_file(self) -> Path:
        return self.basedir / "mysqld.pid"

    @property
    def error_log_path(self) -> Path:
        return self.basedir / "error.log"

    @property
    def general_log_path(self) -> Path:
        return self.basedir / "general.log"

    @property
    def client_config_path(self) -> Path:
        """A `[client]` option file for root over the socket (`mariadb --defaults-file=...`)."""
        return self.basedir / "client.cnf"

    @property
    def _stdout_path(self) -> Path:
        return self.basedir / "mariadbd.out"

    @property
    def _server_log(self) -> Path:
        return self.error_log_path

    @property
    def _startup_logs(self) -> Sequence[Path]:
        # Anything mariadbd prints before it opens its error log lands in mariadbd.out.
        return (self._stdout_path, self.error_log_path)

    # -- talking to it as root ----------------------------------------------------------

    def root_connection(self, database: str | None = None, **kwargs: Any) -> pymysql.Connection:
        """A new autocommit PyMySQL connection as root over the unix socket."""
        return pymysql.connect(
            unix_socket=str(self.socket_path),
            user=self._root.user,
            password=self._root.password if self._root_password_set else "",
            database=database,
            charset="utf8mb4",
            autocommit=True,
            **kwargs,
        )

    def execute_root(self, sql: str, args: Sequence[Any] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement as root; returns its rows ([] for a statement without a result).

        `args` are bound by PyMySQL (`%s` placeholders); without them `sql` is sent as is.
        """
        with self.root_connection() as conn, conn.cursor() as cursor:
            cursor.execute(sql, args)
            return list(cursor.fetchall()) if cursor.description else []

    def execute_script(self, sql: str) -> str:
        """Run a multi-statement SQL script as root through the `mariadb` command-line client.

        The client splits statements and understands comments and DELIMITER. Stops at the first
        error and raises with the client's message. Returns what the client printed.
        """
        if not self.client_config_path.exists():
            raise LocalMariaDBError("the server has not been started yet")
        result = subprocess.run(
            [_binary("mariadb", "mysql"), f"--defaults-file={self.client_config_path}", "--batch"],
            input=sql.encode(),
            capture_output=True,
            timeout=_SCRIPT_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0:
            message = result.stderr.decode(errors="replace").strip()
            raise LocalMariaDBError(f"SQL script failed: {message}")
        return result.stdout.decode(errors="replace")

    def create_user(
        self,
        name: str,
        password: str,
        grants: Sequence[str],
        require_ssl: bool = False,
        host: str = "%",
    ) -> Credentials:
        """CREATE USER name@host and GRANT each entry of `grants` to it.

        A grant is the text between GRANT and TO, e.g. "SELECT, INSERT ON hr_prod.*". Only the
        password's hash is sent, so the password never appears in the general log.
        """
        require = " REQUIRE SSL" if require_ssl else ""
        with self.root_connection() as conn, conn.cursor() as cursor:
            cursor.execute(
                f"CREATE USER %s@%s IDENTIFIED BY PASSWORD %s{require}",
                (name, host, native_password_hash(password)),
            )
            for grant in grants:
                cursor.execute(f"GRANT {grant} TO %s@%s", (name, host))
        return Credentials(name, password)

    def general_log_text(self) -> str:
        if not self.general_log:
            raise LocalMariaDBError("this server was started without general_log=True")
        if not self.general_log_path.exists():
            return ""
        return self.general_log_path.read_text(encoding="utf-8", errors="replace")

    # -- internals ----------------------------------------------------------------------

    def _prepare(self) -> None:
        self._fresh = not (self.datadir / "mysql").is_dir()
        if self._fresh:
            self._install()

    def _started(self) -> None:
        if self._fresh:
            self._secure_accounts()
        self._write_client_config()

    def _install(self) -> None:
        self._run_install(
            "mariadb-install-db",
            self.basedir / "install.log",
            [
                _binary("mariadb-install-db", "mysql_install_db"),
                "--no-defaults",
                "--auth-root-authentication-method=normal",
                f"--datadir={self.datadir}",
                f"--tmpdir={self._tmpdir()}",  # not /tmp: servers installed at once collide there
                "--skip-test-db",
                "--skip-name-resolve",
                *_run_as_root_args(),
                # Passed through to the bootstrap server: create the redo log at its final size.
                "--innodb-log-file-size=16M",
                "--innodb-buffer-pool-size=64M",
            ],
        )

    def _tmpdir(self) -> Path:
        """The server's own temporary directory (temp tables' files are named by pid and a
        counter: two servers sharing /tmp can delete each other's)."""
        tmp = self.basedir / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # the server may run as the mysql user (see _run_as_root_args)
            tmp.chmod(0o1777)
        return tmp

    def _spawn(self, port: int) -> subprocess.Popen[bytes]:
        command = [
            _binary("mariadbd", "mysqld"),
            "--no-defaults",
            f"--datadir={self.datadir}",
            f"--tmpdir={self._tmpdir()}",
            f"--port={port}",
            f"--bind-address={LOOPBACK}",
            f"--socket={self.socket_path}",
            f"--pid-file={self.pid_file}",
            f"--log-error={self.error_log_path}",
            "--skip-name-resolve",
            "--character-set-server=utf8mb4",
            "--collation-server=utf8mb4_unicode_ci",
            "--max-connections=300",
            "--innodb-buffer-pool-size=64M",
            "--innodb-log-file-size=16M",
            # Throwaway data: trade crash safety for speed, and skip what nobody reads.
            "--innodb-doublewrite=0",
            "--innodb-flush-log-at-trx-commit=2",
            "--innodb-buffer-pool-load-at-startup=0",
            "--innodb-buffer-pool-dump-at-shutdown=0",
            "--skip-log-bin",
            "--performance-schema=OFF",
            "--skip-feedback",
            *_run_as_root_args(),
            *self._general_log_args(),
            *self._tls_args(),
            *self.extra_args,
        ]
        # Anything mariadbd prints before it opens its error log (bad options, ulimit
        # warnings) lands in mariadbd.out.
        return start_in_session(command, self._stdout_path)

    def _general_log_args(self) -> list[str]:
        if not self.general_log:
            return []
        return [
            "--general-log=1",
            f"--general-log-file={self.general_log_path}",
            "--log-output=FILE",
        ]

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        return [
            f"--ssl-ca={self.tls.ca_cert}",
            f"--ssl-cert={self.tls.server_cert}",
            f"--ssl-key={self.tls.server_key}",
        ]

    def _ready(self, port: int, remaining_s: float) -> bool:
        """One try at `SELECT 1` as root over the socket (the port is not used)."""
        if not self.socket_path.exists():
            return False
        try:
            with self.root_connection(
                connect_timeout=min(remaining_s, 5.0), read_timeout=remaining_s
            ) as conn, conn.cursor() as cursor:
                cursor.execute("SELECT 1")
            return True
        except pymysql.err.OperationalError as exc:
            if exc.args[0] not in _NOT_LISTENING_YET:
                raise LocalMariaDBError(f"mariadbd refused root: {exc}") from exc
            return False

    def _secure_accounts(self) -> None:
        """Drop anonymous and hostname-bound accounts and give root a password."""
        placeholders = ", ".join(["%s"] * len(_ROOT_HOSTS))
        with self.root_connection() as conn, conn.cursor() as cursor:
            cursor.execute("DELETE FROM mysql.global_priv WHERE User = ''")
            cursor.execute("DELETE FROM mysql.proxies_priv WHERE User = ''")
            # `root@<hostname>` is ignored under --skip-name-resolve and warns on every start.
            cursor.execute(
                f"DELETE FROM mysql.global_priv WHERE User = %s AND Host NOT IN ({placeholders})",
                (ROOT_USER, *_ROOT_HOSTS),
            )
            cursor.execute(
                f"DELETE FROM mysql.proxies_priv WHERE User = %s AND Host NOT IN ({placeholders})",
                (ROOT_USER, *_ROOT_HOSTS),
            )
            cursor.execute("FLUSH PRIVILEGES")
            password_hash = native_password_hash(self._root.password)
            for host in _ROOT_HOSTS:
                cursor.execute(
                    "ALTER USER %s@%s IDENTIFIED BY PASSWORD %s", (ROOT_USER, host, password_hash)
                )
        self._root_password_set = True

    def _write_client_config(self) -> None:
        write_private(
            self.client_config_path,
            "[client]\n"
            f"user={self._root.user}\n"
            f"password={self._root.password}\n"
            f"socket={self.socket_path}\n"
            "default-character-set=utf8mb4\n",
        )


def native_password_hash(password: str) -> str:
    """The mysql_native_password hash of `password`, as `IDENTIFIED BY PASSWORD` expects it."""
    digest = hashlib.sha1(hashlib.sha1(password.encode()).digest()).hexdigest()
    return "*" + digest.upper()


def _binary(*names: str) -> str:
    """The first of `names` on PATH or in the usual sbin directories (not on every PATH)."""
    search_path = os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/usr/local/mysql/bin"]
    )
    for name in names:
        found = shutil.which(name, path=search_path)
        if found:
            return found
    raise LocalMariaDBError(f"none of {', '.join(names)} found; install mariadb-server")


def _run_as_root_args() -> list[str]:
    # mariadbd refuses to run as root unless told to.
    return ["--user=root"] if os.geteuid() == 0 else []
