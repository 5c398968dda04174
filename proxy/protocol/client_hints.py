"""The plaintext refusal's hint, naming the option of the client program that connected.

A client that does not start TLS is refused (error 3159) before it could send its token. Its
first handshake response still carries its connect attributes (`_client_name`,
`_client_version`, `program_name`), so the refusal can say what *that* client needs: a
Connector/J 2.x user is told about `useSsl=true`, not about CLI flags that JDBC does not have.

Only fixed texts are answered: nothing the client sent is echoed back (the attributes are a
stranger's bytes, before any login). Pure; tested in tests/unit/test_client_hints.py and, with
real clients, tests/integration/test_plaintext_hints.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

REFUSAL = "Connections using insecure transport are prohibited: jitproxy requires TLS"
CA = "<CA file>"

GENERIC = (f"mariadb/mysql CLI: --ssl --ssl-verify-server-cert --ssl-ca={CA}; drivers: TLS with the "
           "server certificate verified, e.g. ssl_mode=VERIFY_IDENTITY or an ssl context with the CA")
MARIADB_CLI = f"mariadb/mysql CLI: connect with --ssl --ssl-verify-server-cert --ssl-ca={CA} (not --skip-ssl)"
MYSQL_CLI = f"mysql CLI: connect with --ssl-mode=VERIFY_IDENTITY --ssl-ca={CA} (not --ssl-mode=DISABLED)"
MARIADB_C = (f"MariaDB Connector/C: set MYSQL_OPT_SSL_ENFORCE and MYSQL_OPT_SSL_VERIFY_SERVER_CERT with "
             f"MYSQL_OPT_SSL_CA={CA} (in an option file: ssl-verify-server-cert, ssl-ca)")
MYSQL_C = (f"MySQL C API: set MYSQL_OPT_SSL_MODE=SSL_MODE_VERIFY_IDENTITY with MYSQL_OPT_SSL_CA={CA} "
           "(in an option file: ssl-mode=VERIFY_IDENTITY, ssl-ca)")
MARIADB_J2 = (f"MariaDB Connector/J 2.x: add useSsl=true&serverSslCert={CA} to the URL "
              "(2.x ignores sslMode, which is 3.x's option)")
MARIADB_J3 = f"MariaDB Connector/J: add sslMode=verify-full&serverSslCert={CA} to the URL"
MYSQL_J = ("MySQL Connector/J: add sslMode=VERIFY_IDENTITY to the URL, with the CA in a trust store "
           "(trustCertificateKeyStoreUrl=file:...&trustCertificateKeyStorePassword=...)")
MYSQL_J5 = ("MySQL Connector/J 5.1: add useSSL=true&requireSSL=true&verifyServerCertificate=true to the URL, "
            "with the CA in a trust store (trustCertificateKeyStoreUrl=file:...)")
DBEAVER = (f"DBeaver: on the connection's SSL tab, use SSL and verify the server certificate, CA certificate "
           f"{CA} (MariaDB driver: sslMode=verify-full)")
PYMYSQL = (f"PyMySQL: ssl=ssl.create_default_context(cafile={CA}) (or ssl_ca={CA}, ssl_verify_cert=True, "
           "ssl_verify_identity=True), without ssl_disabled=True")
AIOMYSQL = f"aiomysql: ssl=ssl.create_default_context(cafile={CA})"
CONNECTOR_PYTHON = (f"mysql-connector-python: ssl_ca={CA}, ssl_verify_identity=True, "
                    "without ssl_disabled=True")
GO = ("Go MySQL driver: tls=true in the DSN, or tls=<name> of a config registered with mysql.RegisterTLSConfig "
      "holding the CA")
DOTNET = f".NET (MySqlConnector, Connector/NET): SslMode=VerifyFull;SslCa={CA} in the connection string"

# The command-line programs of MariaDB and MySQL: they take the CLI's options (their connect
# attributes name the C library as the client and the program in `program_name`).
CLI_PROGRAMS = frozenset(
    name
    for tool in ("", "dump", "admin", "show", "check", "import", "slap", "binlog")
    for name in ((f"mysql{tool}", f"mariadb-{tool}") if tool else ("mysql", "mariadb"))
)

_MAJOR = re.compile(r"\s*(\d+)")


def _major(version: str | None) -> int | None:
    match = _MAJOR.match(version or "")
    return int(match.group(1)) if match else None


def advice(attrs: Mapping[str, str]) -> str:
    """What the connecting client should change, from its connect attributes (GENERIC when
    they name no client this knows)."""
    client = (attrs.get("_client_name") or "").strip().lower()
    program = (attrs.get("program_name") or "").strip()
    version = _major(attrs.get("_client_version"))
    if "dbeaver" in program.lower():
        return DBEAVER
    if client in ("libmariadb", "libmysql"):
        mariadb = client == "libmariadb"
        if program.rsplit("/", 1)[-1].lower() in CLI_PROGRAMS:
            return MARIADB_CLI if mariadb else MYSQL_CLI
        return MARIADB_C if mariadb else MYSQL_C
    if "connector/j" in client or "connector java" in client:
        if "mariadb" in client:
            return MARIADB_J2 if version is not None and version < 3 else MARIADB_J3
        return MYSQL_J5 if version is not None and version < 8 else MYSQL_J
    if client == "pymysql":
        return PYMYSQL
    if client == "aiomysql":
        return AIOMYSQL
    if client == "mysql-connector-python":
        return CONNECTOR_PYTHON
    if client == "go-mysql-driver":
        return GO
    if client in ("mysqlconnector", "mysql.data", "connector/net"):
        return DOTNET
    return GENERIC


def plaintext_refusal(attrs: Mapping[str, str]) -> str:
    """The whole text of the plaintext refusal (error 3159) for this client."""
    return f"{REFUSAL} ({advice(attrs)})"
