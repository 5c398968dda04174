"""The state store, written once over a SQL dialect: `SQLStore` implements `Store`
(proxy.store.base) on a `Dialect`, of which there are two, SQLite (proxy.store.sqlite) and
PostgreSQL (proxy.store.postgres).

Everything the interface promises is decided here, once: the SQL of every query (written with
`?` placeholders), which rows a method reads and writes, the compare-and-set checks (Conflict,
NotFound), the revision bump, and how rows become StoredGrants and AccessRequests. A dialect
supplies only what the two databases do differently:

- the connection and its transactions (`run`, one per method, in one of the `Mode`s), and the
  driver's errors turned into StoreError;
- the placeholder (its `Tx` translates `?`);
- how a time, a list and a flag are stored (SQLite: ISO-8601 text, JSON text, 0/1; PostgreSQL:
  timestamptz, text[], boolean) and how a column is compared with a list parameter;
- RETURNING (PostgreSQL gets the row a statement writes in the same round trip; SQLite reads
  it back by id, as SQLite before 3.35 must) and the row lock of a compare-and-set;
- the audit batch insert (PostgreSQL: columns as arrays, one round trip; SQLite: executemany)
  and the schema migrations (proxy.store.migrations).

Race-freeness, with several replicas on one PostgreSQL: every check-then-write is one WRITE
transaction whose first statement reads the rows it checks with the dialect's `for_update`
suffix. PostgreSQL (READ COMMITTED) makes a concurrent writer of those rows wait, then re-read
the committed state and lose with Conflict; SQLite's write transactions hold the database's
write lock from their BEGIN, so none can be overtaken between its check and its update.
(tests/store/test_concurrency.py races them on both.)

A thin hand-written layer rather than SQLAlchemy Core: the SQL is short and fixed, the
differences are a handful of values and small methods, and what matters most here is the
connection handling (the exact transactions, the retry on a broken PostgreSQL connection but
never after a lost COMMIT, errors that never echo the DSN's password): a toolkit would add a
layer of its own between that and the driver, and a dependency, for no query we need.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from proxy.store.audit import AuditRow, audit_rows, chain_sql, parse_body, search_sql
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
from proxy.store.common import check_decision, new_grant_id, new_request_id, status_by, where

T = TypeVar("T")


class Mode(enum.Enum):
    """What kind of transaction `Dialect.run` gives a piece of work."""

    STATEMENT = "statement"  # one statement on its own, no transaction around it (the revision poll)
    READ = "read"  # read only; its several SELECTs see one snapshot
    WRITE = "write"  # a write; one whose COMMIT went unanswered is not retried (it may have been applied)
    APPEND = "append"  # an idempotent write (audit batches): retried even when its COMMIT went unanswered


class Row(Protocol):
    """A result row, read by column name (sqlite3.Row, psycopg's dict rows)."""

    def __getitem__(self, column: str, /) -> Any: ...


class Tx:
    """The statements of one `Dialect.run`, written with `?` placeholders."""

    def __init__(self, target: Any, placeholder: str = "?") -> None:
        # A sqlite3.Connection or a psycopg Cursor: both answer execute() with a cursor.
        self._target = target
        self._placeholder = placeholder

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._target.execute(self._sql(sql), args)

    def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        self._target.executemany(self._sql(sql), args)

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        return list(self.execute(sql, args).fetchall())

    def row(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        found: Row | None = self.execute(sql, args).fetchone()
        return found

    def _sql(self, sql: str) -> str:
        # No SQL of the store has a "?" of its own (in a literal, or an operator like jsonb's),
        # nor a "%" (psycopg would take it for the start of a placeholder).
        return sql if self._placeholder == "?" else sql.replace("?", self._placeholder)


class Dialect(Protocol):
    """A database as `SQLStore` uses it (proxy.store.sqlite.SQLiteDialect, ...postgres.PostgresDialect)."""

    returning: bool  # INSERT/UPDATE ... RETURNING * answers the row written
    for_update: str  # after the SELECT of a compare-and-set: locks the rows read until the end

    def run(self, work: Callable[[Tx], T], mode: Mode) -> T:
        """`work` in a transaction of `mode` on the connection, which no other thread uses
        meanwhile. The driver's errors become StoreError; ours (Conflict, NotFound, ValueError)
        pass through, and roll the transaction back."""
        ...

    def migrate(self) -> None: ...

    def close(self) -> None: ...

    def put_time(self, moment: datetime) -> Any:
        """The parameter for `moment` (aware; ValueError for a naive one)."""
        ...

    def get_time(self, value: Any) -> datetime:
        """The aware UTC datetime a time column holds."""
        ...

    def put_list(self, values: Iterable[str]) -> Any: ...

    def get_list(self, value: Any) -> tuple[str, ...]: ...

    def put_flag(self, value: bool) -> Any: ...

    def in_list(self, column: str) -> str:
        """The condition "`column` is one of the list parameter (put_list)" with its one `?`."""
        ...

    def insert_audit(self, tx: Tx, rows: Sequence[AuditRow]) -> None:
        """Insert the events of `rows` and their tables, skipping events already stored."""
        ...


class SQLStore:
    """`Store` on a dialect's database (SQLiteStore and PostgresStore are this on theirs)."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect

    # -- Store --------------------------------------------------------------------------------

    def migrate(self) -> None:
        self._dialect.migrate()

    def revision(self) -> int:
        # One statement, no transaction around it: this is what every replica polls.
        row = self._dialect.run(lambda tx: tx.row("SELECT revision FROM meta"), Mode.STATEMENT)
        return int(_require(row, "the meta row")["revision"])

    def add_grant(self, grant: NewGrant, now: datetime) -> StoredGrant:
        return self._write(lambda tx: self._insert_grant(tx, grant, now))

    def revoke_grant(self, grant_id: str, by: str, now: datetime, *, reason: str | None = None,
                     released: bool = False) -> StoredGrant:
        d = self._dialect

        def revoke(tx: Tx) -> StoredGrant:
            row = tx.row(f"SELECT revoked_at, released FROM grants WHERE id = ?{d.for_update}", (grant_id,))
            if row is None:
                raise NotFound(f"no grant {grant_id}")
            if row["revoked_at"] is not None:
                raise Conflict(f"grant {grant_id} is already {'released' if row['released'] else 'revoked'}")
            return self._grant(self._written(
                tx, "grants", grant_id,
                "UPDATE grants SET revoked_at = ?, revoked_by = ?, revoke_reason = ?, released = ? WHERE id = ?",
                (d.put_time(now), by, reason, d.put_flag(released), grant_id),
            ))

        return self._write(revoke)

    def get_grant(self, grant_id: str) -> StoredGrant | None:
        return self._read(lambda tx: self._select_grant(tx, grant_id))

    def grants(self, *, active_at: datetime | None = None, subject: str | None = None,
               ids: Sequence[str] | None = None) -> list[StoredGrant]:
        conditions: list[str] = []
        args: list[Any] = []
        if active_at is not None:
            conditions.append("revoked_at IS NULL AND expires_at > ?")
            args.append(self._dialect.put_time(active_at))
        if subject is not None:
            conditions.append("subject = ?")
            args.append(subject)
        if ids is not None:
            conditions.append(self._dialect.in_list("id"))
            args.append(self._dialect.put_list(ids))
        sql = f"SELECT * FROM grants {where(conditions)} ORDER BY created_at, seq"
        return self._read(lambda tx: [self._grant(row) for row in tx.rows(sql, args)])

    def create_request(self, request: NewRequest, now: datetime) -> AccessRequest:
        d = self._dialect

        def create(tx: Tx) -> AccessRequest:
            request_id = new_request_id()
            row = self._written(
                tx, "requests", request_id,
                """INSERT INTO requests (id, requester, db, tables, privileges, duration_s, reason,
                       environment, status, created_at, updated_at, pending_until, instance, ends_at, break_glass)
                   VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (
                    request_id, request.requester, request.db, d.put_list(request.tables),
                    d.put_list(request.privileges), request.duration_s, request.reason,
                    request.environment, RequestStatus.PENDING.value, d.put_time(now), d.put_time(now),
                    d.put_time(request.pending_until), request.instance, self._put_optional_time(request.ends_at),
                    d.put_flag(request.break_glass),
                ),
            )
            return self._request(row, ())  # a new request has no approvals yet

        return self._write(create)

    def get_request(self, request_id: str) -> AccessRequest | None:
        return self._read(lambda tx: self._select_request(tx, request_id))

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
        sql = f"SELECT * FROM requests {where(conditions)} ORDER BY created_at DESC, seq DESC LIMIT ?"
        return self._read(lambda tx: self._with_approvals(tx, tx.rows(sql, [*args, limit])))

    def record_decision(
        self, request_id: str, decision: Decision, now: datetime, *, expected: RequestStatus = RequestStatus.PENDING
    ) -> AccessRequest:
        check_decision(decision)
        d = self._dialect

        def decide(tx: Tx) -> AccessRequest:
            # The lock makes check-then-update atomic: a concurrent decider waits here and, once
            # we commit, reads the status (and grant_ids) we wrote.
            row = tx.row(f"SELECT status, grant_ids FROM requests WHERE id = ?{d.for_update}", (request_id,))
            if row is None:
                raise NotFound(f"no request {request_id}")
            if row["status"] != RequestStatus(expected).value:
                raise Conflict(f"request {request_id} is {row['status']}, not {RequestStatus(expected).value}")
            if decision.approval is not None:
                self._insert_approval(tx, request_id, decision.approval)
            tx.execute("UPDATE requests SET updated_at = ? WHERE id = ?", (d.put_time(now), request_id))
            if decision.new_status is not None:
                created = [self._insert_grant(tx, grant, now).id for grant in decision.grants]
                tx.execute(
                    """UPDATE requests SET status = ?, status_by = ?, grant_ids = ?,
                           access_until = COALESCE(?, access_until)
                       WHERE id = ?""",
                    (
                        RequestStatus(decision.new_status).value, status_by(decision),
                        d.put_list([*d.get_list(row["grant_ids"]), *created]),
                        self._put_optional_time(decision.access_until), request_id,
                    ),
                )
            return _require(self._select_request(tx, request_id))

        return self._write(decide)

    # -- the audit trail ----------------------------------------------------------------------

    def append_audit(self, events: Sequence[Mapping[str, Any]]) -> None:
        rows = audit_rows(events)
        if not rows:
            return
        # Not _write: audit events change no grant, so the revision stays.
        self._dialect.run(lambda tx: self._dialect.insert_audit(tx, rows), Mode.APPEND)

    def search_audit(self, query: AuditQuery) -> list[dict[str, Any]]:
        return self._bodies(*search_sql(query, self._dialect.put_time))

    def audit_chain(self, proxy_instance: str, after_seq: int = 0, limit: int = AUDIT_MAX_LIMIT) -> list[dict[str, Any]]:
        return self._bodies(*chain_sql(proxy_instance, after_seq, limit))

    def _bodies(self, sql: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        return self._read(lambda tx: [parse_body(row["body"]) for row in tx.rows(sql, args)])

    # -- session passwords (hashes only; proxy.identity.session_passwords) ---------------------

    def add_session_password(self, password: NewSessionPassword, now: datetime) -> SessionPassword:
        d = self._dialect

        def add(tx: Tx) -> SessionPassword:
            return self._session_password(self._written(
                tx, "session_passwords", password.id,
                """INSERT INTO session_passwords (id, secret_hash, person, groups, instance, client_address,
                       token_id, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
                (password.id, password.secret_hash, password.person, d.put_list(password.groups), password.instance,
                 password.client_address, password.token_id, d.put_time(now), d.put_time(password.expires_at)),
            ))

        return self._write(add)

    def session_password_by_hash(self, secret_hash: str) -> SessionPassword | None:
        def get(tx: Tx) -> SessionPassword | None:
            row = tx.row("SELECT * FROM session_passwords WHERE secret_hash = ?", (secret_hash,))
            return self._session_password(row) if row is not None else None

        return self._read(get)

    def session_passwords(self, person: str, *, active_at: datetime | None = None) -> list[SessionPassword]:
        conditions, args = ["person = ?"], [person]
        if active_at is not None:
            conditions.append("revoked_at IS NULL AND expires_at > ?")
            args.append(self._dialect.put_time(active_at))
        sql = f"SELECT * FROM session_passwords {where(conditions)} ORDER BY seq"
        return self._read(lambda tx: [self._session_password(row) for row in tx.rows(sql, args)])

    def revoke_session_passwords(self, person: str, by: str, now: datetime, *,
                                 password_id: str | None = None) -> list[SessionPassword]:
        d = self._dialect

        def revoke(tx: Tx) -> list[SessionPassword]:
            conditions = ["person = ?", "revoked_at IS NULL AND expires_at > ?"]
            args: list[Any] = [person, d.put_time(now)]
            if password_id is not None:
                conditions.append("id = ?")
                args.append(password_id)
            # Locked: a concurrent revoker waits, then finds these revoked and leaves them out.
            found = tx.rows(f"SELECT id FROM session_passwords {where(conditions)} ORDER BY seq{d.for_update}", args)
            if not found:
                return []
            ids = d.put_list([row["id"] for row in found])
            tx.execute(f"UPDATE session_passwords SET revoked_at = ?, revoked_by = ? WHERE {d.in_list('id')}",
                       (d.put_time(now), by, ids))
            sql = f"SELECT * FROM session_passwords WHERE {d.in_list('id')} ORDER BY seq"
            return [self._session_password(row) for row in tx.rows(sql, (ids,))]

        return self._write(revoke)

    def close(self) -> None:
        self._dialect.close()

    # -- transactions -------------------------------------------------------------------------

    def _write(self, work: Callable[[Tx], T]) -> T:
        """`work` and a revision bump in one write transaction."""

        def write(tx: Tx) -> T:
            result = work(tx)
            tx.execute("UPDATE meta SET revision = revision + 1")
            return result

        return self._dialect.run(write, Mode.WRITE)

    def _read(self, work: Callable[[Tx], T]) -> T:
        return self._dialect.run(work, Mode.READ)

    def _written(self, tx: Tx, table: str, row_id: str, sql: str, args: Sequence[Any]) -> Row:
        """Run the INSERT or UPDATE `sql` of the row `row_id` of `table`; the row as written."""
        if self._dialect.returning:
            return _require(tx.row(f"{sql} RETURNING *", args))
        tx.execute(sql, args)
        return _require(tx.row(f"SELECT * FROM {table} WHERE id = ?", (row_id,)))

    # -- rows ---------------------------------------------------------------------------------

    def _insert_grant(self, tx: Tx, grant: NewGrant, now: datetime) -> StoredGrant:
        d = self._dialect
        grant_id = new_grant_id()
        return self._grant(self._written(
            tx, "grants", grant_id,
            """INSERT INTO grants (id, subject, db, table_name, privileges, expires_at, created_at,
                   created_by, reason, request_id, instance, break_glass)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                grant_id, grant.subject, grant.db, grant.table, d.put_list(grant.privileges),
                d.put_time(grant.expires_at), d.put_time(now), grant.created_by, grant.reason, grant.request_id,
                grant.instance, d.put_flag(grant.break_glass),
            ),
        ))

    def _insert_approval(self, tx: Tx, request_id: str, approval: Approval) -> None:
        # The caller holds the request (its row lock, or the database's), so MAX(position) + 1
        # cannot race.
        d = self._dialect
        tx.execute(
            """INSERT INTO approvals (request_id, position, approver, roles, decision, comment, at)
               VALUES (?, (SELECT COALESCE(MAX(position), 0) + 1 FROM approvals WHERE request_id = ?),
                       ?, ?, ?, ?, ?)""",
            (
                request_id, request_id, approval.approver, d.put_list(approval.roles), approval.decision,
                approval.comment, d.put_time(approval.at),
            ),
        )

    def _select_grant(self, tx: Tx, grant_id: str) -> StoredGrant | None:
        row = tx.row("SELECT * FROM grants WHERE id = ?", (grant_id,))
        return self._grant(row) if row is not None else None

    def _select_request(self, tx: Tx, request_id: str) -> AccessRequest | None:
        found = self._with_approvals(tx, tx.rows("SELECT * FROM requests WHERE id = ?", (request_id,)))
        return found[0] if found else None

    def _with_approvals(self, tx: Tx, rows: Sequence[Row]) -> list[AccessRequest]:
        """The requests of `rows` with their approvals, read in one query (one list parameter,
        however many requests)."""
        approvals: dict[str, list[Approval]] = {row["id"]: [] for row in rows}
        if approvals:
            sql = f"SELECT * FROM approvals WHERE {self._dialect.in_list('request_id')} ORDER BY request_id, position"
            for row in tx.rows(sql, (self._dialect.put_list(approvals),)):
                approvals[row["request_id"]].append(self._approval(row))
        return [self._request(row, approvals[row["id"]]) for row in rows]

    def _grant(self, row: Row) -> StoredGrant:
        d = self._dialect
        return StoredGrant(
            id=row["id"],
            subject=row["subject"],
            db=row["db"],
            table=row["table_name"],
            privileges=d.get_list(row["privileges"]),
            expires_at=d.get_time(row["expires_at"]),
            created_at=d.get_time(row["created_at"]),
            created_by=row["created_by"],
            reason=row["reason"],
            request_id=row["request_id"],
            revoked_at=self._get_optional_time(row["revoked_at"]),
            revoked_by=row["revoked_by"],
            instance=row["instance"],
            revoke_reason=row["revoke_reason"],
            released=bool(row["released"]),
            break_glass=bool(row["break_glass"]),
        )

    def _request(self, row: Row, approvals: Sequence[Approval]) -> AccessRequest:
        d = self._dialect
        return AccessRequest(
            id=row["id"],
            requester=row["requester"],
            db=row["db"],
            tables=d.get_list(row["tables"]),
            privileges=d.get_list(row["privileges"]),
            duration_s=row["duration_s"],
            reason=row["reason"],
            environment=row["environment"],
            status=RequestStatus(row["status"]),
            created_at=d.get_time(row["created_at"]),
            updated_at=d.get_time(row["updated_at"]),
            pending_until=d.get_time(row["pending_until"]),
            access_until=self._get_optional_time(row["access_until"]),
            approvals=tuple(approvals),
            grant_ids=d.get_list(row["grant_ids"]),
            status_by=row["status_by"],
            instance=row["instance"],
            ends_at=self._get_optional_time(row["ends_at"]),
            break_glass=bool(row["break_glass"]),
        )

    def _approval(self, row: Row) -> Approval:
        return Approval(
            approver=row["approver"],
            roles=self._dialect.get_list(row["roles"]),
            decision=row["decision"],
            comment=row["comment"],
            at=self._dialect.get_time(row["at"]),
        )

    def _session_password(self, row: Row) -> SessionPassword:
        d = self._dialect
        return SessionPassword(
            id=row["id"], secret_hash=row["secret_hash"], person=row["person"], groups=d.get_list(row["groups"]),
            instance=row["instance"], client_address=row["client_address"], token_id=row["token_id"],
            expires_at=d.get_time(row["expires_at"]), created_at=d.get_time(row["created_at"]),
            revoked_at=self._get_optional_time(row["revoked_at"]), revoked_by=row["revoked_by"],
        )

    def _put_optional_time(self, moment: datetime | None) -> Any:
        return self._dialect.put_time(moment) if moment is not None else None

    def _get_optional_time(self, value: Any) -> datetime | None:
        return self._dialect.get_time(value) if value is not None else None


def _require(found: T | None, what: str = "a row written in this transaction") -> T:
    """`found`, which the schema or the transaction guarantees: its absence is a bug or a damaged
    store (StoreError), not the caller's error."""
    if found is None:
        raise StoreError(f"{what} is missing")
    return found
