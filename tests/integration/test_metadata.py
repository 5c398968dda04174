"""Metadata visibility: information_schema, SHOW and driver metadata calls show a person the
objects they hold grants on, and nothing else (names included)."""

from __future__ import annotations

import pymysql
import pytest

from tests.integration.conftest import client_ssl


@pytest.fixture
def dev(proxy, tls_files):
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="dev", password=proxy.token("dev"),
                        database="hr_prod", ssl=client_ssl(tls_files))
    yield c.cursor()
    c.close()


@pytest.fixture(scope="module")
def shadow_database(mariadb):
    """A database whose name differs from a granted one only in case (distinct on Linux)."""
    mariadb.execute_root("CREATE DATABASE IF NOT EXISTS HR_PROD")
    mariadb.execute_root("CREATE TABLE IF NOT EXISTS HR_PROD.secret_plans (id INT)")
    mariadb.execute_root("GRANT ALL ON `HR_PROD`.* TO 'jitproxy'@'%'")
    yield
    mariadb.execute_root("DROP DATABASE HR_PROD")


def names(cur, sql):
    cur.execute(sql)
    return sorted(r[0] for r in cur.fetchall())


def test_information_schema_tables_lists_only_granted_tables(dev, shadow_database):
    assert names(dev, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA LIKE 'hr%'") == ["employee", "title"]
    assert "secret_plans" not in names(dev, "SELECT TABLE_NAME FROM information_schema.TABLES")  # HR_PROD != hr_prod
    dev.execute("SELECT COUNT(*) FROM INFORMATION_SCHEMA.tables WHERE table_schema <> 'information_schema'")
    assert dev.fetchone() == (2,)


def test_information_schema_columns_and_schemata(dev, shadow_database):
    assert names(dev, "SELECT DISTINCT TABLE_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'hr_prod'") == ["employee", "title"]
    assert names(dev, "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_NAME = 'salary'") == []
    assert names(dev, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA") == ["hr_prod", "information_schema"]


def test_joins_between_metadata_tables_stay_restricted(dev):
    dev.execute("SELECT t.TABLE_NAME, COUNT(c.COLUMN_NAME) FROM information_schema.TABLES t "
                "JOIN information_schema.COLUMNS c ON c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME "
                "WHERE t.TABLE_SCHEMA = 'hr_prod' GROUP BY t.TABLE_NAME")
    assert sorted(r[0] for r in dev.fetchall()) == ["employee", "title"]


@pytest.mark.parametrize("sql", [
    "SELECT * FROM information_schema.PROCESSLIST",
    "SELECT * FROM information_schema.USER_PRIVILEGES",
    "SELECT * FROM information_schema.TABLE_PRIVILEGES",
])
def test_metadata_about_the_shared_identity_is_denied(dev, sql):
    with pytest.raises(pymysql.MySQLError) as e:
        dev.execute(sql)
    assert e.value.args[0] == 1142


def test_show_table_status_lists_only_granted_tables(dev):
    assert names(dev, "SHOW TABLE STATUS") == ["employee", "title"]


def test_admin_sees_everything(proxy, tls_files, shadow_database):
    c = pymysql.connect(host="127.0.0.1", port=proxy.port, user="admin", password=proxy.token("admin"),
                        ssl=client_ssl(tls_files))
    with c.cursor() as cur:
        assert "salary" in names(cur, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'hr_prod'")
        assert "HR_PROD" in names(cur, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")
        assert "secret_plans" in names(cur, "SELECT TABLE_NAME FROM information_schema.TABLES")  # visible upstream
    c.close()


def test_metadata_denial_never_reaches_the_server(dev, mariadb):
    import uuid

    m = uuid.uuid4().hex
    with pytest.raises(pymysql.MySQLError):
        dev.execute(f"SELECT * FROM information_schema.PROCESSLIST /*{m}*/")
    assert m not in mariadb.general_log_text()


def test_use_information_schema_then_unqualified_reads_stay_restricted(dev):
    dev.execute("USE information_schema")
    assert names(dev, "SELECT TABLE_NAME FROM TABLES WHERE TABLE_SCHEMA LIKE 'hr%'") == ["employee", "title"]
    assert "TABLES" in names(dev, "SHOW TABLES")  # information_schema's own tables are public
    dev.execute("USE hr_prod")
