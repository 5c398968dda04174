"""Versioned schema migrations for both store dialects (SQLite and PostgreSQL).

Each `Migration` has a version and the statements that bring the schema from the previous
version to it, once per dialect. `schema_migrations(version, applied_at)` records what has been
applied; `migrate_sqlite` / `migrate_postgres` apply the missing ones in order, all in one
transaction, so a failed upgrade leaves the schema as it was (both dialects have transactional
DDL).

A migration is written once, over `Types` (what each dialect calls the column types), and its
statements come out as they were released, to the byte: tests/store/test_migrations.py pins
them. A released migration is never edited; the schema changes by a new one.

Two processes may start at once against a fresh store: both migrate, and the loser of the race
must see the winner's work instead of failing on "table already exists". So the whole
check-and-apply runs under a lock that serialises migrators: SQLite's `BEGIN IMMEDIATE` (the
database's write lock, waited for through the busy timeout) and PostgreSQL's transaction-level
advisory lock (`CREATE TABLE IF NOT EXISTS` alone is not race-safe there: two sessions can both
pass the check and one then fails on the catalog's unique index).

Schema notes (both dialects):
- `meta` holds one row with the revision counter that every write bumps.
- Every table has an integer `seq` in insertion order, the tie-break for "oldest/newest first"
  when two rows share a timestamp; ids are random text ("g-…", "r-…").
- SQLite keeps times as fixed-width ISO-8601 UTC text (so text comparison is time order) and
  lists as JSON text; PostgreSQL uses timestamptz and text[].
- `requests.grant_ids` lists the grants the request's approval created, in creation order
  (`grants.request_id` alone cannot say that: a grant added by hand may cite a request).
- `grants.instance` / `requests.instance` (version 2): the upstream instance (its configured
  name) a grant applies to, "*" for every instance; rows older than version 2 read "*".
- `audit_events` (version 3): the audit trail. `body` is the event's JSON text exactly as
  appended (text, not jsonb, in PostgreSQL too: jsonb would reorder keys and reformat numbers,
  and `audit verify` recomputes hashes from the body; `body::jsonb` serves ad-hoc queries).
  The other columns are copied out of the body for searching (`person` is the event's "user").
  `id` is the insertion order (the tie-break for equal times). `audit_event_tables` has one
  row per table an event names ("db.table"), with the event's time, keyed for "the events on
  this table, newest first"; it points at `audit_events.id` (no foreign key: a retention job
  deletes from both). Audit writes do not bump `meta.revision`.
- Version 4: `requests.ends_at`, the absolute end a request asked for (`--until`): its access
  ends then however late it is approved (NULL: `duration_s` from the approval, `--for`).
  `grants.revoke_reason` (why it was ended early), `grants.released` (ended early by the person
  holding it, not by an admin: "released", not "revoked") and `grants.break_glass` (an admin
  grant longer than its environment allows, given with a reason). Older rows read NULL / false.
- Version 5: `session_passwords`, the short passwords for prompts and dialogs
  (proxy.identity.session_passwords): only the SHA-256 of the secret (`secret_hash`, unique), the
  person and groups it stands for, the instance ("*": any), the client address it is bound to
  (NULL: any), its end (the token's) and its revocation.
- Version 6: `requests.break_glass`, a request an on-call person made under a break-glass policy:
  approved at once (its grants have `break_glass` too) and reviewed after the fact (the review is
  an `approvals` row like any decision). Older rows read false.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from proxy.store.base import RequestStatus, StoreError

if TYPE_CHECKING:  # imported when used: a SQLite deployment never loads psycopg
    import psycopg


@dataclass(frozen=True)
class Types:
    """How one dialect spells the column types of the schema."""

    key: str  # the integer primary key in insertion order ("seq"; audit_events.id)
    integer: str
    bigint: str
    text: str
    time: str  # SQLite: fixed-width ISO-8601 UTC text
    list: str  # a list of text; SQLite: JSON text
    empty_list: str
    time_order: str  # what the audit indexes end with: SQLite's end with the rowid (= id) anyway
    keyed_table: str  # after a table that is its primary key (audit_event_tables)
    flag: Callable[[str], str]  # a boolean column (its name), false unless set


SQLITE_TYPES = Types(
    key="INTEGER PRIMARY KEY", integer="INTEGER", bigint="INTEGER", text="TEXT", time="TEXT", list="TEXT",
    empty_list="'[]'", time_order="time", keyed_table=" WITHOUT ROWID",
    flag=lambda column: f"INTEGER NOT NULL DEFAULT 0 CHECK ({column} IN (0, 1))",
)
POSTGRES_TYPES = Types(
    key="bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY", integer="integer", bigint="bigint", text="text",
    time="timestamptz", list="text[]", empty_list="ARRAY[]::text[]", time_order="time, id", keyed_table="",
    flag=lambda column: "boolean NOT NULL DEFAULT false",
)


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]

    @classmethod
    def written_once(cls, version: int, description: str, statements: Callable[[Types], tuple[str, ...]]) -> Migration:
        """The migration whose statements are `statements` in each dialect's types."""
        return cls(version, description, statements(SQLITE_TYPES), statements(POSTGRES_TYPES))


_STATUSES = ", ".join(f"'{status.value}'" for status in RequestStatus)

MIGRATIONS: tuple[Migration, ...] = (
    Migration.written_once(
        version=1,
        description="meta (revision), grants, requests, approvals",
        statements=lambda t: (
            f"""CREATE TABLE meta (
                id {t.integer} PRIMARY KEY CHECK (id = 1),
                revision {t.bigint} NOT NULL
            )""",
            "INSERT INTO meta (id, revision) VALUES (1, 0)",
            f"""CREATE TABLE requests (
                seq {t.key},
                id {t.text} NOT NULL UNIQUE,
                requester {t.text} NOT NULL,
                db {t.text} NOT NULL,
                tables {t.list} NOT NULL,
                privileges {t.list} NOT NULL,
                duration_s {t.integer} NOT NULL,
                reason {t.text} NOT NULL,
                environment {t.text} NOT NULL,
                status {t.text} NOT NULL CHECK (status IN ({_STATUSES})),
                created_at {t.time} NOT NULL,
                updated_at {t.time} NOT NULL,
                pending_until {t.time} NOT NULL,
                access_until {t.time},
                grant_ids {t.list} NOT NULL DEFAULT {t.empty_list},
                status_by {t.text}
            )""",
            "CREATE INDEX requests_status ON requests (status, created_at)",
            "CREATE INDEX requests_requester ON requests (requester, created_at)",
            f"""CREATE TABLE grants (
                seq {t.key},
                id {t.text} NOT NULL UNIQUE,
                subject {t.text} NOT NULL,
                db {t.text} NOT NULL,
                table_name {t.text} NOT NULL,
                privileges {t.list} NOT NULL,
                expires_at {t.time} NOT NULL,
                created_at {t.time} NOT NULL,
                created_by {t.text} NOT NULL,
                reason {t.text} NOT NULL,
                request_id {t.text},
                revoked_at {t.time},
                revoked_by {t.text}
            )""",
            # The snapshot rebuild reads the active grants: unrevoked, by expiry.
            "CREATE INDEX grants_active ON grants (expires_at) WHERE revoked_at IS NULL",
            "CREATE INDEX grants_subject ON grants (subject, expires_at)",
            f"""CREATE TABLE approvals (
                request_id {t.text} NOT NULL REFERENCES requests (id),
                position {t.integer} NOT NULL,
                approver {t.text} NOT NULL,
                roles {t.list} NOT NULL,
                decision {t.text} NOT NULL CHECK (decision IN ('approve', 'deny')),
                comment {t.text} NOT NULL,
                at {t.time} NOT NULL,
                PRIMARY KEY (request_id, position)
            )""",
        ),
    ),
    Migration.written_once(
        version=2,
        description="grants.instance, requests.instance (the upstream instance; '*' = every one)",
        # Rows from before instances existed apply to every instance, as they always did.
        statements=lambda t: (
            f"ALTER TABLE grants ADD COLUMN instance {t.text} NOT NULL DEFAULT '*'",
            f"ALTER TABLE requests ADD COLUMN instance {t.text} NOT NULL DEFAULT '*'",
        ),
    ),
    Migration.written_once(
        version=3,
        description="audit_events, audit_event_tables (the audit trail, searchable)",
        statements=lambda t: (
            f"""CREATE TABLE audit_events (
                id {t.key},
                event_id {t.text} NOT NULL UNIQUE,
                time {t.time} NOT NULL,
                type {t.text} NOT NULL,
                person {t.text},
                instance {t.text},
                environment {t.text},
                decision {t.text},
                session_id {t.text},
                proxy_instance {t.text},
                seq {t.bigint},
                body {t.text} NOT NULL
            )""",
            # Newest first by time, then id.
            f"CREATE INDEX audit_events_time ON audit_events ({t.time_order})",
            f"CREATE INDEX audit_events_person ON audit_events (person, {t.time_order})",
            f"CREATE INDEX audit_events_type ON audit_events (type, {t.time_order})",
            f"CREATE INDEX audit_events_instance ON audit_events (instance, {t.time_order})",
            f"CREATE INDEX audit_events_session ON audit_events (session_id, {t.time_order})",
            "CREATE INDEX audit_events_chain ON audit_events (proxy_instance, seq)",
            # One row per table an event names; walked in time order for "events on db.table".
            f"""CREATE TABLE audit_event_tables (
                table_name {t.text} NOT NULL,
                time {t.time} NOT NULL,
                event_pk {t.bigint} NOT NULL,
                PRIMARY KEY (table_name, time, event_pk)
            ){t.keyed_table}""",
        ),
    ),
    Migration.written_once(
        version=4,
        description="requests.ends_at (an absolute end); grants.revoke_reason, released, break_glass",
        statements=lambda t: (
            f"ALTER TABLE requests ADD COLUMN ends_at {t.time}",
            f"ALTER TABLE grants ADD COLUMN revoke_reason {t.text}",
            f"ALTER TABLE grants ADD COLUMN released {t.flag('released')}",
            f"ALTER TABLE grants ADD COLUMN break_glass {t.flag('break_glass')}",
        ),
    ),
    Migration.written_once(
        version=5,
        description="session_passwords: short passwords standing for a personal token (hashes only)",
        statements=lambda t: (
            f"""CREATE TABLE session_passwords (
                seq {t.key},
                id {t.text} NOT NULL UNIQUE,
                secret_hash {t.text} NOT NULL UNIQUE,
                person {t.text} NOT NULL,
                groups {t.list} NOT NULL,
                instance {t.text} NOT NULL,
                client_address {t.text},
                token_id {t.text},
                created_at {t.time} NOT NULL,
                expires_at {t.time} NOT NULL,
                revoked_at {t.time},
                revoked_by {t.text}
            )""",
            "CREATE INDEX session_passwords_person ON session_passwords (person, expires_at)",
        ),
    ),
    Migration.written_once(
        version=6,
        description="requests.break_glass (an on-call person's request, approved at once, reviewed after)",
        statements=lambda t: (
            f"ALTER TABLE requests ADD COLUMN break_glass {t.flag('break_glass')}",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version

# Any fixed bigint works; it only has to be the same in every jitproxy process.
_PG_MIGRATION_LOCK_KEY = 0x6A69_7470_726F_7879  # "jitproxy" in ASCII

_SQLITE_LEDGER = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    applied_at TEXT NOT NULL
)"""
_PG_LEDGER = """CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


def pending(applied: set[int]) -> list[Migration]:
    """The migrations not in `applied`, in order; StoreError if the schema is newer than ours."""
    newest = max(applied, default=0)
    if newest > LATEST_VERSION:
        raise StoreError(
            f"the store's schema is at version {newest} but this jitproxy knows only up to "
            f"{LATEST_VERSION}: upgrade jitproxy"
        )
    return [migration for migration in MIGRATIONS if migration.version not in applied]


def migrate_sqlite(conn: sqlite3.Connection) -> list[int]:
    """Apply the missing migrations; returns the versions applied (none: already current).

    `conn` must be in autocommit mode (isolation_level=None): the transaction is ours.
    """
    # IMMEDIATE takes the write lock up front, so a second migrator waits here (busy timeout)
    # and then finds the tables already made.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_SQLITE_LEDGER)
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_migrations")}
        todo = pending(applied)
        for migration in todo:
            # Statement by statement: executescript() would COMMIT first.
            for statement in migration.sqlite:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (migration.version, datetime.now(UTC).isoformat(timespec="microseconds")),
            )
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return [migration.version for migration in todo]


def migrate_postgres(conn: psycopg.Connection[Any]) -> list[int]:
    """Apply the missing migrations; returns the versions applied (none: already current)."""
    from psycopg.rows import tuple_row

    # tuple_row: whatever row factory the caller's connection has, we read plain tuples.
    with conn.transaction(), conn.cursor(row_factory=tuple_row) as cursor:
        # Held until the transaction ends: a concurrent migrator waits, then sees our tables.
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_MIGRATION_LOCK_KEY,))
        cursor.execute(_PG_LEDGER)
        cursor.execute("SELECT version FROM schema_migrations")
        todo = pending({row[0] for row in cursor.fetchall()})
        for migration in todo:
            for statement in migration.postgres:
                cursor.execute(statement)
            cursor.execute(
                "INSERT INTO schema_migrations (version) VALUES (%s)", (migration.version,)
            )
    return [migration.version for migration in todo]
