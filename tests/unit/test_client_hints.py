"""The plaintext refusal names the option of the client that connected (proxy.protocol.client_hints),
from the connect attributes real clients send (captured from each: see the comments)."""

from __future__ import annotations

import pytest

from proxy.protocol import client_hints as hints

# What each client sends in its first (plaintext) handshake response, as captured from it.
MARIADB_CLI = {"_client_name": "libmariadb", "_client_version": "3.3.20", "program_name": "mysql", "_os": "Linux"}
CONNECTOR_J_2 = {"_client_name": "MariaDB Connector/J", "_client_version": "2.7.6", "_java_version": "17.0.15"}
CONNECTOR_PYTHON = {"_client_name": "mysql-connector-python", "_client_version": "26.10.0"}


@pytest.mark.parametrize("attrs, expected", [
    (MARIADB_CLI, hints.MARIADB_CLI),
    ({**MARIADB_CLI, "program_name": "mariadb-dump"}, hints.MARIADB_CLI),
    ({**MARIADB_CLI, "program_name": "/usr/bin/mariadb"}, hints.MARIADB_CLI),
    ({"_client_name": "libmysql", "_client_version": "8.4.3", "program_name": "mysql"}, hints.MYSQL_CLI),
    ({"_client_name": "libmariadb", "_client_version": "3.3.20"}, hints.MARIADB_C),  # a program on the C library
    ({"_client_name": "libmysql", "program_name": "myapp"}, hints.MYSQL_C),
    (CONNECTOR_J_2, hints.MARIADB_J2),
    ({**CONNECTOR_J_2, "_client_version": "3.5.1"}, hints.MARIADB_J3),
    ({"_client_name": "MariaDB Connector/J"}, hints.MARIADB_J3),  # no version: today's
    ({"_client_name": "MySQL Connector/J", "_client_version": "9.1.0"}, hints.MYSQL_J),
    ({"_client_name": "MySQL Connector Java", "_client_version": "5.1.49"}, hints.MYSQL_J5),
    ({**CONNECTOR_J_2, "program_name": "DBeaver 24.3.0 - Main <hr_prod>"}, hints.DBEAVER),
    ({"_client_name": "pymysql", "_client_version": "1.4.6", "program_name": "pytest-pymysql"}, hints.PYMYSQL),
    ({"_client_name": "aiomysql", "_client_version": "0.3.2"}, hints.AIOMYSQL),
    (CONNECTOR_PYTHON, hints.CONNECTOR_PYTHON),
    ({"_client_name": "Go-MySQL-Driver", "_os": "linux"}, hints.GO),
    ({"_client_name": "MySqlConnector", "_client_version": "2.4.0"}, hints.DOTNET),
    ({}, hints.GENERIC),  # a client that sends no attributes
    ({"_client_name": "something-else", "program_name": "mysql"}, hints.GENERIC),
    ({"_client_name": "MariaDB Connector/J", "_client_version": "not-a-version"}, hints.MARIADB_J3),
])
def test_each_client_is_told_its_own_option(attrs, expected) -> None:
    assert hints.advice(attrs) == expected
    refusal = hints.plaintext_refusal(attrs)
    assert refusal.startswith(hints.REFUSAL) and expected in refusal


def test_every_hint_names_a_tls_option_and_the_cli_ones_exist_in_that_cli() -> None:
    assert "--ssl-verify-server-cert" in hints.MARIADB_CLI and "--skip-ssl" in hints.MARIADB_CLI
    assert "--ssl-mode=VERIFY_IDENTITY" in hints.MYSQL_CLI
    assert "useSsl=true" in hints.MARIADB_J2 and "sslMode=verify-full" in hints.MARIADB_J3
    assert "sslMode=VERIFY_IDENTITY" in hints.MYSQL_J
    assert "ssl_verify_identity=True" in hints.CONNECTOR_PYTHON and "ssl_verify_cert" in hints.PYMYSQL
    assert "--ssl" not in hints.MARIADB_J2 + hints.MARIADB_J3 + hints.MYSQL_J  # no CLI flags for JDBC


def test_nothing_the_client_sent_is_echoed() -> None:
    attrs = {"_client_name": "pymysql<script>", "program_name": "mysql\r\nX-Injected: 1", "_client_version": "9" * 50}
    refusal = hints.plaintext_refusal(attrs)
    assert "script" not in refusal and "Injected" not in refusal and "9" * 10 not in refusal
    assert refusal == hints.plaintext_refusal({})
