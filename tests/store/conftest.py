"""Fixtures for the state-store tests: every test runs against both backends.

PostgreSQL is one private server for the session (jitproxy_demo.postgres.LocalPostgres); each test
gets a database of its own, so tests never see each other's rows. SQLite gets a file in the
test's tmp_path.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jitproxy_demo.postgres import LocalPostgres
from proxy.store import open_store
from proxy.store.base import Store
from proxy.store.postgres import PostgresStore
from proxy.store.sqlite import SQLiteStore

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[LocalPostgres]:
    # Under /tmp, not tmp_path: when we are root the server runs as the postgres user, who
    # cannot enter pytest's root-only temporary directories.
    basedir = Path(tempfile.mkdtemp(prefix="jitpg-", dir="/tmp"))
    try:
        with LocalPostgres(basedir) as server:
            yield server
    finally:
        shutil.rmtree(basedir, ignore_errors=True)


@pytest.fixture
def postgres_dsn(postgres_server: LocalPostgres) -> Iterator[str]:
    """The DSN of a new, empty database, dropped after the test."""
    name = f"store_{uuid.uuid4().hex[:12]}"
    dsn = postgres_server.create_database(name)
    yield dsn
    postgres_server.drop_database(name)


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An `open_store` URL for an empty store of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"  # tmp_path is absolute: sqlite:////...
    dsn: str = request.getfixturevalue("postgres_dsn")
    return dsn


@pytest.fixture
def open_stores(store_url: str) -> Iterator[Callable[[], Store]]:
    """Opens (and later closes) more store objects on the same store: other replicas."""
    opened: list[Store] = []

    def open_one() -> Store:
        opened.append(open_store(store_url))
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(open_stores: Callable[[], Store]) -> Store:
    return open_stores()


def run_sql(url: str, sql: str) -> list[tuple[Any, ...]]:
    """Run `sql` on the store at `url` behind the store's back (a connection of its own) and
    commit; returns its rows."""
    if url.startswith("sqlite:///"):
        with closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
            rows = list(conn.execute(sql))
            conn.commit()
            return rows
    with psycopg.connect(url) as conn:  # commits on leaving the block
        cursor = conn.execute(sql)
        return list(cursor.fetchall()) if cursor.description else []


def unmigrated_store(url: str) -> Store:
    """A store object on `url` that has not migrated yet (open_store would have)."""
    if url.startswith("sqlite:///"):
        return SQLiteStore(url.removeprefix("sqlite:///"))
    return PostgresStore(url)


def migrate_to(url: str, version: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Migrate the empty store at `url` as a jitproxy that knew the migrations up to `version`
    only would have (an older store, for upgrade tests)."""
    import proxy.store.migrations as migrations

    with monkeypatch.context() as patch:
        patch.setattr(migrations, "MIGRATIONS", migrations.MIGRATIONS[:version])
        patch.setattr(migrations, "LATEST_VERSION", version)
        old = unmigrated_store(url)
        try:
            old.migrate()
        finally:
            old.close()


def sql_list(url: str, *values: str) -> str:
    """A list literal in the store's dialect (SQLite: JSON text; PostgreSQL: text[])."""
    if url.startswith("sqlite:///"):
        return "'" + json.dumps(list(values)) + "'"
    return "ARRAY[" + ", ".join(f"'{v}'" for v in values) + "]::text[]"


def insert_old_request(url: str, request_id: str, at: str, until: str) -> None:
    """A pending request row with the columns every schema version has (written as an older
    jitproxy wrote it: behind the store's back)."""
    run_sql(url, f"""INSERT INTO requests (id, requester, db, tables, privileges, duration_s, reason,
            environment, status, created_at, updated_at, pending_until, grant_ids, instance)
        VALUES ('{request_id}', 'alice', 'hr_prod', {sql_list(url, "salary")}, {sql_list(url, "SELECT")}, 3600,
            'incident 42', 'prod', 'pending', '{at}', '{at}', '{until}', {sql_list(url)}, '*')""")
