"""The SQLite store: the embedded default, one file that several processes may open.

One connection per store object, used by one thread at a time (a lock; the proxy calls the store
from worker threads). The file is in WAL mode so readers never block the writer, and every write
is one `BEGIN IMMEDIATE` transaction: it takes the database's write lock before reading
anything, so a compare-and-set cannot be overtaken between its check and its update, also by
another process. A writer that finds the lock taken waits up to the busy timeout.

Times are stored as ISO-8601 UTC text with microseconds, always the same width
("2024-05-01T12:00:00.000000+00:00"), so comparing the text compares the times. Lists are JSON
text.

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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, TypeVar

from proxy.store.common import check_decision, new_grant_id, new_request_id, status_by, utc
from proxy.store.audit import INSERT_COLUMNS, audit_rows, chain_sql, parse_body, row_values, search_sql, table_pairs
from proxy.store.base import (
    AUDIT_MAX_LIMIT,
    AccessRequest,
    Approval,
    AuditQuery,
    Conflict,
    Decision,
    NewGrant,
    NewRequest,
    NewSessionPassword,
    NotFound,
    RequestStatus,
    SessionPassword,
    StoredGrant,
    StoreError,
)
from proxy.store.migrations import migrate_sqlite

T = TypeVar("T")

DEFAULT_BUSY_TIMEOUT_S = 5.0


class SQLiteStore:
    """`Store` on one SQLite file (created if missing; its directory must exist)."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = DEFAULT_BUSY_TIMEOUT_S) -> None:
        self.path = os.fspath(path)
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

    # -- Store --------------------------------------------------------------------------------

    def migrate(self) -> None:
        with self._guard():
            migrate_sqlite(self._conn)

    def revision(self) -> int:
        with self._guard():
            row = self._conn.execute("SELECT revision FROM meta").fetchone()
        return int(row[0])

    def add_grant(self, grant: NewGrant, now: datetime) -> StoredGrant:
        return self._write(lambda conn: _insert_grant(conn, grant, now))

    def revoke_grant(self, grant_id: str, by: str, now: datetime, *, reason: str | None = None,
                     released: bool = False) -> StoredGrant:
        def revoke(conn: sqlite3.Connection) -> StoredGrant:
            grant = _select_grant(conn, grant_id)
            if grant is None:
                raise NotFound(f"no grant {grant_id}")
            if grant.revoked_at is not None:
                raise Conflict(f"grant {grant_id} is already {'released' if grant.released else 'revoked'}")
            conn.execute(
                "UPDATE grants SET revoked_at = ?, revoked_by = ?, revoke_reason = ?, released = ? WHERE id = ?",
                (_text(now), by, reason, int(released), grant_id),
            )
            return _require(_select_grant(conn, grant_id))

        return self._write(revoke)

    def get_grant(self, grant_id: str) -> StoredGrant | None:
        return self._read(lambda conn: _select_grant(conn, grant_id))

    def grants(self, *, active_at: datetime | None = None, subject: str | None = None,
               ids: Sequence[str] | None = None) -> list[StoredGrant]:
        conditions: list[str] = []
        args: list[Any] = []
        if active_at is not None:
            conditions.append("revoked_at IS NULL AND expires_at > ?")
            args.append(_text(active_at))
        if subject is not None:
            conditions.append("subject = ?")
            args.append(subject)
        if ids is not None:
            conditions.append("id IN (SELECT value FROM json_each(?))")
            args.append(_json(ids))
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = f"SELECT * FROM grants {where} ORDER BY created_at, seq"
        return self._read(lambda conn: [_grant(row) for row in conn.execute(sql, args)])

    def create_request(self, request: NewRequest, now: datetime) -> AccessRequest:
        def create(conn: sqlite3.Connection) -> AccessRequest:
            request_id = new_request_id()
            conn.execute(
                """INSERT INTO requests (id, requester, db, tables, privileges, duration_s, reason,
                       environment, status, created_at, updated_at, pending_until, instance, ends_at)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    request_id, request.requester, request.db, _json(request.tables),
                    _json(request.privileges), request.duration_s, request.reason,
                    request.environment, RequestStatus.PENDING.value, _text(now), _text(now),
                    _text(request.pending_until), request.instance,
                    _text(request.ends_at) if request.ends_at is not None else None,
                ),
            )
            return _require(_select_request(conn, request_id))

        return self._write(create)

    def get_request(self, request_id: str) -> AccessRequest | None:
        return self._read(lambda conn: _select_request(conn, request_id))

    def requests(
        self, *, status: RequestStatus | None = None, requester: str | None = None, limit: int = 200
    ) -> list[AccessRequest]:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        conditions: list[str] = []
        args: list[Any] = []
        if status is not None:
            conditions.append("status = ?")
            args.append(RequestStatus(status).value)
        if requester is not None:
            conditions.append("requester = ?")
            args.append(requester)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
        sql = f"SELECT * FROM requests {where} ORDER BY created_at DESC, seq DESC LIMIT ?"
        return self._read(lambda conn: _with_approvals(conn, list(conn.execute(sql, [*args, limit]))))

    def record_decision(
        self, request_id: str, decision: Decision, now: datetime, *, expected: RequestStatus = RequestStatus.PENDING
    ) -> AccessRequest:
        check_decision(decision)

        def decide(conn: sqlite3.Connection) -> AccessRequest:
            row = conn.execute(
                "SELECT status, grant_ids FROM requests WHERE id = ?", (request_id,)
            ).fetchone()
            if row is None:
                raise NotFound(f"no request {request_id}")
            if row["status"] != RequestStatus(expected).value:
                raise Conflict(f"request {request_id} is {row['status']}, not {RequestStatus(expected).value}")
            if decision.approval is not None:
                _insert_approval(conn, request_id, decision.approval)
            conn.execute("UPDATE requests SET updated_at = ? WHERE id = ?", (_text(now), request_id))
            if decision.new_status is not None:
                created = [_insert_grant(conn, grant, now).id for grant in decision.grants]
                conn.execute(
                    """UPDATE requests SET status = ?, status_by = ?, grant_ids = ?,
                           access_until = COALESCE(?, access_until)
                       WHERE id = ?""",
                    (
                        RequestStatus(decision.new_status).value, status_by(decision),
                        _json([*json.loads(row["grant_ids"]), *created]),
                        _text(decision.access_until) if decision.access_until is not None else None,
                        request_id,
                    ),
                )
            return _require(_select_request(conn, request_id))

        return self._write(decide)

    def append_audit(self, events: Sequence[Mapping[str, Any]]) -> None:
        rows = audit_rows(events)
        if not rows:
            return
        pairs = table_pairs(rows)

        def append(conn: sqlite3.Connection) -> None:
            conn.executemany(_AUDIT_INSERT, [row_values(row, _text) for row in rows])
            if pairs:
                # One statement for every table of the batch; an event skipped above as already
                # stored had its tables stored with it, so those skip too.
                conn.execute(_AUDIT_TABLES_INSERT, (json.dumps(pairs),))

        # Not _write: audit events change no grant, so the revision stays.
        self._transaction("BEGIN IMMEDIATE", append, bump=False)

    def search_audit(self, query: AuditQuery) -> list[dict[str, Any]]:
        sql, args = search_sql(query, "?", _text)
        return self._read(lambda conn: [parse_body(row[0]) for row in conn.execute(sql, args)])

    def audit_chain(self, proxy_instance: str, after_seq: int = 0, limit: int = AUDIT_MAX_LIMIT) -> list[dict[str, Any]]:
        sql, args = chain_sql(proxy_instance, after_seq, limit, "?")
        return self._read(lambda conn: [parse_body(row[0]) for row in conn.execute(sql, args)])

    # -- session passwords (hashes only; proxy.identity.session_passwords) ---------------------

    def add_session_password(self, password: NewSessionPassword, now: datetime) -> SessionPassword:
        def add(conn: sqlite3.Connection) -> SessionPassword:
            conn.execute(
                """INSERT INTO session_passwords (id, secret_hash, person, groups, instance, client_address,
                       token_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (password.id, password.secret_hash, password.person, _json(password.groups), password.instance,
                 password.client_address, password.token_id, _text(now), _text(password.expires_at)),
            )
            return _require(_select_session_password(conn, "id", password.id))

        return self._write(add)

    def session_password_by_hash(self, secret_hash: str) -> SessionPassword | None:
        return self._read(lambda conn: _select_session_password(conn, "secret_hash", secret_hash))

    def session_passwords(self, person: str, *, active_at: datetime | None = None) -> list[SessionPassword]:
        sql = "SELECT * FROM session_passwords WHERE person = ?"
        args: list[Any] = [person]
        if active_at is not None:
            sql += " AND revoked_at IS NULL AND expires_at > ?"
            args.append(_text(active_at))
        return self._read(lambda conn: [_session_password(r) for r in conn.execute(sql + " ORDER BY seq", args)])

    def revoke_session_passwords(self, person: str, by: str, now: datetime, *,
                                 password_id: str | None = None) -> list[SessionPassword]:
        def revoke(conn: sqlite3.Connection) -> list[SessionPassword]:
            sql = "SELECT id FROM session_passwords WHERE person = ? AND revoked_at IS NULL AND expires_at > ?"
            args: list[Any] = [person, _text(now)]
            if password_id is not None:
                sql += " AND id = ?"
                args.append(password_id)
            ids = [row[0] for row in conn.execute(sql, args)]
            for pid in ids:
                conn.execute("UPDATE session_passwords SET revoked_at = ?, revoked_by = ? WHERE id = ?",
                             (_text(now), by, pid))
            return [_require(_select_session_password(conn, "id", pid)) for pid in ids]

        return self._write(revoke)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # -- transactions -------------------------------------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Hold the connection; sqlite3 errors become StoreError (our own pass through)."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                raise StoreError(f"SQLite store {self.path}: {exc}") from exc

    def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` and a revision bump in one transaction that holds the write lock throughout."""
        return self._transaction("BEGIN IMMEDIATE", work, bump=True)

    def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work` in a read transaction: its several SELECTs see one snapshot."""
        return self._transaction("BEGIN", work, bump=False)

    def _transaction(self, begin: str, work: Callable[[sqlite3.Connection], T], *, bump: bool) -> T:
        with self._guard():
            self._conn.execute(begin)
            try:
                result = work(self._conn)
                if bump:
                    self._conn.execute("UPDATE meta SET revision = revision + 1")
                self._conn.execute("COMMIT")
            except BaseException:
                # Some errors (SQLITE_FULL, I/O) have already rolled the transaction back.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            return result


# -- rows -------------------------------------------------------------------------------------

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



def _insert_grant(conn: sqlite3.Connection, grant: NewGrant, now: datetime) -> StoredGrant:
    grant_id = new_grant_id()
    conn.execute(
        """INSERT INTO grants (id, subject, db, table_name, privileges, expires_at, created_at,
               created_by, reason, request_id, instance, break_glass)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (
            grant_id, grant.subject, grant.db, grant.table, _json(grant.privileges),
            _text(grant.expires_at), _text(now), grant.created_by, grant.reason, grant.request_id,
            grant.instance, int(grant.break_glass),
        ),
    )
    return _require(_select_grant(conn, grant_id))


def _insert_approval(conn: sqlite3.Connection, request_id: str, approval: Approval) -> None:
    conn.execute(
        """INSERT INTO approvals (request_id, position, approver, roles, decision, comment, at)
           SELECT ?, COALESCE(MAX(position), 0) + 1, ?, ?, ?, ?, ? FROM approvals WHERE request_id = ?""",
        (
            request_id, approval.approver, _json(approval.roles), approval.decision,
            approval.comment, _text(approval.at), request_id,
        ),
    )


def _select_grant(conn: sqlite3.Connection, grant_id: str) -> StoredGrant | None:
    row = conn.execute("SELECT * FROM grants WHERE id = ?", (grant_id,)).fetchone()
    return _grant(row) if row is not None else None


def _select_request(conn: sqlite3.Connection, request_id: str) -> AccessRequest | None:
    rows = list(conn.execute("SELECT * FROM requests WHERE id = ?", (request_id,)))
    found = _with_approvals(conn, rows)
    return found[0] if found else None


def _with_approvals(conn: sqlite3.Connection, rows: Sequence[sqlite3.Row]) -> list[AccessRequest]:
    """The requests of `rows` with their approvals, read in one query."""
    ids = [row["id"] for row in rows]
    approvals: dict[str, list[Approval]] = {request_id: [] for request_id in ids}
    if ids:
        # json_each: one bound parameter for any number of ids (no variable-count placeholders).
        for row in conn.execute(
            """SELECT * FROM approvals
               WHERE request_id IN (SELECT value FROM json_each(?))
               ORDER BY request_id, position""",
            (_json(ids),),
        ):
            approvals[row["request_id"]].append(_approval(row))
    return [_request(row, approvals[row["id"]]) for row in rows]


def _grant(row: sqlite3.Row) -> StoredGrant:
    return StoredGrant(
        id=row["id"],
        subject=row["subject"],
        db=row["db"],
        table=row["table_name"],
        privileges=tuple(json.loads(row["privileges"])),
        expires_at=_time(row["expires_at"]),
        created_at=_time(row["created_at"]),
        created_by=row["created_by"],
        reason=row["reason"],
        request_id=row["request_id"],
        revoked_at=_optional_time(row["revoked_at"]),
        revoked_by=row["revoked_by"],
        instance=row["instance"],
        revoke_reason=row["revoke_reason"],
        released=bool(row["released"]),
        break_glass=bool(row["break_glass"]),
    )


def _request(row: sqlite3.Row, approvals: Sequence[Approval]) -> AccessRequest:
    return AccessRequest(
        id=row["id"],
        requester=row["requester"],
        db=row["db"],
        tables=tuple(json.loads(row["tables"])),
        privileges=tuple(json.loads(row["privileges"])),
        duration_s=row["duration_s"],
        reason=row["reason"],
        environment=row["environment"],
        status=RequestStatus(row["status"]),
        created_at=_time(row["created_at"]),
        updated_at=_time(row["updated_at"]),
        pending_until=_time(row["pending_until"]),
        access_until=_optional_time(row["access_until"]),
        approvals=tuple(approvals),
        grant_ids=tuple(json.loads(row["grant_ids"])),
        status_by=row["status_by"],
        instance=row["instance"],
        ends_at=_optional_time(row["ends_at"]),
    )


def _approval(row: sqlite3.Row) -> Approval:
    return Approval(
        approver=row["approver"],
        roles=tuple(json.loads(row["roles"])),
        decision=row["decision"],
        comment=row["comment"],
        at=_time(row["at"]),
    )


def _require(found: T | None) -> T:
    """A row this transaction just wrote; its absence is a bug, not a caller error."""
    if found is None:
        raise StoreError("a row written in this transaction is missing")
    return found


# -- values -----------------------------------------------------------------------------------


def _text(moment: datetime) -> str:
    return utc(moment).isoformat(timespec="microseconds")


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _optional_time(text: str | None) -> datetime | None:
    return _time(text) if text is not None else None


def _json(values: Sequence[str]) -> str:
    # ensure_ascii=False: names and roles stay readable in the file.
    return json.dumps(list(values), ensure_ascii=False)


def _select_session_password(conn: sqlite3.Connection, column: str, value: str) -> SessionPassword | None:
    assert column in ("id", "secret_hash")
    row = conn.execute(f"SELECT * FROM session_passwords WHERE {column} = ?", (value,)).fetchone()
    return _session_password(row) if row is not None else None


def _session_password(row: sqlite3.Row) -> SessionPassword:
    return SessionPassword(
        id=row["id"], secret_hash=row["secret_hash"], person=row["person"], groups=tuple(json.loads(row["groups"])),
        instance=row["instance"], client_address=row["client_address"], token_id=row["token_id"],
        expires_at=_time(row["expires_at"]), created_at=_time(row["created_at"]),
        revoked_at=_optional_time(row["revoked_at"]), revoked_by=row["revoked_by"],
    )
