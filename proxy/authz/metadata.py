"""Metadata visibility: `information_schema` shows a person the objects they hold grants on and
nothing else. Pure: statement text + visibility in, rewritten statement text out.

Every reference to an information_schema table is replaced by a derived table of the same name
that keeps only visible rows: `information_schema.TABLES t` becomes
`(SELECT * FROM information_schema.TABLES WHERE <visible>) AS t`. Comparisons are binary:
information_schema compares names case-insensitively, which would show `HR_PROD` (a different
database on a case-sensitive server) to someone granted `hr_prod`."""

from __future__ import annotations

from dataclasses import dataclass

import sqlglot
from sqlglot import exp

from proxy.authz.outcome import Denied
from proxy.authz.parse import parse_one, prepare
from proxy.authz.lexer import tokenize

INFORMATION_SCHEMA = "information_schema"

# information_schema table → (schema column, object-name column or None). Rows are kept when the
# object is visible. None as the whole entry: a server-wide table with nothing per-object in it.
_FILTERS: dict[str, tuple[str, str | None] | None] = {
    "schemata": ("SCHEMA_NAME", None),
    "tables": ("TABLE_SCHEMA", "TABLE_NAME"),
    "columns": ("TABLE_SCHEMA", "TABLE_NAME"),
    "statistics": ("TABLE_SCHEMA", "TABLE_NAME"),
    "key_column_usage": ("TABLE_SCHEMA", "TABLE_NAME"),
    "table_constraints": ("TABLE_SCHEMA", "TABLE_NAME"),
    "referential_constraints": ("CONSTRAINT_SCHEMA", "TABLE_NAME"),
    "check_constraints": ("CONSTRAINT_SCHEMA", ""),  # no TABLE_NAME on MySQL 8: whole-db grants
    "views": ("TABLE_SCHEMA", "TABLE_NAME"),
    "partitions": ("TABLE_SCHEMA", "TABLE_NAME"),
    "triggers": ("EVENT_OBJECT_SCHEMA", "EVENT_OBJECT_TABLE"),
    "routines": ("ROUTINE_SCHEMA", "ROUTINE_NAME"),
    "parameters": ("SPECIFIC_SCHEMA", "SPECIFIC_NAME"),
    "events": ("EVENT_SCHEMA", "EVENT_NAME"),
    "character_sets": None,
    "collations": None,
    "collation_character_set_applicability": None,
    "engines": None,
    "keywords": None,
    "sql_functions": None,
}

FILTERABLE = frozenset(_FILTERS)
# Rows that name columns (or hold definitions that do): not shown for tables granted by column.
_NAMES_COLUMNS = frozenset({"columns", "statistics", "key_column_usage", "views", "triggers", "partitions"})


# information_schema.VIEWS without its definitions (the columns MySQL 8 and MariaDB share): a
# definition names the tables and columns a view reads, visible or not; MySQL shows it only with
# SHOW VIEW on the view, and a person who does not see every object never sees it here.
_VIEWS_COLUMNS = ("TABLE_CATALOG", "TABLE_SCHEMA", "TABLE_NAME", "CHECK_OPTION", "IS_UPDATABLE", "DEFINER",
                  "SECURITY_TYPE", "CHARACTER_SET_CLIENT", "COLLATION_CONNECTION")


def _rows_of(table: str) -> exp.Select:
    if table.lower() != "views":
        return exp.select("*")
    columns: list[exp.Expression] = [exp.column(c) for c in _VIEWS_COLUMNS]
    columns.insert(3, exp.alias_(exp.Literal.string(""), "VIEW_DEFINITION"))
    return exp.select(*columns)


class MetadataError(ValueError):
    """The statement cannot be rewritten safely: deny it."""


@dataclass(frozen=True)
class Visibility:
    """What a person may see the names of. `everything`: a `*.*` grant."""

    everything: bool = False
    databases: frozenset[str] = frozenset()  # db-wide grants (db.*)
    objects: frozenset[tuple[str, str]] = frozenset()  # (db, table or routine)
    # tables granted by column only: their names are visible, their definitions are not
    column_objects: frozenset[tuple[str, str]] = frozenset()

    @property
    def database_names(self) -> frozenset[str]:
        return self.databases | {db for db, _ in self.objects | self.column_objects} | {INFORMATION_SCHEMA}


def _binary(column: str) -> exp.Expression:
    return exp.Cast(this=exp.column(column), to=exp.DataType.build("BINARY", dialect="mysql"))


def _in(column: str, values: list[str]) -> exp.Expression:
    if not values:
        return exp.false()
    return exp.In(this=_binary(column), expressions=[exp.Literal.string(v) for v in values])


def visible_condition(table: str, vis: Visibility) -> exp.Expression | None:
    """The WHERE condition that keeps only visible rows of information_schema.`table` (None: all)."""
    spec = _FILTERS[table]
    if spec is None or vis.everything:
        return None
    schema_col, name_col = spec
    if name_col is None:
        return _in(schema_col, sorted(vis.database_names))
    if name_col == "":  # rows name no table: only databases granted whole
        return _in(schema_col, sorted(vis.databases | {INFORMATION_SCHEMA}))
    # information_schema's own objects are public on every MySQL server (clients list them).
    conditions: list[exp.Expression] = [_in(schema_col, sorted(vis.databases | {INFORMATION_SCHEMA}))]
    named = vis.objects if table in _NAMES_COLUMNS else vis.objects | vis.column_objects
    for db, name in sorted(named):
        conditions.append(
            exp.and_(
                exp.EQ(this=_binary(schema_col), expression=exp.Literal.string(db)),
                exp.EQ(this=_binary(name_col), expression=exp.Literal.string(name)),
            )
        )
    return exp.or_(*conditions) if len(conditions) > 1 else conditions[0]


def _cte_names(tree: exp.Expression) -> set[str]:
    return {cte.alias_or_name for cte in tree.find_all(exp.CTE)}


def restrict_metadata(sql: str, current_db: str | None, vis: Visibility) -> tuple[str, frozenset[str]]:
    """Rewrite `sql` so its information_schema tables show only what `vis` allows. Returns the
    text to forward and the information_schema tables found (the caller checks them against
    the analysis). Parsed with the analyzer's own token repairs, so both read the same tree."""
    try:
        tokens = tokenize(sql)
        tree = parse_one(sql, prepare(tokens, sql.upper()))
    except Denied as e:
        raise MetadataError(f"cannot parse the statement: {e.code.value}") from None
    except (sqlglot.errors.ParseError, sqlglot.errors.TokenError) as e:
        raise MetadataError(f"cannot parse the statement: {type(e).__name__}") from None
    if isinstance(tree, exp.Command):
        raise MetadataError("the statement's tables cannot be located for rewriting")
    in_metadata_db = (current_db or "").lower() == INFORMATION_SCHEMA
    ctes = _cte_names(tree)
    found: set[str] = set()
    replaced = 0
    for table in list(tree.find_all(exp.Table)):
        db = table.db
        if not db:
            if not in_metadata_db or table.name in ctes:
                continue
        elif db.lower() != INFORMATION_SCHEMA:
            continue
        if table.args.get("catalog"):
            raise MetadataError("three-part table names are not supported")
        name = table.name.lower()
        if name not in _FILTERS:
            raise MetadataError(f"information_schema.{name} cannot be filtered")
        found.add(name)
        condition = visible_condition(name, vis)
        if condition is None:
            continue
        inner = _rows_of(name).from_(exp.table_(table.name, db=INFORMATION_SCHEMA))
        inner = inner.where(condition)
        alias = table.alias or table.name
        table.replace(exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(alias))))
        replaced += 1
    if not replaced:
        return sql, frozenset(found)
    return tree.sql(dialect="mysql"), frozenset(found)
