"""What only the PostgreSQL store does: replace a broken connection, and keep the DSN's password
out of every error."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

import pytest
from psycopg.conninfo import conninfo_to_dict

from jitproxy_demo.postgres import LocalPostgres
from proxy.store import open_store
from proxy.store.base import NewGrant, StoreError
from proxy.store.postgres import PostgresStore

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
SECRET = "Sup3r-Secret-pw"


def grant(table: str) -> NewGrant:
    return NewGrant("user:alice", "hr_prod", table, ("SELECT",), NOW + timedelta(hours=1), "admin")


def terminate_other_sessions(server: LocalPostgres, dsn: str) -> int:
    """Kill every session on `dsn`'s database, waiting until they are gone; how many there were."""
    database = conninfo_to_dict(dsn)["dbname"]
    with server.connect() as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    assert all(row[0] for row in rows), "a session outlived pg_terminate_backend's wait"
    return len(rows)


def test_a_broken_connection_is_replaced_and_the_call_retried_once(
    postgres_server: LocalPostgres, postgres_dsn: str
) -> None:
    store = open_store(postgres_dsn)
    try:
        first = store.add_grant(grant("first"), NOW)
        assert terminate_other_sessions(postgres_server, postgres_dsn) == 1
        assert store.get_grant(first.id) == first  # a read on a new connection
        assert terminate_other_sessions(postgres_server, postgres_dsn) == 1
        store.add_grant(grant("second"), NOW)  # a write on a new connection: applied once
        assert [g.table for g in store.grants()] == ["first", "second"]
        assert store.revision() == 2
    finally:
        store.close()


def _unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: nothing listens there


def test_an_unreachable_server_is_a_store_error_without_the_password() -> None:
    store = PostgresStore(f"postgresql://jitproxy:{SECRET}@127.0.0.1:{_unused_port()}/state")
    with pytest.raises(StoreError) as caught:
        store.revision()
    message = str(caught.value)
    assert "cannot connect" in message and "127.0.0.1" in message
    assert SECRET not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_wrong_password_is_a_store_error_without_the_password(postgres_server: LocalPostgres) -> None:
    dsn = postgres_server.dsn.replace(postgres_server.password, SECRET)
    with pytest.raises(StoreError) as caught:
        open_store(dsn)
    assert "password authentication failed" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_an_unparsable_dsn_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError) as caught:
        PostgresStore(f"host=localhost password={SECRET} {SECRET}-stray")
    assert SECRET not in str(caught.value)
