"""The exact statements DBeaver's MySQL/MariaDB plugin and MySQL Connector/J send (taken from
their sources), run as a person with two granted tables: browsing works and shows only what is
granted."""

from __future__ import annotations

import pymysql
import pytest

from proxy.authz.analyze import analyze
from proxy.authz.model import StatementKind
from tests.integration.conftest import client_ssl

# MySQL Connector/J 8.x at connect (ConnectionImpl / NativeSession): server variables, then SETs.
CONNECTOR_J_CONNECT = [
    "/* mysql-connector-j-8.4.0 (Revision: 1c3f5c149e0bfe31c7fbeb24e2d260cd890972c4) */SELECT "
    "@@session.auto_increment_increment AS auto_increment_increment, @@character_set_client AS "
    "character_set_client, @@character_set_connection AS character_set_connection, "
    "@@character_set_results AS character_set_results, @@character_set_server AS character_set_server, "
    "@@collation_server AS collation_server, @@collation_connection AS collation_connection, "
    "@@init_connect AS init_connect, @@interactive_timeout AS interactive_timeout, @@license AS license, "
    "@@lower_case_table_names AS lower_case_table_names, @@max_allowed_packet AS max_allowed_packet, "
    "@@net_write_timeout AS net_write_timeout, @@performance_schema AS performance_schema, "
    "@@sql_mode AS sql_mode, @@system_time_zone AS system_time_zone, @@time_zone AS time_zone, "
    "@@transaction_isolation AS transaction_isolation, @@wait_timeout AS wait_timeout",
    "SET NAMES utf8mb4",
    "SET character_set_results = NULL",
    "SET autocommit=1",
    "SELECT @@session.transaction_read_only",
    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
    "SHOW WARNINGS",
]


def test_connector_j_connect_statements_are_allowed():
    for sql in CONNECTOR_J_CONNECT:
        a = analyze(sql, "hr_prod")
        assert a.kind is not StatementKind.DENIED, (sql, a.deny)
        assert not a.requirements


# DBeaver's MySQL plugin (MySQLDataSource.initialize, MySQLCatalog caches), parameters inlined as
# Connector/J does with client-side prepared statements.
DBEAVER_CONNECT = [
    "SHOW ENGINES",
    "SHOW CHARSET",
    "SHOW COLLATION",
    "SELECT * FROM information_schema.SCHEMATA",
    "SELECT DATABASE()",
    "use `hr_prod`",
]


def dbeaver_open_table(db: str, table: str) -> list[str]:
    return [
        f"SHOW FULL TABLES FROM `{db}`",
        f"SELECT * FROM information_schema.COLUMNS WHERE TABLE_SCHEMA='{db}' AND TABLE_NAME='{table}' ORDER BY ORDINAL_POSITION",
        f"SELECT * FROM information_schema.STATISTICS WHERE TABLE_SCHEMA='{db}' AND TABLE_NAME='{table}' ORDER BY INDEX_NAME,SEQ_IN_INDEX",
        "SELECT kc.CONSTRAINT_NAME,kc.TABLE_NAME,kc.COLUMN_NAME,kc.ORDINAL_POSITION\n"
        f"FROM INFORMATION_SCHEMA.KEY_COLUMN_USAGE kc WHERE kc.TABLE_SCHEMA='{db}' AND kc.REFERENCED_TABLE_NAME IS NULL "
        f"AND kc.TABLE_NAME='{table}'\nORDER BY kc.CONSTRAINT_NAME,kc.ORDINAL_POSITION",
        f"SELECT * FROM information_schema.ROUTINES\nWHERE ROUTINE_SCHEMA='{db}'\nORDER BY ROUTINE_NAME",
        f"SELECT * FROM information_schema.EVENTS WHERE EVENT_SCHEMA='`{db}`'",
        f"SHOW CREATE TABLE `{db}`.`{table}`",
        f"SELECT * FROM `{db}`.`{table}` LIMIT 0, 200",
    ]


@pytest.fixture
def dev(proxy, tls_files):
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="dev", password=proxy.token("dev"),
                        ssl=client_ssl(tls_files))
    yield c.cursor()
    c.close()


def run(cur, sql):
    cur.execute(sql)
    return cur.fetchall()


def test_dbeaver_connects_and_lists_only_granted_objects(dev):
    results = {sql: run(dev, sql) for sql in DBEAVER_CONNECT}
    schemata = sorted(r[1] for r in results["SELECT * FROM information_schema.SCHEMATA"])
    assert schemata == ["hr_prod", "information_schema"]
    assert results["SELECT DATABASE()"] in (((None,),), (("hr_prod",),))


def test_dbeaver_opens_a_granted_table(dev):
    statements = dbeaver_open_table("hr_prod", "employee")
    results = [run(dev, sql) for sql in statements]
    tables, columns, indexes, keys, routines, events, ddl, data = results
    assert sorted(r[0] for r in tables) == ["employee", "title"]
    assert len(columns) > 5 and {r[2] for r in columns} == {"employee"}
    assert indexes and keys and routines == () and events == ()
    assert "CREATE TABLE `employee`" in ddl[0][1]
    assert len(data) == 200


def test_dbeaver_sees_nothing_of_an_ungranted_table(dev):
    statements = dbeaver_open_table("hr_prod", "salary")
    tables, columns, indexes, keys, routines, events = (run(dev, sql) for sql in statements[:6])
    assert "salary" not in {r[0] for r in tables}
    assert columns == () and indexes == () and keys == ()
    for sql in statements[6:]:  # DDL and data need a grant
        with pytest.raises(pymysql.MySQLError) as e:
            dev.execute(sql)
        assert e.value.args[0] == 1142


def test_dbeaver_triggers_node(dev):
    """SHOW FULL TRIGGERS lists triggers of every table of a database: refused (not filterable)."""
    with pytest.raises(pymysql.MySQLError) as e:
        dev.execute("SHOW FULL TRIGGERS FROM `hr_prod`")
    assert e.value.args[0] == 1142
