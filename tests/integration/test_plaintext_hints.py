"""A client that connects without TLS is refused before it sends its token, and told the option
of *its* program (proxy.protocol.client_hints, from the connect attributes of that first
plaintext handshake response): real clients, each without TLS."""

from __future__ import annotations

import subprocess

import mysql.connector
import pymysql
import pytest

from proxy.protocol import client_hints
from tests.integration.rawclient import RawClient, err_code


def _refused(proxy) -> list[dict]:
    return [e for e in proxy.events if e["type"] == "session.rejected" and e.get("reason_code") == "tls_required"]


def test_mariadb_cli_with_skip_ssl_is_told_its_flags(proxy) -> None:
    before = len(_refused(proxy))
    done = subprocess.run(["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{proxy.port}", "-udev", "--password=unsent",
                           "--skip-ssl", "hr_prod", "-e", "SELECT 1"], capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "ERROR 3159 (HY000)" in done.stderr and client_hints.MARIADB_CLI in done.stderr, done.stderr
    assert len(_refused(proxy)) == before + 1


def test_pymysql_without_tls_is_told_its_parameters(proxy) -> None:
    with pytest.raises(pymysql.MySQLError) as e:
        pymysql.connect(host="127.0.0.1", port=proxy.port, user="dev", password="unsent", ssl_disabled=True)
    assert e.value.args[0] == 3159 and client_hints.PYMYSQL in e.value.args[1]


def test_mysql_connector_python_without_tls_is_told_its_parameters(proxy) -> None:
    with pytest.raises(mysql.connector.Error) as e:
        mysql.connector.connect(host="127.0.0.1", port=proxy.port, user="dev", password="unsent",
                                ssl_disabled=True, use_pure=True)
    assert e.value.errno == 3159 and client_hints.CONNECTOR_PYTHON in e.value.msg


def test_a_client_without_connect_attributes_gets_the_generic_hint(proxy) -> None:
    raw = RawClient(proxy.port)
    reply = raw.login("dev", b"unsent", tls=False)
    assert err_code(reply) == 3159 and client_hints.GENERIC.encode() in reply
    assert raw.is_closed_by_server()
