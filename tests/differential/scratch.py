"""The scratch schema of the differential suite, its canaries, and the MariaDB account that holds
exactly the grants of `policy.yaml`.

Three databases on the session's MariaDB, created here and dropped at the end:

    diff_a  employee, department (SELECT) · title (full DML) · audit (INSERT) · ledger (UPDATE,
            DELETE) · salary, hidden_7c1e (nothing)
    diff_b  bonus, keys (nothing)
    diff_c  employee, scratch (SELECT on diff_c.*), and views (`VIEWS`) over readable and
            unreadable tables, some SQL SECURITY DEFINER (MariaDB lets the person read through
            them what jitproxy, reading a view as its definition, refuses)
    diff_d  column grants only: employee SELECT (emp_no, name) · title SELECT, UPDATE (emp_no,
            note) · department INSERT (emp_no, note) · salary UPDATE (note)
    diff_e  DDL and MariaDB sequences (no canaries: nothing here is secret; only
            extra_cases.yaml names it): indexed (SELECT, INDEX) · altered (SELECT, ALTER) ·
            readonly (SELECT) · sequences seq_rw (SELECT, INSERT), seq_ro (SELECT), seq_w
            (INSERT), seq_alter (ALTER), seq_none (nothing) · names that do not exist yet:
            new_seq, new_table (CREATE, DROP), new_copy (CREATE), new_filled (CREATE, INSERT,
            DROP). Cases that create something drop it again, so every run starts the same.

Every table has the same columns, so generated SQL resolves its column names whatever table it
picks and MariaDB reaches its privilege checks instead of stopping at "unknown column". Every
column the person may not SELECT holds canary strings (every text column of an unreadable table,
the ungranted ones of a table read through column grants); a few names are canaries too (a
table, a column), for metadata leaks.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from jitproxy_demo.mariadb import Credentials, LocalMariaDB
from proxy.authz.model import Grant, Privilege, TableRef
from proxy.authz.policy import grants_from_document

POLICY_PATH = Path(__file__).with_name("policy.yaml")
SUBJECT_USER = "difftest"
PERSON_PASSWORD = "difftest-password"  # the MariaDB account used directly (never through the proxy)
UPSTREAM_USER = "diffproxy"  # the proxy's one shared identity for this suite: ALL on diff_*
UPSTREAM_PASSWORD = "diffproxy-password"
NOBODY_USER = "diffnobody"  # no table privilege: tells which errors precede privilege checks
NOBODY_PASSWORD = "diffnobody-password"
DATABASES = ("diff_a", "diff_b", "diff_c", "diff_d", "diff_e")
CURRENT_DB = "diff_a"
COLUMN_DB = "diff_d"  # the current database of the column-grant statement sets

# (database, table) -> may the person read it: every column (True), none (False) or the columns
# of a column-level SELECT grant. Must agree with policy.yaml (checked in test_setup.py);
# columns that are not readable hold canaries.
TABLES: dict[tuple[str, str], bool | frozenset[str]] = {
    ("diff_a", "employee"): True,
    ("diff_a", "department"): True,
    ("diff_a", "title"): True,
    ("diff_a", "audit"): False,
    ("diff_a", "ledger"): False,
    ("diff_a", "salary"): False,
    ("diff_a", "hidden_7c1e"): False,
    ("diff_b", "bonus"): False,
    ("diff_b", "keys"): False,
    ("diff_c", "employee"): True,
    ("diff_c", "scratch"): True,
    ("diff_d", "employee"): frozenset({"emp_no", "name"}),
    ("diff_d", "title"): frozenset({"emp_no", "note"}),
    ("diff_d", "department"): False,
    ("diff_d", "salary"): False,
}
# diff_e: tables (same columns as the others, plain rows) and sequences for the DDL cases.
DDL_DB = "diff_e"
DDL_TABLES = ("indexed", "altered", "readonly")
SEQUENCES = ("seq_rw", "seq_ro", "seq_w", "seq_alter", "seq_none")
CORPUS_SEQUENCE_DATABASES = ("diff_a", "diff_b", "diff_d")
ROWS_PER_TABLE = 4
COLUMNS = """
  emp_no    INT NOT NULL PRIMARY KEY,
  name      VARCHAR(100), dept VARCHAR(100), title VARCHAR(100), note VARCHAR(100),
  amount    DECIMAL(12, 2), band INT, flag INT, flags INT, manager INT, a INT, b INT, c INT,
  hired     DATE, from_date DATE, to_date DATE,
  doc       JSON, bio TEXT,
  FULLTEXT KEY ft_bio (bio)
"""
TEXT_COLUMNS = ("name", "dept", "title", "note", "bio")
COLUMN_NAMES = (
    "emp_no", "name", "dept", "title", "note", "amount", "band", "flag", "flags", "manager", "a", "b",
    "c", "hired", "from_date", "to_date", "doc", "bio",
)
# Views, made by root: (db, name, SQL SECURITY, definition). Same columns as the tables; those
# over diff_a.salary name their columns without CANARY_COLUMN: a view's column names are its
# own, shown to whoever may read the view (DESCRIBE, information_schema.COLUMNS), as MariaDB does.
_SALARY_COLUMNS = ", ".join(COLUMN_NAMES)
VIEWS = (
    ("diff_c", "v_open", "INVOKER", "SELECT * FROM diff_a.employee"),
    ("diff_c", "v_secret", "DEFINER", f"SELECT {_SALARY_COLUMNS} FROM diff_a.salary"),
    ("diff_c", "v_secret_invoker", "INVOKER", f"SELECT {_SALARY_COLUMNS} FROM diff_a.salary"),
    ("diff_c", "v_nested", "DEFINER", "SELECT * FROM diff_c.v_secret"),
    ("diff_c", "v_columns", "DEFINER", "SELECT * FROM diff_d.employee"),
    ("diff_c", "v_join", "INVOKER", "SELECT e.* FROM diff_a.employee e JOIN diff_a.department d USING (emp_no)"),
    ("diff_a", "v_salary", "DEFINER", f"SELECT {_SALARY_COLUMNS} FROM diff_a.salary"),
)
# Names that only an unauthorized metadata read can reveal.
CANARY_TABLE = "hidden_7c1e"
CANARY_COLUMN = "cnry_col_3a7d"  # an extra column of diff_a.salary
SAMPLE_CANARY = "CANARY-SALARY-7f3a"  # hr_prod.salary's canary (jitproxy_demo/sample_data.sql)


def canary(db: str, table: str) -> str:
    """The unique value planted in every text column of an unreadable table."""
    tag = hashlib.sha256(f"{db}.{table}".encode()).hexdigest()[:6]
    return f"CANARY-{db}.{table}-{tag}"


def readable_columns(db: str, table: str) -> frozenset[str]:
    readable = TABLES[(db, table)]
    if readable is True:
        return frozenset(COLUMN_NAMES)
    return frozenset() if readable is False else readable


def canary_columns(db: str, table: str) -> list[str]:
    """The columns of a table that hold its canary: the text (and JSON) ones it may not read."""
    return [c for c in (*TEXT_COLUMNS, "doc") if c not in readable_columns(db, table)]


def value_canaries() -> list[str]:
    return [canary(db, t) for (db, t) in TABLES if canary_columns(db, t)] + [SAMPLE_CANARY]


def name_canaries() -> list[str]:
    return [CANARY_TABLE, CANARY_COLUMN]


def load_policy() -> list[Grant]:
    return grants_from_document(yaml.safe_load(POLICY_PATH.read_text(encoding="utf-8")), str(POLICY_PATH))


def quote(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def grant_statements(grants: list[Grant]) -> list[str]:
    """The MariaDB GRANTs equivalent to the policy, as `create_user` takes them (text between
    GRANT and TO). Only privileges both systems define are used."""
    out = []
    for g in grants:
        assert g.subject == f"user:{SUBJECT_USER}" and g.expires_at is None
        assert Privilege.EXECUTE not in g.privileges, "routines are not part of this suite"
        assert getattr(g, "max_rows", None) is None, "max_rows changes results, not privileges"
        privileges = ", ".join(sorted(p.value for p in g.privileges))
        obj = "*" if g.table == "*" else quote(g.table)
        if g.columns is not None:  # a column-level GRANT: SELECT (a, b), UPDATE (a, b) ON db.t
            columns = ", ".join(quote(c) for c in sorted(g.columns))
            privileges = ", ".join(f"{p.value} ({columns})" for p in sorted(g.privileges, key=lambda p: p.value))
        out.append(f"{privileges} ON {quote(g.db)}.{obj}")
    return out


def _rows(db: str, table: str) -> list[str]:
    rows = []
    hidden = canary_columns(db, table)
    value = canary(db, table)
    for n in range(1, ROWS_PER_TABLE + 1):
        text = [f"'{value}#{col}{n}'" if col in hidden else f"'{table}-{col}-{n}'" for col in TEXT_COLUMNS]
        if "doc" in hidden:
            doc = f"'{{\"secret\": \"{value}#doc{n}\"}}'"
        else:
            doc = f"'{{\"k\": \"{table}-{n}\"}}'"
        name, dept, title, note, bio = text
        rows.append(
            f"({n}, {name}, {dept}, {title}, {note}, {n * 1000}.50, {n}, {n % 2}, {n}, {max(n - 1, 1)}, "
            f"{n}, {n * 2}, {n * 3}, '2020-01-0{n}', '2020-01-0{n}', NULL, {doc}, {bio})"
        )
    return rows


def schema_statements() -> list[str]:
    out = [f"DROP DATABASE IF EXISTS {db}" for db in DATABASES]
    out += [f"CREATE DATABASE {db} CHARACTER SET utf8mb4" for db in DATABASES]
    for db, table in TABLES:
        extra = f", {CANARY_COLUMN} VARCHAR(100)" if (db, table) == ("diff_a", "salary") else ""
        out.append(f"CREATE TABLE {db}.{quote(table)} ({COLUMNS}{extra}) ENGINE=InnoDB")
        columns = (
            "emp_no, name, dept, title, note, amount, band, flag, flags, manager, a, b, c, "
            "hired, from_date, to_date, doc, bio"
        )
        out.append(f"INSERT INTO {db}.{quote(table)} ({columns}) VALUES {', '.join(_rows(db, table))}")
    out.append(f"UPDATE diff_a.salary SET {CANARY_COLUMN} = '{canary('diff_a', 'salary')}#col'")
    for table in DDL_TABLES:
        out.append(f"CREATE TABLE {DDL_DB}.{table} ({COLUMNS}) ENGINE=InnoDB")
        out.append(f"INSERT INTO {DDL_DB}.{table} (emp_no, name, note) VALUES (1, 'a', 'x'), (2, 'b', 'y')")
    for sequence in SEQUENCES:
        out.append(f"CREATE SEQUENCE {DDL_DB}.{sequence} START WITH 100 NOCACHE")
    # the corpus's `seq` (tests/authz/corpus/sequences.yaml), granted to nobody: without it
    # MariaDB answers "doesn't exist" before its privilege checks
    for db in CORPUS_SEQUENCE_DATABASES:
        out.append(f"CREATE SEQUENCE {db}.seq NOCACHE")
    for db, name, security, definition in VIEWS:
        out.append(f"CREATE SQL SECURITY {security} VIEW {db}.{name} AS {definition}")
    return out


@dataclass(frozen=True)
class Scratch:
    """What the tests need to know about the prepared server."""

    mariadb: LocalMariaDB
    grants: tuple[Grant, ...]
    person: Credentials = Credentials(SUBJECT_USER, PERSON_PASSWORD)  # holds exactly the policy
    upstream: Credentials = Credentials(UPSTREAM_USER, UPSTREAM_PASSWORD)  # ALL on diff_*
    nobody: Credentials = Credentials(NOBODY_USER, NOBODY_PASSWORD)  # EVENT on diff_* only
    current_db: str = CURRENT_DB
    # every scratch table's real columns (lower case), as the session reads them from the
    # upstream to expand a `*` read through column grants
    table_columns: dict[TableRef, frozenset[str]] = field(default_factory=dict)
    # db -> view name -> definition, as information_schema.VIEWS gives them to the session
    view_definitions: dict[str, dict[str, str]] = field(default_factory=dict)


def create(mariadb: LocalMariaDB) -> Scratch:
    """(Re)create the scratch databases, the person's account and the proxy's upstream account."""
    grants = load_policy()
    drop_accounts(mariadb)
    with mariadb.root_connection() as conn, conn.cursor() as cur:
        for sql in schema_statements():
            cur.execute(sql)
    mariadb.create_user(SUBJECT_USER, PERSON_PASSWORD, grant_statements(grants))
    mariadb.create_user(UPSTREAM_USER, UPSTREAM_PASSWORD, [f"ALL PRIVILEGES ON {db}.*" for db in DATABASES])
    # EVENT only lets it select the databases as current database; it reads and writes nothing.
    mariadb.create_user(NOBODY_USER, NOBODY_PASSWORD, [f"EVENT ON {db}.*" for db in DATABASES])
    return Scratch(mariadb, tuple(grants), table_columns=real_columns(mariadb),
                   view_definitions=view_definitions(mariadb))


def view_definitions(mariadb: LocalMariaDB) -> dict[str, dict[str, str]]:
    found: dict[str, dict[str, str]] = {db: {} for db in DATABASES}
    with mariadb.root_connection() as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT table_schema, table_name, view_definition FROM information_schema.views "
            f"WHERE table_schema IN ({', '.join(['%s'] * len(DATABASES))})",
            DATABASES,
        )
        for db, name, definition in cur.fetchall():
            found[db][name] = definition
    return found


def real_columns(mariadb: LocalMariaDB) -> dict[TableRef, frozenset[str]]:
    columns: dict[TableRef, set[str]] = {}
    with mariadb.root_connection() as conn, conn.cursor() as cur:
        cur.execute(  # tables only: a sequence's columns are its own (next_not_cached_value ...)
            "SELECT c.table_schema, c.table_name, c.column_name FROM information_schema.columns c "
            "JOIN information_schema.tables t USING (table_schema, table_name) "
            f"WHERE c.table_schema IN ({', '.join(['%s'] * len(DATABASES))}) "
            "AND t.table_type = 'BASE TABLE'",
            DATABASES,
        )
        for db, table, column in cur.fetchall():
            columns.setdefault(TableRef(db, table), set()).add(column.lower())
    return {t: frozenset(c) for t, c in columns.items()}


def drop(mariadb: LocalMariaDB) -> None:
    drop_accounts(mariadb)
    with mariadb.root_connection() as conn, conn.cursor() as cur:
        for db in DATABASES:
            cur.execute(f"DROP DATABASE IF EXISTS {db}")


def drop_accounts(mariadb: LocalMariaDB) -> None:
    with mariadb.root_connection() as conn, conn.cursor() as cur:
        for user in (SUBJECT_USER, UPSTREAM_USER, NOBODY_USER):
            cur.execute("DROP USER IF EXISTS %s@'%%'", (user,))


def fingerprint(mariadb: LocalMariaDB) -> dict[str, object]:
    """Everything a statement could have changed for good: tables, their contents, the person's
    grants. Compared before and after each run; nothing may persist between cases."""
    with mariadb.root_connection() as conn, conn.cursor() as cur:
        cur.execute("SET SESSION lock_wait_timeout = 10, innodb_lock_wait_timeout = 10")  # never hang
        cur.execute(
            "SELECT table_schema, table_name, table_type FROM information_schema.tables "
            f"WHERE table_schema IN ({', '.join(['%s'] * len(DATABASES))}) ORDER BY 1, 2",
            DATABASES,
        )
        tables = cur.fetchall()
        # a sequence's row moves with every NEXTVAL / SETVAL (not transactional): its existence
        # counts, not its current value; a view has no rows of its own
        names = ", ".join(f"{quote(db)}.{quote(t)}" for db, t, kind in tables if kind not in ("SEQUENCE", "VIEW"))
        cur.execute(f"CHECKSUM TABLE {names} EXTENDED")
        checksums = cur.fetchall()
        cur.execute(f"SHOW GRANTS FOR {SUBJECT_USER}@'%'")
        person_grants = sorted(r[0] for r in cur.fetchall())
        cur.execute(
            f"SELECT db, name, type FROM mysql.proc WHERE db IN ({', '.join(['%s'] * len(DATABASES))})",
            DATABASES,
        )
        routines = cur.fetchall()
    return {"tables": tables, "checksums": checksums, "grants": person_grants, "routines": routines}
