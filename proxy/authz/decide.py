"""Decide an analyzed statement against a grants snapshot at a given instant. Pure."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime

from proxy.authz.metadata import INFORMATION_SCHEMA, Visibility
from proxy.authz.model import (
    COLUMN_PRIVILEGES,
    Analysis,
    Decision,
    DenyCode,
    Grant,
    Mask,
    MaskMethod,
    Principal,
    Privilege,
    Requirement,
    StatementKind,
    TableRef,
)


class GrantSet:
    """An immutable snapshot of every grant in effect (policies ∪ store), indexed by subject.

    `version` changes whenever the content changes; caches key on it.
    """

    __slots__ = ("_by_subject", "_masks_by_subject", "version", "grants", "masks", "has_column_grants",
                 "_instances", "_every_instance")

    def __init__(self, grants: Iterable[Grant], version: str = "0", masks: Iterable[Mask] = ()) -> None:
        self.grants: tuple[Grant, ...] = tuple(grants)
        by_subject: dict[str, list[Grant]] = defaultdict(list)
        for g in self.grants:
            by_subject[g.subject].append(g)
        self._by_subject = {k: tuple(v) for k, v in by_subject.items()}
        self.masks: tuple[Mask, ...] = tuple(masks)
        masks_by: dict[str, list[Mask]] = defaultdict(list)
        for m in self.masks:
            masks_by[m.subject].append(m)
        self._masks_by_subject = {k: tuple(v) for k, v in masks_by.items()}
        self.version = version
        self.has_column_grants = any(g.columns is not None for g in self.grants)
        self._instances: dict[str, GrantSet] = {}
        self._every_instance = all(g.instance == "*" for g in self.grants)

    def for_instance(self, instance: str) -> GrantSet:
        """The grants that apply on one upstream instance (theirs and every-instance ones);
        made once per snapshot and instance."""
        if self._every_instance:
            return self
        found = self._instances.get(instance)
        if found is None:
            found = GrantSet((g for g in self.grants if g.instance in ("*", instance)),
                             f"{self.version}@{instance}", self.masks)
            self._instances[instance] = found
        return found

    def masks_for(self, principal: Principal, tables: Iterable[TableRef]) -> dict[TableRef, dict[str, MaskMethod]]:
        """Masked columns of `tables` for this person. Two masks of one column with different
        methods (through two groups) give the strictest: redact."""
        out: dict[TableRef, dict[str, MaskMethod]] = {}
        if not self._masks_by_subject:
            return out
        wanted = frozenset(tables)
        for subject in principal.subjects:
            for m in self._masks_by_subject.get(subject, ()):
                ref = TableRef(m.db, m.table)
                if ref not in wanted:
                    continue
                columns = out.setdefault(ref, {})
                for name, method in m.columns:
                    before = columns.get(name)
                    columns[name] = method if before in (None, method) else MaskMethod.REDACT
        return out

    def for_principal(self, principal: Principal, now: datetime) -> list[Grant]:
        out: list[Grant] = []
        for subject in principal.subjects:
            out.extend(g for g in self._by_subject.get(subject, ()) if g.active(now))
        return out

    def next_expiry(self, principal: Principal, now: datetime) -> datetime | None:
        """When the first of the person's grants in effect at `now` ends (None: none ends).
        Until then, and while this snapshot is current, their decisions cannot change: a
        snapshot's grants only ever end, they never start later."""
        ends = [g.expires_at for g in self.for_principal(principal, now) if g.expires_at is not None]
        return min(ends) if ends else None


def decide(
    analysis: Analysis,
    principal: Principal,
    grants: GrantSet,
    now: datetime,
    table_columns: Mapping[TableRef, frozenset[str]] | None = None,
) -> Decision:
    """`table_columns`: the real columns (lower case) of tables read with `*` through
    column-restricted grants (see `stars_needing_schema`); without them such a star is denied."""
    if analysis.kind is StatementKind.DENIED:
        assert analysis.deny is not None
        return Decision(False, analysis, analysis.deny.code, analysis.deny.detail)

    if analysis.kind is StatementKind.SQL_PREPARE:
        inner = analysis.prepared_analysis
        if inner is None:
            return Decision(False, analysis, DenyCode.UNSUPPORTED_STATEMENT, "PREPARE without a statement")
        if inner.metadata_tables:
            return Decision(False, analysis, DenyCode.METADATA,
                            "PREPARE of an information_schema query is not supported; send it directly")
        decision = decide(inner, principal, grants, now, table_columns)
        if decision.masks:
            return Decision(False, analysis, DenyCode.MASKED_COLUMN,
                            "PREPARE ... FROM of a statement reading masked columns is not supported; "
                            "send it as a plain query or prepare it with the binary protocol",
                            used_grants=decision.used_grants)
        return decision

    held = grants.for_principal(principal, now)

    for db in sorted(analysis.database_access):
        if db == INFORMATION_SCHEMA:
            continue  # public on every server; its tables are restricted row by row
        if not any(g.db in ("*", db) for g in held):
            return Decision(
                False,
                analysis,
                DenyCode.DATABASE_ACCESS,
                f"no access to database '{db}'",
            )

    if (
        analysis.kind is StatementKind.SHOW
        and analysis.statement_class in COLUMN_LISTINGS
        and len(analysis.requirements) == 1
    ):
        return _column_listing(analysis, held)

    covered: list[tuple[Requirement, Grant]] = []
    missing: list[Requirement] = []
    for req in sorted(analysis.requirements):
        grant = next((g for g in held if g.covers(req)), None)
        if grant is None:
            missing.append(req)
        else:
            covered.append((req, grant))
    used = tuple(g for _, g in covered)
    if missing:
        what = ", ".join(str(r) for r in missing)
        return Decision(False, analysis, DenyCode.MISSING_GRANT, f"missing {what}", tuple(missing), used)
    if analysis.kind is StatementKind.SHOW:
        # A definition (SHOW CREATE TABLE, SHOW INDEX, COM_FIELD_LIST) names every column: a
        # column-restricted grant does not show it (MariaDB refuses it too).
        for req, _ in covered:
            if all(g.columns is not None for g in held if g.covers(req)):
                return Decision(
                    False, analysis, DenyCode.MISSING_GRANT,
                    f"{req.target} is granted by column only; its definition names other columns",
                    (req,), used,
                )
    if any(g.columns is not None for g in held):
        column_denial = _column_denial(analysis, held, table_columns or {})
        if column_denial is not None:
            return Decision(False, analysis, DenyCode.MISSING_GRANT, column_denial, used_grants=used)
    for table in sorted(analysis.unbounded_writes):
        writes = [g for r, g in covered if r.target == table and r.privilege in _WRITES]
        if not writes or not all(g.allow_unbounded_writes for g in writes):
            return Decision(
                False,
                analysis,
                DenyCode.UNBOUNDED_WRITE,
                f"UPDATE/DELETE of every row of {table} (no WHERE clause): add a WHERE clause, "
                "or ask for a grant that allows unbounded writes",
                used_grants=used,
            )
    limits = [g.max_rows for r, g in covered if r.privilege is Privilege.SELECT and g.max_rows is not None]
    max_rows = min(limits) if limits else None
    masks = grants.masks_for(principal, analysis.tables)
    if masks:
        return _masked(analysis, masks, used, max_rows)
    return Decision(True, analysis, used_grants=used, max_rows=max_rows)


def _masked(
    analysis: Analysis,
    masks: dict[TableRef, dict[str, MaskMethod]],
    used: tuple[Grant, ...],
    max_rows: int | None,
) -> Decision:
    """A statement over tables with masked columns. Reading none of them: as usual. A plain
    SELECT reading some: allowed with `masks`, for the session to rewrite the select list
    (proxy.authz.masking refuses every other use). Any other statement reading one: denied.
    Column names are matched in ASCII only (the policy loader accepts nothing else): a
    non-ASCII name the server may fold onto a masked one (`śsn`) is refused."""
    for target in sorted(masks.keys() & analysis.view_tables):
        read = sorted(c for t, c, p in analysis.columns if t == target and p is Privilege.SELECT and c in masks[target])
        if read or Requirement(target, Privilege.SELECT) in analysis.star_tables:
            return Decision(False, analysis, DenyCode.MASKED_COLUMN,
                            f"{target}.{read[0] if read else '*'} is masked for you and a view reads it: "
                            f"read it from {target} itself", used_grants=used)
    reads: set[tuple[TableRef, str]] = set()
    for target, column, privilege in analysis.columns:
        if target in masks and privilege is Privilege.SELECT:
            if not column.isascii():
                return Decision(False, analysis, DenyCode.MASKED_COLUMN,
                                f"column name {column!r} of {target} is not ASCII: it cannot be "
                                "checked against the masks of that table", used_grants=used)
            if column in masks[target]:
                reads.add((target, column))
    stars = {r.target for r in analysis.star_tables if r.target in masks and r.privilege is Privilege.SELECT}
    if not reads and not stars:
        return Decision(True, analysis, used_grants=used, max_rows=max_rows)
    if analysis.kind is not StatementKind.QUERY or analysis.statement_class != "SELECT":
        target, column = min(reads) if reads else (min(stars), "*")
        return Decision(False, analysis, DenyCode.MASKED_COLUMN,
                        f"{target}.{column} is masked for you: it can be read only as a plain "
                        "item of a SELECT's select list", used_grants=used)
    flat = tuple(sorted((t, c, m) for t, columns in masks.items() for c, m in columns.items()))
    return Decision(True, analysis, used_grants=used, max_rows=max_rows, masks=flat)


_WRITES = frozenset({Privilege.UPDATE, Privilege.DELETE})
# SHOW statements answering one row per column of one table, its name first.
COLUMN_LISTINGS = frozenset({"SHOW COLUMNS", "DESCRIBE"})


def _column_listing(analysis: Analysis, held: list[Grant]) -> Decision:
    """DESCRIBE / SHOW COLUMNS of one table, as MariaDB answers it: any privilege on the table
    (but EXECUTE, a routine's, and INDEX, which MariaDB does not count here at database level)
    shows it, and a column's row is shown only through a column privilege on it (SELECT,
    INSERT, UPDATE: of the whole table, or of the columns a column-restricted grant lists). With
    DELETE, ALTER, CREATE or DROP alone MariaDB answers with no rows, and so does the session."""
    (req,) = analysis.requirements
    t = req.target
    covering = [
        g for g in held
        if g.db in ("*", t.db) and g.table in ("*", t.table)
        and g.privileges - {Privilege.EXECUTE, Privilege.INDEX}
    ]
    if not covering:
        return Decision(False, analysis, DenyCode.MISSING_GRANT, f"missing {req}", (req,))
    showing = [g for g in covering if g.privileges & COLUMN_PRIVILEGES]
    if any(g.columns is None for g in showing):
        return Decision(True, analysis, used_grants=tuple(covering))
    columns = frozenset().union(*(g.columns or () for g in showing))
    return Decision(True, analysis, used_grants=tuple(covering), listed_columns=(t, columns))


def _column_denial(
    analysis: Analysis, held: list[Grant], table_columns: Mapping[TableRef, frozenset[str]]
) -> str | None:
    """Column-restricted grants: every column the statement uses through one must be listed.

    MySQL's privileges are a union: a use is allowed when any held grant covering its table and
    privilege allows the column. A use no held grant covers at all needs no grant (the
    statement has no table-level requirement for it: e.g. INSERT ... ON DUPLICATE KEY UPDATE
    reading the target without SELECT), as before column grants existed. A `*` counts as every
    column of the table when its columns are known (`table_columns`), else it is refused."""
    for req in sorted(analysis.star_tables):
        covering = [g for g in held if g.covers(req)]
        if not covering or any(g.columns is None for g in covering):
            continue
        columns = table_columns.get(req.target)
        if columns is None:
            return (
                f"missing {req.privilege.value} on every column of {req.target} "
                "(SELECT *, TABLE, NATURAL JOIN or INSERT without a column list): "
                "name the columns you were granted"
            )
        ungranted = sorted(c for c in columns if not any(g.allows_column(c) for g in covering))
        if ungranted:
            return (
                f"missing {req.privilege.value} on column {req.target}.{ungranted[0]}"
                + (f" and {len(ungranted) - 1} more" if len(ungranted) > 1 else "")
                + " (a * reads every column): name the columns you were granted"
            )
    for target, column, privilege in sorted(analysis.columns):
        req = Requirement(target, privilege)
        covering = [g for g in held if g.covers(req)]
        if covering and not any(g.allows_column(column) for g in covering):
            return f"missing {privilege.value} on column {target}.{column}"
    return None


def stars_needing_schema(
    analysis: Analysis, principal: Principal, grants: GrantSet, now: datetime
) -> frozenset[TableRef]:
    """Tables read with `*` only through column-restricted grants: their real columns decide."""
    if analysis.kind is StatementKind.SQL_PREPARE and analysis.prepared_analysis is not None:
        analysis = analysis.prepared_analysis
    if not analysis.star_tables or not grants.has_column_grants:
        return frozenset()
    held = grants.for_principal(principal, now)
    out = set()
    for req in analysis.star_tables:
        covering = [g for g in held if g.covers(req)]
        if covering and all(g.columns is not None for g in covering):
            out.add(req.target)
    return frozenset(out)


def visibility(principal: Principal, grants: GrantSet, now: datetime) -> Visibility:
    """The objects whose names (and definitions) the person may see: those they hold a grant on."""
    databases: set[str] = set()
    objects: set[tuple[str, str]] = set()
    by_column: set[tuple[str, str]] = set()
    for g in grants.for_principal(principal, now):
        if g.db == "*":
            return Visibility(everything=True)
        if g.table == "*":
            databases.add(g.db)
        elif g.columns is None:
            objects.add((g.db, g.table))
        else:
            by_column.add((g.db, g.table))
    return Visibility(
        databases=frozenset(databases), objects=frozenset(objects), column_objects=frozenset(by_column - objects)
    )


def databases_visible(principal: Principal, grants: GrantSet, now: datetime) -> frozenset[str] | None:
    """Databases the person holds any grant in; None means every database (a `*` grant)."""
    vis = visibility(principal, grants, now)
    return None if vis.everything else vis.databases | {db for db, _ in vis.objects | vis.column_objects}


def tables_visible(
    principal: Principal, grants: GrantSet, now: datetime, db: str
) -> frozenset[str] | None:
    """Tables of `db` the person holds any grant on; None means all of them."""
    vis = visibility(principal, grants, now)
    if vis.everything or db in vis.databases or db == INFORMATION_SCHEMA:
        return None
    return frozenset(t for d, t in vis.objects | vis.column_objects if d == db)
