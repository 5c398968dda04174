"""Versioned schema migrations for both store dialects (SQLite and PostgreSQL).

Each `Migration` has a version and the statements that bring the schema from the previous
version to it, once per dialect. `schema_migrations(version, applied_at)` records what has been
applied; `migrate_sqlite` / `migrate_postgres` apply the missing ones in order, all in one
transaction, so a failed upgrade leaves the schema as it was (both dialects have transactional
DDL).

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
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from proxy.store.base import RequestStatus, StoreError

if TYPE_CHECKING:  # imported when used: a SQLite deployment never loads psycopg
    import psycopg


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    sqlite: tuple[str, ...]
    postgres: tuple[str, ...]


_STATUSES = ", ".join(f"'{status.value}'" for status in RequestStatus)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        description="meta (revision), grants, requests, approvals",
        sqlite=(
            """CREATE TABLE meta (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                revision INTEGER NOT NULL
            )""",
            "INSERT INTO meta (id, revision) VALUES (1, 0)",
            f"""CREATE TABLE requests (
                seq INTEGER PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                requester TEXT NOT NULL,
                db TEXT NOT NULL,
                tables TEXT NOT NULL,
                privileges TEXT NOT NULL,
                duration_s INTEGER NOT NULL,
                reason TEXT NOT NULL,
                environment TEXT NOT NULL,
                status TEXT NOT NULL CHECK (status IN ({_STATUSES})),
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                pending_until TEXT NOT NULL,
                access_until TEXT,
                grant_ids TEXT NOT NULL DEFAULT '[]',
                status_by TEXT
            )""",
            "CREATE INDEX requests_status ON requests (status, created_at)",
            "CREATE INDEX requests_requester ON requests (requester, created_at)",
            """CREATE TABLE grants (
                seq INTEGER PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                subject TEXT NOT NULL,
                db TEXT NOT NULL,
                table_name TEXT NOT NULL,
                privileges TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL,
                reason TEXT NOT NULL,
                request_id TEXT,
                revoked_at TEXT,
                revoked_by TEXT
            )""",
            # The snapshot rebuild reads the active grants: unrevoked, by expiry.
            "CREATE INDEX grants_active ON grants (expires_at) WHERE revoked_at IS NULL",
            "CREATE INDEX grants_subject ON grants (subject, expires_at)",
            """CREATE TABLE approvals (
                request_id TEXT NOT NULL REFERENCES requests (id),
                position INTEGER NOT NULL,
                approver TEXT NOT NULL,
                roles TEXT NOT NULL,
                decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
                comment TEXT NOT NULL,
                at TEXT NOT NULL,
                PRIMARY KEY (request_id, position)
            )""",
        ),
        postgres=(
            """CREATE TABLE meta (
                id integer PRIMARY KEY CHECK (id = 1),
                revision bigint NOT NULL
            )""",
            "INSERT INTO meta (id, revision) VALUES (1, 0)",
            f"""CREATE TABLE requests (
                seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                id text NOT NULL UNIQUE,
                requester text NOT NULL,
                db text NOT NULL,
                tables text[] NOT NULL,
                privileges text[] NOT NULL,
                duration_s integer NOT NULL,
                reason text NOT NULL,
                environment text NOT NULL,
                status text NOT NULL CHECK (status IN ({_STATUSES})),
                created_at timestamptz NOT NULL,
                updated_at timestamptz NOT NULL,
                pending_until timestamptz NOT NULL,
                access_until timestamptz,
                grant_ids text[] NOT NULL DEFAULT ARRAY[]::text[],
                status_by text
            )""",
            "CREATE INDEX requests_status ON requests (status, created_at)",
            "CREATE INDEX requests_requester ON requests (requester, created_at)",
            """CREATE TABLE grants (
                seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                id text NOT NULL UNIQUE,
                subject text NOT NULL,
                db text NOT NULL,
                table_name text NOT NULL,
                privileges text[] NOT NULL,
                expires_at timestamptz NOT NULL,
                created_at timestamptz NOT NULL,
                created_by text NOT NULL,
                reason text NOT NULL,
                request_id text,
                revoked_at timestamptz,
                revoked_by text
            )""",
            "CREATE INDEX grants_active ON grants (expires_at) WHERE revoked_at IS NULL",
            "CREATE INDEX grants_subject ON grants (subject, expires_at)",
            """CREATE TABLE approvals (
                request_id text NOT NULL REFERENCES requests (id),
                position integer NOT NULL,
                approver text NOT NULL,
                roles text[] NOT NULL,
                decision text NOT NULL CHECK (decision IN ('approve', 'deny')),
                comment text NOT NULL,
                at timestamptz NOT NULL,
                PRIMARY KEY (request_id, position)
            )""",
        ),
    ),
    Migration(
        version=2,
        description="grants.instance, requests.instance (the upstream instance; '*' = every one)",
        # Rows from before instances existed apply to every instance, as they always did.
        sqlite=(
            "ALTER TABLE grants ADD COLUMN instance TEXT NOT NULL DEFAULT '*'",
            "ALTER TABLE requests ADD COLUMN instance TEXT NOT NULL DEFAULT '*'",
        ),
        postgres=(
            "ALTER TABLE grants ADD COLUMN instance text NOT NULL DEFAULT '*'",
            "ALTER TABLE requests ADD COLUMN instance text NOT NULL DEFAULT '*'",
        ),
    ),
    Migration(
        version=3,
        description="audit_events, audit_event_tables (the audit trail, searchable)",
        sqlite=(
            """CREATE TABLE audit_events (
                id INTEGER PRIMARY KEY,
                event_id TEXT NOT NULL UNIQUE,
                time TEXT NOT NULL,
                type TEXT NOT NULL,
                person TEXT,
                instance TEXT,
                environment TEXT,
                decision TEXT,
                session_id TEXT,
                proxy_instance TEXT,
                seq INTEGER,
                body TEXT NOT NULL
            )""",
            # Newest first by time, then id: SQLite indexes end with the rowid (= id).
            "CREATE INDEX audit_events_time ON audit_events (time)",
            "CREATE INDEX audit_events_person ON audit_events (person, time)",
            "CREATE INDEX audit_events_type ON audit_events (type, time)",
            "CREATE INDEX audit_events_instance ON audit_events (instance, time)",
            "CREATE INDEX audit_events_session ON audit_events (session_id, time)",
            "CREATE INDEX audit_events_chain ON audit_events (proxy_instance, seq)",
            # One row per table an event names; walked in time order for "events on db.table".
            """CREATE TABLE audit_event_tables (
                table_name TEXT NOT NULL,
                time TEXT NOT NULL,
                event_pk INTEGER NOT NULL,
                PRIMARY KEY (table_name, time, event_pk)
            ) WITHOUT ROWID""",
        ),
        postgres=(
            """CREATE TABLE audit_events (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                event_id text NOT NULL UNIQUE,
                time timestamptz NOT NULL,
                type text NOT NULL,
                person text,
                instance text,
                environment text,
                decision text,
                session_id text,
                proxy_instance text,
                seq bigint,
                body text NOT NULL
            )""",
            "CREATE INDEX audit_events_time ON audit_events (time, id)",
            "CREATE INDEX audit_events_person ON audit_events (person, time, id)",
            "CREATE INDEX audit_events_type ON audit_events (type, time, id)",
            "CREATE INDEX audit_events_instance ON audit_events (instance, time, id)",
            "CREATE INDEX audit_events_session ON audit_events (session_id, time, id)",
            "CREATE INDEX audit_events_chain ON audit_events (proxy_instance, seq)",
            """CREATE TABLE audit_event_tables (
                table_name text NOT NULL,
                time timestamptz NOT NULL,
                event_pk bigint NOT NULL,
                PRIMARY KEY (table_name, time, event_pk)
            )""",
        ),
    ),
    Migration(
        version=4,
        description="requests.ends_at (an absolute end); grants.revoke_reason, released, break_glass",
        sqlite=(
            "ALTER TABLE requests ADD COLUMN ends_at TEXT",
            "ALTER TABLE grants ADD COLUMN revoke_reason TEXT",
            "ALTER TABLE grants ADD COLUMN released INTEGER NOT NULL DEFAULT 0 CHECK (released IN (0, 1))",
            "ALTER TABLE grants ADD COLUMN break_glass INTEGER NOT NULL DEFAULT 0 CHECK (break_glass IN (0, 1))",
        ),
        postgres=(
            "ALTER TABLE requests ADD COLUMN ends_at timestamptz",
            "ALTER TABLE grants ADD COLUMN revoke_reason text",
            "ALTER TABLE grants ADD COLUMN released boolean NOT NULL DEFAULT false",
            "ALTER TABLE grants ADD COLUMN break_glass boolean NOT NULL DEFAULT false",
        ),
    ),
    Migration(
        version=5,
        description="session_passwords: short passwords standing for a personal token (hashes only)",
        sqlite=(
            """CREATE TABLE session_passwords (
                seq INTEGER PRIMARY KEY,
                id TEXT NOT NULL UNIQUE,
                secret_hash TEXT NOT NULL UNIQUE,
                person TEXT NOT NULL,
                groups TEXT NOT NULL,
                instance TEXT NOT NULL,
                client_address TEXT,
                token_id TEXT,
                created_at TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                revoked_at TEXT,
                revoked_by TEXT
            )""",
            "CREATE INDEX session_passwords_person ON session_passwords (person, expires_at)",
        ),
        postgres=(
            """CREATE TABLE session_passwords (
                seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                id text NOT NULL UNIQUE,
                secret_hash text NOT NULL UNIQUE,
                person text NOT NULL,
                groups text[] NOT NULL,
                instance text NOT NULL,
                client_address text,
                token_id text,
                created_at timestamptz NOT NULL,
                expires_at timestamptz NOT NULL,
                revoked_at timestamptz,
                revoked_by text
            )""",
            "CREATE INDEX session_passwords_person ON session_passwords (person, expires_at)",
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
