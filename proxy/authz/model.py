"""The authorization vocabulary shared by the analyzer, the grant model and the decision.

Everything here is immutable and free of I/O: a statement is analyzed once into an `Analysis`
(what it needs), and that is decided against a `GrantSet` snapshot at a given instant.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime


class Privilege(str, enum.Enum):
    SELECT = "SELECT"
    INSERT = "INSERT"
    UPDATE = "UPDATE"
    DELETE = "DELETE"
    CREATE = "CREATE"
    ALTER = "ALTER"
    DROP = "DROP"
    INDEX = "INDEX"  # CREATE INDEX / DROP INDEX on a table (ALTER TABLE ... ADD INDEX needs ALTER)
    CREATE_VIEW = "CREATE VIEW"  # CREATE / ALTER VIEW (and DROP on it to replace one)
    SHOW_VIEW = "SHOW VIEW"  # SHOW CREATE VIEW (or TABLE) of a view: its definition
    EXECUTE = "EXECUTE"  # a stored routine (TableRef(db, routine)): runs with its definer's rights

    @classmethod
    def parse(cls, text: str) -> Privilege:
        try:
            return cls[" ".join(text.upper().split()).replace(" ", "_")]
        except KeyError:
            raise ValueError(
                f"unknown privilege {text!r} (one of {', '.join(p.value for p in cls)})"
            ) from None


ALL_PRIVILEGES = frozenset(Privilege)
DML_PRIVILEGES = frozenset({Privilege.SELECT, Privilege.INSERT, Privilege.UPDATE, Privilege.DELETE})
COLUMN_PRIVILEGES = frozenset({Privilege.SELECT, Privilege.INSERT, Privilege.UPDATE})


@dataclass(frozen=True, order=True)
class TableRef:
    """A real table, always fully qualified. `table is None` means the database itself."""

    db: str
    table: str | None = None

    def __str__(self) -> str:
        return f"{self.db}.{self.table}" if self.table is not None else f"{self.db}.*"


@dataclass(frozen=True, order=True)
class Requirement:
    """One privilege the statement needs on one object."""

    target: TableRef
    privilege: Privilege

    def __str__(self) -> str:
        return f"{self.privilege.value} on {self.target}"


class StatementKind(str, enum.Enum):
    """What the session must do with a statement once it is allowed."""

    QUERY = "query"  # forward upstream as is; requirements describe it
    USE = "use"  # forward; on success the current database becomes `Analysis.use_db`
    TRANSACTION = "transaction"  # BEGIN / COMMIT / ROLLBACK ...: forward, no table requirements
    SET = "set"  # allow-listed session variable or user variable: forward
    SHOW = "show"  # metadata statement: forward (requirements name what it reveals)
    KILL = "kill"  # KILL [QUERY|CONNECTION] n: the session handles it itself
    SQL_PREPARE = "sql_prepare"  # PREPARE name FROM 'literal': `prepared` holds (name, inner analysis)
    SQL_EXECUTE = "sql_execute"  # EXECUTE name [USING @v...]: the session re-decides the inner analysis
    SQL_DEALLOCATE = "sql_deallocate"  # DEALLOCATE / DROP PREPARE name
    DENIED = "denied"  # never forwarded; `Analysis.deny` says why


class DenyCode(str, enum.Enum):
    """Reason codes: stable identifiers for audit events, tests and the client message."""

    # statement-level (analysis) denials: the statement is never allowed, whoever runs it
    PARSE_ERROR = "parse_error"
    EMPTY_STATEMENT = "empty_statement"
    MULTIPLE_STATEMENTS = "multiple_statements"
    EXECUTABLE_COMMENT = "executable_comment"
    UNSUPPORTED_STATEMENT = "unsupported_statement"
    UNKNOWN_FUNCTION = "unknown_function"
    DENIED_FUNCTION = "denied_function"
    SYSTEM_VARIABLE = "system_variable"
    SELECT_INTO = "select_into"
    NO_DATABASE = "no_database_selected"
    UNACCOUNTED_TABLE = "unaccounted_table"
    SUSPICIOUS_NAME = "suspicious_name"
    CHARSET = "charset"
    STATEMENT_TOO_LONG = "statement_too_long"
    METADATA = "metadata"  # an information_schema table the proxy cannot filter
    UNKNOWN_PREPARED = "unknown_prepared"  # EXECUTE of a name the session never authorized
    UNBOUNDED_WRITE = "unbounded_write"  # UPDATE/DELETE without WHERE, and no grant allows it
    MASKED_COLUMN = "masked_column"  # a masked column used where its value could be inferred
    # grant-level denials (decision)
    MISSING_GRANT = "missing_grant"
    DATABASE_ACCESS = "database_access"


@dataclass(frozen=True)
class Deny:
    code: DenyCode
    detail: str  # for the audit event and the person; never contains policy internals


# What the session does besides forwarding, told by the statement's class (Analysis properties
# below, so the command loop and the fast path read the same facts).
FILTERED_SHOWS = frozenset({"SHOW DATABASES", "SHOW TABLES", "SHOW TABLE STATUS"})  # rows filtered per person
_SCHEMA_CHANGING = ("CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE")  # the schema caches are cleared after it


@dataclass(frozen=True)
class Analysis:
    """What a statement needs, independent of who runs it. Cacheable by (sql, current db)."""

    kind: StatementKind
    statement_class: str  # e.g. "SELECT", "INSERT", "SET", "USE", "SHOW TABLES"; for audit
    requirements: frozenset[Requirement] = frozenset()
    deny: Deny | None = None
    use_db: str | None = None  # for StatementKind.USE
    # For StatementKind.USE / SHOW-like statements that reveal a database: the person must hold
    # some grant in each of these databases (MySQL answers 1044 otherwise).
    database_access: frozenset[str] = frozenset()
    kill_target: int | None = None  # for StatementKind.KILL
    kill_query_only: bool = False
    # information_schema tables read (lower case, e.g. "tables", "columns"). They carry no
    # Requirement: the session rewrites the statement so they show only granted objects.
    metadata_tables: frozenset[str] = frozenset()
    # Tables an UPDATE/DELETE writes without a WHERE clause (every row): a guardrail.
    unbounded_writes: frozenset[TableRef] = frozenset()
    # SQL-level prepared statements: name for SQL_PREPARE/SQL_EXECUTE/SQL_DEALLOCATE, and for
    # SQL_PREPARE the analysis of the literal text being prepared.
    prepared_name: str | None = None
    prepared_analysis: Analysis | None = None
    # Column-level uses, for grants that name columns (proxy.authz.columns): (table, lower-case
    # column, privilege) for every column read (SELECT) or written (UPDATE SET, INSERT list);
    # `star_tables` holds the (table, privilege) uses whose columns are not known by name
    # (SELECT *, t.*, TABLE t, NATURAL JOIN, INSERT without a column list, any form the column
    # pass has no branch for). Only column-restricted grants look at them.
    columns: frozenset[tuple[TableRef, str, Privilege]] = frozenset()
    star_tables: frozenset[Requirement] = frozenset()
    # MariaDB-only syntax whose meaning differs on MySQL (e.g. "NEXTVAL()": a sequence function
    # on MariaDB, a call of a stored function named nextval on MySQL, which has no sequences).
    # None: the statement means the same on both. The session must refuse a statement carrying
    # it on an upstream that is not MariaDB.
    mariadb_only: str | None = None
    # Views (proxy.authz.views): `views` are the views the statement reads or writes, expanded
    # into the requirements, columns and stars of their definitions; `view_tables` what those
    # definitions reach (tables and nested views). Empty until the session has expanded them.
    views: frozenset[TableRef] = frozenset()
    view_tables: frozenset[TableRef] = frozenset()
    # The text the session sends instead of the person's (CREATE VIEW: `SQL SECURITY INVOKER`
    # added); None: the statement is sent as received. Never prepared (`preparable`).
    rewritten: str | None = None
    # SET that may change the connection's character set (NAMES, CHARACTER SET, the variables):
    # the session reads the server's character set again after it.
    changes_charset: bool = False
    # The audit fingerprint of the statement text (proxy.authz.fingerprint), set by the analysis
    # cache: statements that share this analysis share their fingerprint too.
    fingerprint: str | None = field(default=None, compare=False)

    @property
    def tables(self) -> frozenset[TableRef]:
        return frozenset(r.target for r in self.requirements)

    @property
    def changes_schema(self) -> bool:
        """DDL: what the proxy read of the schema (columns, views) is stale after it."""
        return self.statement_class.startswith(_SCHEMA_CHANGING)

    @property
    def filtered_show(self) -> bool:
        """A SHOW whose rows the session filters to what the person holds grants on."""
        return self.kind is StatementKind.SHOW and self.statement_class in FILTERED_SHOWS

    @property
    def preparable(self) -> bool:
        """What may go through COM_STMT_PREPARE: the server answers it as is. Not SET (a
        prepared SET NAMES would change the server's charset behind the decoder: plain SETs are
        re-synced), not USE/KILL (the session acts on them), not the SHOWs whose rows the
        session filters, not what the session sends rewritten (CREATE VIEW)."""
        if self.rewritten is not None:
            return False
        if self.kind is StatementKind.SHOW:
            return not self.filtered_show
        return self.kind in (StatementKind.QUERY, StatementKind.TRANSACTION)

    # For audit events, computed once per cached analysis (the analysis is immutable).
    @cached_property
    def audit_tables(self) -> tuple[str, ...]:
        return tuple(sorted({str(r.target) for r in self.requirements}))

    @cached_property
    def audit_privileges(self) -> tuple[str, ...]:
        return tuple(sorted(str(r) for r in self.requirements))

    @classmethod
    def denied(cls, statement_class: str, code: DenyCode, detail: str) -> Analysis:
        return cls(kind=StatementKind.DENIED, statement_class=statement_class, deny=Deny(code, detail))


@dataclass(frozen=True)
class Grant:
    """Subject may use `privileges` on `db`.`table` (table "*" = every table of the db,
    db "*" = every database) until `expires_at` (None = no expiry)."""

    subject: str  # "user:alice" or "group:oncall"
    db: str
    table: str
    privileges: frozenset[Privilege]
    expires_at: datetime | None = None
    source: str = ""  # "policies/dev.yaml" or "store:<id>": for audit and `jitproxy check`
    max_rows: int | None = None  # guardrail: a SELECT through this grant returns at most this many rows
    allow_unbounded_writes: bool = False  # guardrail: UPDATE/DELETE without WHERE allowed
    # Column-level grant: only these columns (lower case) of `table`; None = every column.
    # Only for a table object and SELECT / INSERT / UPDATE (MySQL's column privileges).
    columns: frozenset[str] | None = None
    # The upstream instance (config `upstreams[].name`) it applies to; "*" = every instance.
    instance: str = "*"

    def active(self, now: datetime) -> bool:
        return self.expires_at is None or now < self.expires_at

    def allows_column(self, column: str) -> bool:
        """`column` is lower case."""
        return self.columns is None or column in self.columns

    def covers(self, req: Requirement) -> bool:
        t = req.target
        return (
            req.privilege in self.privileges
            and (self.db == "*" or self.db == t.db)
            and (t.table is None or self.table == "*" or self.table == t.table)
        )


class MaskMethod(str, enum.Enum):
    """How a masked column's values reach a person (proxy.authz.masking)."""

    REDACT = "redact"  # a constant: nothing of the value
    HASH = "hash"  # SHA-256 of a salt and the value: equal values stay equal, nothing else
    PARTIAL = "partial"  # the last characters (at most 4, at most half), the rest as '*'


@dataclass(frozen=True)
class Mask:
    """Subject sees `columns` (lower case → method) of `db`.`table` masked, whatever they are
    granted. A mask is a restriction: it never grants anything."""

    subject: str
    db: str
    table: str
    columns: tuple[tuple[str, MaskMethod], ...]
    source: str = ""


@dataclass(frozen=True)
class Principal:
    """The authenticated person behind a session."""

    user: str
    groups: tuple[str, ...] = ()
    token_expires_at: datetime | None = None
    token_id: str | None = None  # jti, for audit; never the token itself

    @property
    def subjects(self) -> tuple[str, ...]:
        return (f"user:{self.user}",) + tuple(f"group:{g}" for g in self.groups)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    analysis: Analysis
    code: DenyCode | None = None
    reason: str = ""
    missing: tuple[Requirement, ...] = ()
    used_grants: tuple[Grant, ...] = field(default=(), compare=False)
    max_rows: int | None = None  # the smallest max_rows of the grants the statement reads through
    # Columns shown masked: ((table, lower-case column, method), ...), sorted. Only for a plain
    # SELECT; the session rewrites its select list (proxy.authz.masking) before forwarding.
    masks: tuple[tuple[TableRef, str, MaskMethod], ...] = ()
    # DESCRIBE / SHOW COLUMNS of a table granted by column: (table, lower-case columns) whose
    # rows the session keeps; every other row is dropped.
    listed_columns: tuple[TableRef, frozenset[str]] | None = None

    # For audit events, once per decision (sessions reuse allowed decisions).
    @cached_property
    def audit_grants(self) -> tuple[str, ...]:
        return tuple(sorted({g.source for g in self.used_grants if g.source}))

    @cached_property
    def audit_masks(self) -> tuple[str, ...]:
        return tuple(sorted(f"{t}.{c}:{m.value}" for t, c, m in self.masks))
