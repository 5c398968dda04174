"""The proxy in-process in front of the session's MariaDB, and real client drivers."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mysql.connector
import pymysql
import pytest

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.inprocess import RunningProxy, proxy_config
from jitproxy_demo.mariadb import Credentials, LocalMariaDB
from proxy.config import Config

POLICY = """
grants:
  - subject: user:dev
    grant: hr_prod.employee
    privileges: [SELECT]
  - subject: user:dev
    grant: hr_prod.title
    privileges: [SELECT]
  - subject: user:admin
    grant: "*.*"
    privileges: ALL
    allow_unbounded_writes: true
"""


@pytest.fixture(scope="session")
def policies_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("policies")
    (d / "base.yaml").write_text(POLICY)
    return d


@pytest.fixture(scope="session")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    mariadb: LocalMariaDB,
    tls_files: TlsFiles,
    upstream_credentials: Credentials,
    policies_dir: Path,
) -> Iterator[RunningProxy]:
    cfg = local_proxy_config(tmp_path_factory.mktemp("proxy"), mariadb, tls_files, upstream_credentials, policies_dir)
    running = RunningProxy(cfg)
    yield running
    running.stop()
    assert_no_secrets(running, upstream_credentials.password)


def local_proxy_config(
    directory: Path,
    mariadb: LocalMariaDB,
    tls_files: TlsFiles,
    upstream: Credentials,
    policies_dir: Path,
    extra: dict[str, Any] | None = None,
    instances: list[dict[str, Any]] | None = None,
) -> Config:
    """A proxy config in `directory` for the test MariaDB over verified TLS."""
    return proxy_config(
        directory,
        upstream_host="127.0.0.1",
        upstream_port=mariadb.port,
        upstream_user=upstream.user,
        upstream_password=upstream.password,
        cert_file=tls_files.server_cert,
        key_file=tls_files.server_key,
        upstream_ca=tls_files.ca_cert,
        policies_dir=policies_dir,
        extra=extra,
        instances=instances,
    )


JWT_SHAPE = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")


def assert_no_secrets(running: RunningProxy, *secrets: str) -> None:
    """After a whole session of tests: no audit event carries a token or a password."""
    dump = json.dumps(running.events, default=str)
    assert not JWT_SHAPE.search(dump), "a token reached an audit event"
    for secret in secrets:
        assert secret not in dump


def client_ssl(tls_files: TlsFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_files.ca_cert))


class Client:
    """One interface over the real drivers: run SQL, get (columns, rows) or raise DbError."""

    name = ""

    def query(self, sql: str, params: tuple[Any, ...] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class DbError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


class PyMySQLClient(Client):
    name = "pymysql"

    def __init__(self, port: int, user: str, token: str, tls: TlsFiles, database: str | None = None) -> None:
        try:
            self.conn = pymysql.connect(
                host="127.0.0.1", port=port, user=user, password=token, database=database,
                ssl=client_ssl(tls), autocommit=True, program_name="pytest-pymysql",
            )
        except pymysql.MySQLError as e:
            raise DbError(e.args[0], str(e.args[-1])) from None

    def query(self, sql, params=None):
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql, params)
                cols = [d[0] for d in cur.description or ()]
                return cols, list(cur.fetchall())
        except pymysql.MySQLError as e:
            raise DbError(e.args[0], str(e.args[-1])) from None

    def close(self):
        self.conn.close()


class ConnectorClient(Client):
    """mysql-connector-python with server-side prepared statements (cursor(prepared=True))."""

    name = "connector-prepared"

    def __init__(self, port: int, user: str, token: str, tls: TlsFiles, database: str | None = None) -> None:
        try:
            self.conn = mysql.connector.connect(
                host="127.0.0.1", port=port, user=user, password=token, database=database,
                ssl_ca=str(tls.ca_cert), ssl_verify_identity=True, use_pure=True, autocommit=True,
            )
        except mysql.connector.Error as e:
            raise DbError(e.errno, e.msg) from None

    def query(self, sql, params=None):
        try:
            cur = self.conn.cursor(prepared=True)
            try:
                cur.execute(sql, params or ())
                cols = list(cur.column_names) if cur.description else []
                rows = [tuple(r) for r in cur.fetchall()] if cur.description else []
                return cols, rows
            finally:
                cur.close()
        except mysql.connector.Error as e:
            raise DbError(e.errno, e.msg) from None

    def close(self):
        self.conn.close()


class CliClient(Client):
    """The mariadb command-line client, one process per statement (TLS verified)."""

    name = "mariadb-cli"

    def __init__(self, port: int, user: str, token: str, tls: TlsFiles, database: str | None = None) -> None:
        self.args = [
            "mariadb", "--no-defaults", "-h127.0.0.1", f"-P{port}", f"-u{user}", f"--password={token}",
            f"--ssl-ca={tls.ca_cert}", "--ssl-verify-server-cert", "--batch", "--raw",
            "--comments",  # by default the CLI strips comments before sending
        ] + ([database] if database else [])

    def query(self, sql, params=None):
        assert params is None
        res = subprocess.run([*self.args, "-e", sql], capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            import re

            m = re.search(r"ERROR (\d+) \(\w+\)(?: at line \d+)?: (.*)", res.stderr)
            raise DbError(int(m.group(1)) if m else -1, m.group(2) if m else res.stderr)
        lines = res.stdout.splitlines()
        if not lines:
            return [], []
        cols = lines[0].split("\t")
        return cols, [tuple(line.split("\t")) for line in lines[1:]]


CLIENTS = [PyMySQLClient, ConnectorClient, CliClient]


@pytest.fixture(params=CLIENTS, ids=[c.name for c in CLIENTS])
def client_class(request: pytest.FixtureRequest) -> type[Client]:
    return request.param


@pytest.fixture
def connect(proxy: RunningProxy, tls_files: TlsFiles, client_class: type[Client]):
    opened: list[Client] = []

    def _connect(user: str, database: str | None = None, token: str | None = None) -> Client:
        c = client_class(proxy.port, user, token or proxy.token(user), tls_files, database)
        opened.append(c)
        return c

    yield _connect
    for c in opened:
        c.close()


def direct(mariadb: LocalMariaDB, upstream: Credentials, tls: TlsFiles, database: str | None = None) -> pymysql.Connection:
    return pymysql.connect(
        host="127.0.0.1", port=mariadb.port, user=upstream.user, password=upstream.password,
        database=database, ssl=client_ssl(tls), autocommit=True,
    )


def proxy_with_environments(tmp_path_factory: pytest.TempPathFactory, mariadb: LocalMariaDB, tls_files: TlsFiles,
                            upstream: Credentials, name: str, approvals: str) -> RunningProxy:
    """A proxy over the test MariaDB with hr_prod/hr_test in their environments (HR_ENVIRONMENTS)
    and these approval policies besides the base grants."""
    from tests.helpers import HR_ENVIRONMENTS

    policies = tmp_path_factory.mktemp(f"{name}-policies")
    (policies / "base.yaml").write_text(POLICY)
    (policies / "approvals.yaml").write_text(approvals)
    cfg = local_proxy_config(tmp_path_factory.mktemp(f"{name}-proxy"), mariadb, tls_files, upstream, policies,
                             extra={"upstream": {"environments": HR_ENVIRONMENTS}})
    return RunningProxy(cfg)
