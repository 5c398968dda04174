"""The PostgreSQL store, for several proxy replicas sharing one state (psycopg 3, synchronous).
The store itself is proxy.store.sql; this is its PostgreSQL dialect.

One connection per store object, used by one thread at a time (a lock), in autocommit mode with
an explicit transaction per method. Writes run at READ COMMITTED and end by bumping the
revision row, which serialises writers briefly but means a replica polling `revision()` sees
every committed change. A compare-and-set (`record_decision`, `revoke_grant`, ...) locks the
rows it checks (`SELECT ... FOR UPDATE`): a concurrent writer waits, then re-reads the committed
state and gets Conflict. Reads that take several queries run at REPEATABLE READ, so a request and
its approvals come from one snapshot.

A connection that breaks (server restart, failover, idle timeout) is replaced once and the
method retried; the retry is safe because an uncommitted transaction dies with its connection.
The one case not retried is a connection lost during a write's COMMIT, when nobody knows whether
it was applied.

Errors become StoreError with a message naming the server (host, port, database) but never the
DSN: it may carry a password.

Audit batches (`append_audit`) are two statements over arrays (one round trip each, whatever
the batch size) in a transaction that does not bump the revision. Being idempotent on
event_id, they are retried on a new connection even when the connection broke during COMMIT.
Give the audit sink a store object (connection) of its own, so a batch never waits behind a
grant poll and the reverse.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row

from proxy.store.audit import INSERT_COLUMNS, AuditRow, row_values, table_pairs
from proxy.store.base import StoreError
from proxy.store.common import utc
from proxy.store.migrations import migrate_postgres
from proxy.store.sql import Mode, SQLStore, Tx

T = TypeVar("T")
Connection = psycopg.Connection[DictRow]

log = structlog.get_logger("jitproxy.store")

DEFAULT_CONNECT_TIMEOUT_S = 10


class PostgresStore(SQLStore):
    """`Store` on a PostgreSQL database reached through a libpq DSN or URL."""

    def __init__(self, dsn: str, *, connect_timeout_s: int = DEFAULT_CONNECT_TIMEOUT_S) -> None:
        super().__init__(PostgresDialect(dsn, connect_timeout_s))


class PostgresDialect:
    """proxy.store.sql.Dialect on a PostgreSQL database."""

    returning = True
    for_update = " FOR UPDATE"

    def __init__(self, dsn: str, connect_timeout_s: int) -> None:
        try:
            params = conninfo_to_dict(dsn)
        except psycopg.Error:
            # libpq's parse error quotes the offending part of the DSN.
            raise ValueError("invalid PostgreSQL DSN (not shown: it may hold a password)") from None
        self._dsn = dsn
        self._password = str(params.get("password") or "")
        self._server = ", ".join(f"{key}={params[key]}" for key in ("host", "port", "dbname") if params.get(key))
        self._options: dict[str, Any] = {"autocommit": True, "row_factory": dict_row}
        if "connect_timeout" not in params:
            self._options["connect_timeout"] = connect_timeout_s
        if "application_name" not in params:
            self._options["application_name"] = "jitproxy"
        self._lock = threading.Lock()
        self._conn: Connection | None = None
        self._closed = False

    # -- transactions and the connection ------------------------------------------------------

    def run(self, work: Callable[[Tx], T], mode: Mode) -> T:
        def attempt(conn: Connection) -> T:
            if mode is Mode.STATEMENT:
                with conn.cursor() as cursor:
                    return work(Tx(cursor, "%s"))
            committing = False
            try:
                with conn.transaction(), conn.cursor() as cursor:
                    if mode is Mode.READ:
                        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    result = work(Tx(cursor, "%s"))
                    # All that is left is the COMMIT on leaving the block. An APPEND is replayed
                    # even if it is lost: a batch stored twice stores nothing twice.
                    committing = mode is Mode.WRITE
            except psycopg.OperationalError as exc:
                if committing:
                    # Not retried: the write may have been applied (and must not happen twice).
                    raise self._error(
                        exc, "connection lost during COMMIT; the write may or may not have been applied"
                    ) from None
                raise
            return result

        return self._run(attempt)

    def migrate(self) -> None:
        self._run(migrate_postgres)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._discard()

    def _run(self, work: Callable[[Connection], T]) -> T:
        """`work` on the connection, once more on a new one if the connection turns out broken.

        psycopg errors become StoreError; ours (Conflict, NotFound) and ValueError pass through.
        """
        with self._lock:
            conn = self._connection()
            try:
                return work(conn)
            except psycopg.OperationalError as exc:
                if not conn.broken:
                    raise self._error(exc) from None
                log.warning("store connection lost; reconnecting", server=self._server, error=type(exc).__name__)
            except psycopg.Error as exc:
                raise self._error(exc) from None
            self._discard()
            conn = self._connection()
            try:
                return work(conn)
            except psycopg.Error as exc:
                raise self._error(exc) from None

    def _connection(self) -> Connection:
        if self._closed:
            raise StoreError("the PostgreSQL store is closed")
        if self._conn is None or self._conn.closed or self._conn.broken:
            try:
                self._conn = psycopg.connect(self._dsn, **self._options)
            except psycopg.Error as exc:
                raise self._error(exc, "cannot connect") from None
        return self._conn

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _error(self, exc: psycopg.Error, what: str = "") -> StoreError:
        """A StoreError describing `exc`. Raised `from None`: the psycopg exception is not kept
        as the cause, so nothing in a logged traceback escapes the redaction below."""
        detail = str(exc).strip() or type(exc).__name__
        if self._password:
            detail = detail.replace(self._password, "***")
        prefix = f"PostgreSQL store ({self._server or 'libpq defaults'})"
        return StoreError(f"{prefix}: {what + ': ' if what else ''}{detail}")

    # -- values -------------------------------------------------------------------------------

    def put_time(self, moment: datetime) -> datetime:
        return utc(moment)

    def get_time(self, value: datetime) -> datetime:
        # psycopg returns timestamptz in the session's TimeZone; the interface speaks UTC.
        return value.astimezone(UTC)

    def put_list(self, values: Iterable[str]) -> list[str]:
        return list(values)

    def get_list(self, value: list[str]) -> tuple[str, ...]:
        return tuple(value)

    def put_flag(self, value: bool) -> bool:
        return value

    def in_list(self, column: str) -> str:
        return f"{column} = ANY(?::text[])"

    # -- the audit trail ----------------------------------------------------------------------

    def insert_audit(self, tx: Tx, rows: Sequence[AuditRow]) -> None:
        columns = [list(values) for values in zip(*(row_values(row, utc) for row in rows), strict=True)]
        tx.execute(_AUDIT_INSERT, columns)
        pairs = table_pairs(rows)
        if pairs:
            tx.execute(_AUDIT_TABLES_INSERT, ([p[0] for p in pairs], [p[1] for p in pairs]))


_AUDIT_TYPES = ("text", "timestamptz", "text", "text", "text", "text", "text", "text", "text", "bigint", "text")
# One array per column, unnested in the batch's order (ORDINALITY: ids follow it). DO NOTHING
# also skips a duplicate event_id inside the batch.
_AUDIT_INSERT = (
    f"INSERT INTO audit_events ({', '.join(INSERT_COLUMNS)}) "
    f"SELECT {', '.join('b.' + c for c in INSERT_COLUMNS)} "
    f"FROM unnest({', '.join(f'?::{t}[]' for t in _AUDIT_TYPES)}) "
    f"WITH ORDINALITY AS b({', '.join(INSERT_COLUMNS)}, n) ORDER BY b.n "
    "ON CONFLICT (event_id) DO NOTHING"
)
_AUDIT_TABLES_INSERT = """INSERT INTO audit_event_tables (table_name, time, event_pk)
    SELECT p.table_name, e.time, e.id
    FROM unnest(?::text[], ?::text[]) AS p(event_id, table_name) JOIN audit_events e ON e.event_id = p.event_id
    ON CONFLICT DO NOTHING"""
