"""The SQLite store: the embedded default, one file that several processes may open. The store
itself is proxy.store.sql; this is its SQLite dialect.

One connection per store object, used by one thread at a time (a lock; the proxy calls the store
from worker threads). The file is in WAL mode so readers never block the writer, and every write
is one `BEGIN IMMEDIATE` transaction: it takes the database's write lock before reading
anything, so a compare-and-set cannot be overtaken between its check and its update, also by
another process (hence no row locks: `for_update` is empty). A writer that finds the lock taken
waits up to the busy timeout.

Times are stored as ISO-8601 UTC text with microseconds, always the same width
("2024-05-01T12:00:00.000000+00:00"), so comparing the text compares the times. Lists are JSON
text; a list parameter is compared through json_each (one parameter however long the list).

Audit events (`append_audit`) are written in their own BEGIN IMMEDIATE transaction that does
not bump the revision. Give the audit sink a store object of its own (a second `open_store` on
the same file): its batches then never wait for this object's lock behind a grant poll, and
WAL lets the poll read while a batch is written.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TypeVar

from proxy.store.audit import INSERT_COLUMNS, AuditRow, row_values, table_pairs
from proxy.store.base import StoreError
from proxy.store.common import utc
from proxy.store.migrations import migrate_sqlite
from proxy.store.sql import Mode, SQLStore, Tx

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT_S = 5.0


class SQLiteStore(SQLStore):
    """`Store` on one SQLite file (created if missing; its directory must exist)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        self.path = os.fspath(path)
        super().__init__(SQLiteDialect(self.path, busy_timeout_s))


class SQLiteDialect:
    """proxy.store.sql.Dialect on one SQLite file."""

    # RETURNING needs SQLite 3.35 (2021) and Python may be linked with an older one: a written
    # row is read back by its id instead, in the same transaction.
    returning = False
    for_update = ""  # a write transaction holds the database's write lock from its BEGIN

    def __init__(self, path: str, busy_timeout_s: float) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            # isolation_level=None: no implicit transactions; each method opens its own.
            # timeout: sqlite3's busy timeout, how long to wait for another writer's lock.
            self._conn = sqlite3.connect(
                self.path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open the SQLite store {self.path}: {exc}") from exc
        self._conn.row_factory = sqlite3.Row
        self._tx = Tx(self._conn)
        try:
            with self._guard():
                # Persistent in the file. Switching a fresh file to WAL needs an exclusive lock
                # and SQLite answers "database is locked" at once (no busy handler) while another
                # connection does the same: retry within the busy timeout.
                deadline = time.monotonic() + busy_timeout_s
                while True:
                    try:
                        self._conn.execute("PRAGMA journal_mode=WAL")
                        break
                    except sqlite3.OperationalError as exc:
                        if "locked" not in str(exc) or time.monotonic() > deadline:
                            raise
                        time.sleep(0.01)
                # Durable at each checkpoint rather than each commit: WAL keeps the file consistent.
                self._conn.execute("PRAGMA synchronous=NORMAL")
                self._conn.execute("PRAGMA foreign_keys=ON")
        except StoreError:
            self._conn.close()
            raise

    # -- the connection and its transactions --------------------------------------------------

    def run(self, work: Callable[[Tx], T], mode: Mode) -> T:
        with self._guard():
            if mode is Mode.STATEMENT:
                return work(self._tx)
            # A plain BEGIN reads one snapshot; IMMEDIATE takes the write lock before any read.
            self._conn.execute("BEGIN" if mode is Mode.READ else "BEGIN IMMEDIATE")
            try:
                result = work(self._tx)
                self._conn.execute("COMMIT")
            except BaseException:
                # Some errors (SQLITE_FULL, I/O) have already rolled the transaction back.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            return result

    def migrate(self) -> None:
        with self._guard():
            migrate_sqlite(self._conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Hold the connection; sqlite3 errors become StoreError (our own pass through)."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path}: {exc}") from exc

    # -- values -------------------------------------------------------------------------------

    def put_time(self, moment: datetime) -> str:
        return utc(moment).isoformat(timespec="microseconds")

    def get_time(self, value: str) -> datetime:
        return datetime.fromisoformat(value)

    def put_list(self, values: Iterable[str]) -> str:
        # ensure_ascii=False: names and roles stay readable in the file.
        return json.dumps(list(values), ensure_ascii=False)

    def get_list(self, value: str) -> tuple[str, ...]:
        return tuple(json.loads(value))

    def put_flag(self, value: bool) -> int:
        return int(value)

    def in_list(self, column: str) -> str:
        return f"{column} IN (SELECT value FROM json_each(?))"

    # -- the audit trail ----------------------------------------------------------------------

    def insert_audit(self, tx: Tx, rows: Sequence[AuditRow]) -> None:
        tx.executemany(_AUDIT_INSERT, [row_values(row, self.put_time) for row in rows])
        pairs = table_pairs(rows)
        if pairs:
            # One statement for every table of the batch; an event skipped above as already
            # stored had its tables stored with it, so those skip too.
            tx.execute(_AUDIT_TABLES_INSERT, (json.dumps(pairs),))


_AUDIT_INSERT = (
    f"INSERT INTO audit_events ({', '.join(INSERT_COLUMNS)}) VALUES ({', '.join('?' * len(INSERT_COLUMNS))}) "
    "ON CONFLICT (event_id) DO NOTHING"
)
# "WHERE true": SQLite's parser needs it between an INSERT's SELECT and its ON CONFLICT.
_AUDIT_TABLES_INSERT = """INSERT INTO audit_event_tables (table_name, time, event_pk)
    SELECT json_extract(p.value, '$[1]'), e.time, e.id
    FROM json_each(?) AS p JOIN audit_events e ON e.event_id = json_extract(p.value, '$[0]')
    WHERE true
    ON CONFLICT DO NOTHING"""
