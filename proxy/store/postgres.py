"""The PostgreSQL store, for several proxy replicas sharing one state (psycopg 3, synchronous).

One connection per store object, used by one thread at a time (a lock), in autocommit mode with
an explicit transaction per method. Writes run at READ COMMITTED and end by bumping the
revision row, which serialises writers briefly but means a replica polling `revision()` sees
every committed change. The compare-and-set in `record_decision` locks the request row
(`SELECT ... FOR UPDATE`): a concurrent decider waits, then re-reads the committed status and
gets Conflict. Reads that take several queries run at REPEATABLE READ, so a request and its
approvals come from one snapshot.

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
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
import structlog
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import DictRow, dict_row

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
from proxy.store.migrations import migrate_postgres

T = TypeVar("T")
Connection = psycopg.Connection[DictRow]
Cursor = psycopg.Cursor[DictRow]

log = structlog.get_logger("jitproxy.store")

DEFAULT_CONNECT_TIMEOUT_S = 10


class PostgresStore:
    """`Store` on a PostgreSQL database reached through a libpq DSN or URL."""

    def __init__(self, dsn: str, *, connect_timeout_s: int = DEFAULT_CONNECT_TIMEOUT_S) -> None:
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

    # -- Store --------------------------------------------------------------------------------

    def migrate(self) -> None:
        self._run(migrate_postgres)

    def revision(self) -> int:
        # One statement, no transaction around it: this is what every replica polls.
        def select(conn: Connection) -> int:
            with conn.cursor() as cursor:
                return int(_one(cursor, "SELECT revision FROM meta")["revision"])

        return self._run(select)

    def add_grant(self, grant: NewGrant, now: datetime) -> StoredGrant:
        return self._write(lambda cursor: _insert_grant(cursor, grant, now))

    def revoke_grant(self, grant_id: str, by: str, now: datetime, *, reason: str | None = None,
                     released: bool = False) -> StoredGrant:
        def revoke(cursor: Cursor) -> StoredGrant:
            cursor.execute("SELECT revoked_at, released FROM grants WHERE id = %s FOR UPDATE", (grant_id,))
            row = cursor.fetchone()
            if row is None:
                raise NotFound(f"no grant {grant_id}")
            if row["revoked_at"] is not None:
                raise Conflict(f"grant {grant_id} is already {'released' if row['released'] else 'revoked'}")
            return _grant(_one(
                cursor,
                """UPDATE grants SET revoked_at = %s, revoked_by = %s, revoke_reason = %s, released = %s
                   WHERE id = %s RETURNING *""",
                (utc(now), by, reason, released, grant_id),
            ))

        return self._write(revoke)

    def get_grant(self, grant_id: str) -> StoredGrant | None:
        def get(cursor: Cursor) -> StoredGrant | None:
            cursor.execute("SELECT * FROM grants WHERE id = %s", (grant_id,))
            row = cursor.fetchone()
            return _grant(row) if row is not None else None

        return self._read(get)

    def grants(self, *, active_at: datetime | None = None, subject: str | None = None,
               ids: Sequence[str] | None = None) -> list[StoredGrant]:
        conditions: list[str] = []
        args: list[Any] = []
        if active_at is not None:
            conditions.append("revoked_at IS NULL AND expires_at > %s")
            args.append(utc(active_at))
        if subject is not None:
            conditions.append("subject = %s")
            args.append(subject)
        if ids is not None:
            conditions.append("id = ANY(%s::text[])")
            args.append(list(ids))
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""

        def select(cursor: Cursor) -> list[StoredGrant]:
            cursor.execute(f"SELECT * FROM grants {where} ORDER BY created_at, seq", args)
            return [_grant(row) for row in cursor.fetchall()]

        return self._read(select)

    def create_request(self, request: NewRequest, now: datetime) -> AccessRequest:
        def create(cursor: Cursor) -> AccessRequest:
            row = _one(
                cursor,
                """INSERT INTO requests (id, requester, db, tables, privileges, duration_s, reason,
                       environment, status, created_at, updated_at, pending_until, instance, ends_at)
                   VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
                   RETURNING *""",
                (
                    new_request_id(), request.requester, request.db, list(request.tables),
                    list(request.privileges), request.duration_s, request.reason,
                    request.environment, RequestStatus.PENDING.value, utc(now), utc(now),
                    utc(request.pending_until), request.instance,
                    utc(request.ends_at) if request.ends_at is not None else None,
                ),
            )
            return _request(row, ())

        return self._write(create)

    def get_request(self, request_id: str) -> AccessRequest | None:
        return self._read(lambda cursor: _select_request(cursor, request_id))

    def requests(
        self, *, status: RequestStatus | None = None, requester: str | None = None, limit: int = 200
    ) -> list[AccessRequest]:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        conditions: list[str] = []
        args: list[Any] = []
        if status is not None:
            conditions.append("status = %s")
            args.append(RequestStatus(status).value)
        if requester is not None:
            conditions.append("requester = %s")
            args.append(requester)
        where = f"WHERE {' AND '.join(conditions)}" if conditions else ""

        def select(cursor: Cursor) -> list[AccessRequest]:
            cursor.execute(
                f"SELECT * FROM requests {where} ORDER BY created_at DESC, seq DESC LIMIT %s",
                [*args, limit],
            )
            return _with_approvals(cursor, cursor.fetchall())

        return self._read(select)

    def record_decision(
        self, request_id: str, decision: Decision, now: datetime, *, expected: RequestStatus = RequestStatus.PENDING
    ) -> AccessRequest:
        check_decision(decision)

        def decide(cursor: Cursor) -> AccessRequest:
            # The row lock makes check-then-update atomic: a concurrent decider blocks here and,
            # once we commit, reads the status we wrote.
            cursor.execute("SELECT status FROM requests WHERE id = %s FOR UPDATE", (request_id,))
            row = cursor.fetchone()
            if row is None:
                raise NotFound(f"no request {request_id}")
            if row["status"] != RequestStatus(expected).value:
                raise Conflict(f"request {request_id} is {row['status']}, not {RequestStatus(expected).value}")
            if decision.approval is not None:
                _insert_approval(cursor, request_id, decision.approval)
            cursor.execute("UPDATE requests SET updated_at = %s WHERE id = %s", (utc(now), request_id))
            if decision.new_status is not None:
                created = [_insert_grant(cursor, grant, now).id for grant in decision.grants]
                cursor.execute(
                    """UPDATE requests SET status = %s, status_by = %s,
                           grant_ids = grant_ids || %s::text[],
                           access_until = COALESCE(%s, access_until)
                       WHERE id = %s""",
                    (
                        RequestStatus(decision.new_status).value, status_by(decision), created,
                        utc(decision.access_until) if decision.access_until is not None else None,
                        request_id,
                    ),
                )
            found = _select_request(cursor, request_id)
            if found is None:
                raise StoreError(f"request {request_id} vanished inside its own transaction")
            return found

        return self._write(decide)

    def append_audit(self, events: Sequence[Mapping[str, Any]]) -> None:
        rows = audit_rows(events)
        if not rows:
            return
        columns = [list(values) for values in zip(*(row_values(row, utc) for row in rows), strict=True)]
        pairs = table_pairs(rows)

        def append(conn: Connection) -> None:
            # No revision bump (audit changes no grant), and no "lost during COMMIT" guard:
            # replaying the batch on a new connection stores nothing twice.
            with conn.transaction(), conn.cursor() as cursor:
                cursor.execute(_AUDIT_INSERT, columns)
                if pairs:
                    cursor.execute(_AUDIT_TABLES_INSERT, ([p[0] for p in pairs], [p[1] for p in pairs]))

        self._run(append)

    def search_audit(self, query: AuditQuery) -> list[dict[str, Any]]:
        sql, args = search_sql(query, "%s", utc)

        def select(cursor: Cursor) -> list[dict[str, Any]]:
            cursor.execute(sql, args)
            return [parse_body(row["body"]) for row in cursor.fetchall()]

        return self._read(select)

    def audit_chain(self, proxy_instance: str, after_seq: int = 0, limit: int = AUDIT_MAX_LIMIT) -> list[dict[str, Any]]:
        sql, args = chain_sql(proxy_instance, after_seq, limit, "%s")

        def select(cursor: Cursor) -> list[dict[str, Any]]:
            cursor.execute(sql, args)
            return [parse_body(row["body"]) for row in cursor.fetchall()]

        return self._read(select)

    # -- session passwords (hashes only; proxy.identity.session_passwords) ---------------------

    def add_session_password(self, password: NewSessionPassword, now: datetime) -> SessionPassword:
        def add(cursor: Cursor) -> SessionPassword:
            cursor.execute(
                """INSERT INTO session_passwords (id, secret_hash, person, groups, instance, client_address,
                       token_id, created_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)
                   RETURNING *""",
                (password.id, password.secret_hash, password.person, list(password.groups), password.instance,
                 password.client_address, password.token_id, utc(now), utc(password.expires_at)),
            )
            row = cursor.fetchone()
            assert row is not None  # INSERT ... RETURNING returns the row
            return _session_password(row)

        return self._write(add)

    def session_password_by_hash(self, secret_hash: str) -> SessionPassword | None:
        def get(cursor: Cursor) -> SessionPassword | None:
            cursor.execute("SELECT * FROM session_passwords WHERE secret_hash = %s", (secret_hash,))
            row = cursor.fetchone()
            return _session_password(row) if row is not None else None

        return self._read(get)

    def session_passwords(self, person: str, *, active_at: datetime | None = None) -> list[SessionPassword]:
        sql = "SELECT * FROM session_passwords WHERE person = %s"
        args: list[Any] = [person]
        if active_at is not None:
            sql += " AND revoked_at IS NULL AND expires_at > %s"
            args.append(utc(active_at))

        def select(cursor: Cursor) -> list[SessionPassword]:
            cursor.execute(sql + " ORDER BY seq", args)
            return [_session_password(r) for r in cursor.fetchall()]

        return self._read(select)

    def revoke_session_passwords(self, person: str, by: str, now: datetime, *,
                                 password_id: str | None = None) -> list[SessionPassword]:
        sql = """UPDATE session_passwords SET revoked_at = %s, revoked_by = %s
                 WHERE person = %s AND revoked_at IS NULL AND expires_at > %s"""
        args: list[Any] = [utc(now), by, person, utc(now)]
        if password_id is not None:
            sql += " AND id = %s"
            args.append(password_id)

        def revoke(cursor: Cursor) -> list[SessionPassword]:
            cursor.execute(sql + " RETURNING *", args)
            return [_session_password(r) for r in cursor.fetchall()]

        return self._write(revoke)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._discard()

    # -- transactions and the connection ------------------------------------------------------

    def _write(self, work: Callable[[Cursor], T]) -> T:
        """`work` and a revision bump in one READ COMMITTED transaction."""

        def transaction(conn: Connection) -> T:
            committing = False
            try:
                with conn.transaction(), conn.cursor() as cursor:
                    result = work(cursor)
                    cursor.execute("UPDATE meta SET revision = revision + 1")
                    committing = True  # all that is left is the COMMIT on leaving the block
            except psycopg.OperationalError as exc:
                if committing:
                    # Not retried: the write may have been applied (and must not happen twice).
                    raise self._error(
                        exc, "connection lost during COMMIT; the write may or may not have been applied"
                    ) from None
                raise
            return result

        return self._run(transaction)

    def _read(self, work: Callable[[Cursor], T]) -> T:
        """`work` in a read-only REPEATABLE READ transaction: one snapshot for all its queries."""

        def transaction(conn: Connection) -> T:
            with conn.transaction(), conn.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return work(cursor)

        return self._run(transaction)

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


# -- rows -------------------------------------------------------------------------------------

_AUDIT_TYPES = ("text", "timestamptz", "text", "text", "text", "text", "text", "text", "text", "bigint", "text")
# One array per column, unnested in the batch's order (ORDINALITY: ids follow it). DO NOTHING
# also skips a duplicate event_id inside the batch.
_AUDIT_INSERT = (
    f"INSERT INTO audit_events ({', '.join(INSERT_COLUMNS)}) "
    f"SELECT {', '.join('b.' + c for c in INSERT_COLUMNS)} "
    f"FROM unnest({', '.join(f'%s::{t}[]' for t in _AUDIT_TYPES)}) "
    f"WITH ORDINALITY AS b({', '.join(INSERT_COLUMNS)}, n) ORDER BY b.n "
    "ON CONFLICT (event_id) DO NOTHING"
)
_AUDIT_TABLES_INSERT = """INSERT INTO audit_event_tables (table_name, time, event_pk)
    SELECT p.table_name, e.time, e.id
    FROM unnest(%s::text[], %s::text[]) AS p(event_id, table_name) JOIN audit_events e ON e.event_id = p.event_id
    ON CONFLICT DO NOTHING"""



def _one(cursor: Cursor, sql: str, args: Sequence[Any] = ()) -> DictRow:
    cursor.execute(sql, args)
    row = cursor.fetchone()
    if row is None:
        raise StoreError(f"no row from: {sql.split()[0]}")
    return row


def _insert_grant(cursor: Cursor, grant: NewGrant, now: datetime) -> StoredGrant:
    return _grant(_one(
        cursor,
        """INSERT INTO grants (id, subject, db, table_name, privileges, expires_at, created_at,
               created_by, reason, request_id, instance, break_glass)
           VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
           RETURNING *""",
        (
            new_grant_id(), grant.subject, grant.db, grant.table, list(grant.privileges),
            utc(grant.expires_at), utc(now), grant.created_by, grant.reason, grant.request_id,
            grant.instance, grant.break_glass,
        ),
    ))


def _insert_approval(cursor: Cursor, request_id: str, approval: Approval) -> None:
    # The caller holds the request's row lock, so MAX(position) + 1 cannot race.
    cursor.execute(
        """INSERT INTO approvals (request_id, position, approver, roles, decision, comment, at)
           VALUES (%s, (SELECT COALESCE(MAX(position), 0) + 1 FROM approvals WHERE request_id = %s),
                   %s, %s::text[], %s, %s, %s)""",
        (
            request_id, request_id, approval.approver, list(approval.roles), approval.decision,
            approval.comment, utc(approval.at),
        ),
    )


def _select_request(cursor: Cursor, request_id: str) -> AccessRequest | None:
    cursor.execute("SELECT * FROM requests WHERE id = %s", (request_id,))
    found = _with_approvals(cursor, cursor.fetchall())
    return found[0] if found else None


def _with_approvals(cursor: Cursor, rows: Sequence[DictRow]) -> list[AccessRequest]:
    """The requests of `rows` with their approvals, read in one query."""
    approvals: dict[str, list[Approval]] = {row["id"]: [] for row in rows}
    if approvals:
        cursor.execute(
            "SELECT * FROM approvals WHERE request_id = ANY(%s) ORDER BY request_id, position",
            (list(approvals),),
        )
        for row in cursor.fetchall():
            approvals[row["request_id"]].append(_approval(row))
    return [_request(row, approvals[row["id"]]) for row in rows]


def _grant(row: DictRow) -> StoredGrant:
    return StoredGrant(
        id=row["id"],
        subject=row["subject"],
        db=row["db"],
        table=row["table_name"],
        privileges=tuple(row["privileges"]),
        expires_at=_time(row["expires_at"]),
        created_at=_time(row["created_at"]),
        created_by=row["created_by"],
        reason=row["reason"],
        request_id=row["request_id"],
        revoked_at=_optional_time(row["revoked_at"]),
        revoked_by=row["revoked_by"],
        instance=row["instance"],
        revoke_reason=row["revoke_reason"],
        released=row["released"],
        break_glass=row["break_glass"],
    )


def _request(row: DictRow, approvals: Sequence[Approval]) -> AccessRequest:
    return AccessRequest(
        id=row["id"],
        requester=row["requester"],
        db=row["db"],
        tables=tuple(row["tables"]),
        privileges=tuple(row["privileges"]),
        duration_s=row["duration_s"],
        reason=row["reason"],
        environment=row["environment"],
        status=RequestStatus(row["status"]),
        created_at=_time(row["created_at"]),
        updated_at=_time(row["updated_at"]),
        pending_until=_time(row["pending_until"]),
        access_until=_optional_time(row["access_until"]),
        approvals=tuple(approvals),
        grant_ids=tuple(row["grant_ids"]),
        status_by=row["status_by"],
        instance=row["instance"],
        ends_at=_optional_time(row["ends_at"]),
    )


def _approval(row: DictRow) -> Approval:
    return Approval(
        approver=row["approver"],
        roles=tuple(row["roles"]),
        decision=row["decision"],
        comment=row["comment"],
        at=_time(row["at"]),
    )


def _time(moment: datetime) -> datetime:
    # psycopg returns timestamptz in the session's TimeZone; the interface speaks UTC.
    return moment.astimezone(UTC)


def _optional_time(moment: datetime | None) -> datetime | None:
    return _time(moment) if moment is not None else None


def _session_password(row: DictRow) -> SessionPassword:
    return SessionPassword(
        id=row["id"], secret_hash=row["secret_hash"], person=row["person"], groups=tuple(row["groups"]),
        instance=row["instance"], client_address=row["client_address"], token_id=row["token_id"],
        expires_at=_time(row["expires_at"]), created_at=_time(row["created_at"]),
        revoked_at=_optional_time(row["revoked_at"]), revoked_by=row["revoked_by"],
    )
