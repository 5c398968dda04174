"""Column masking: a SELECT whose select list names masked columns is rewritten so their values
reach the person masked (`redact`, `hash`, `partial`), and is refused when a masked column is
used anywhere its value could be inferred from (Bytebase's masking bypass was `WHERE ssn LIKE
'1%'` on a masked column: the rows that come back tell the value). Pure: text in, text out.

The rules, for a statement decided with `Decision.masks`:
1. it is one plain SELECT (no set operation, no outer parentheses);
2. its *hollow* (every plain select-list item, a column or a star, replaced by NULL, aliases
   kept) is analyzed again and must read no masked column and no `*` of a masked table: so
   WHERE, JOIN, ORDER BY, GROUP BY, HAVING, windows, expressions, subqueries, CTEs and derived
   tables never see one (the column pass counts unqualified names on every table in reach);
3. a plain column item with a masked name (on any table of the statement, so a name shared by
   two tables is masked on both) becomes `<mask>(col) AS name`; a star becomes the sources'
   columns in order, masked where masked (read from the upstream's schema), `q.*` for the rest;
4. the text that goes upstream is checked again from scratch: same requirements, same number of
   `?` placeholders, and its own hollow (mask expressions count as plain items only when they
   are exactly what step 3 builds) reads no masked column.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import sqlglot
from sqlglot import exp

from proxy.authz.model import Analysis, MaskMethod, Privilege, TableRef
from proxy.authz.names import canonical_table
from proxy.authz.outcome import Denied
from proxy.authz.parse import parse_one, prepare
from proxy.authz.lexer import tokenize

Masks = Mapping[TableRef, Mapping[str, MaskMethod]]
REDACTED = "****"

_C = "__jitproxy_c__"
_TEMPLATES = {
    MaskMethod.HASH: "SHA2(CONCAT({salt}, {c}), 256)",
    MaskMethod.PARTIAL: (
        "CONCAT(REPEAT('*', CHAR_LENGTH({c}) - LEAST(4, FLOOR(CHAR_LENGTH({c}) / 2))), "
        "RIGHT({c}, LEAST(4, FLOOR(CHAR_LENGTH({c}) / 2))))"
    ),
}


def by_table(flat: Iterable[tuple[TableRef, str, MaskMethod]]) -> dict[TableRef, dict[str, MaskMethod]]:
    """`Decision.masks` (flat, sorted) → {table: {column: method}}, what `mask_select` takes."""
    out: dict[TableRef, dict[str, MaskMethod]] = {}
    for table, column, method in flat:
        out.setdefault(table, {})[column] = method
    return out


class MaskingError(ValueError):
    """The statement cannot be masked safely: deny it (the message is for the person)."""


def _string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class Masker:
    """Builds and recognizes mask expressions for one salt."""

    def __init__(self, salt: str = "") -> None:
        self._templates = {
            m: sqlglot.parse_one(t.format(c=_C, salt=_string(salt)), dialect="mysql")
            for m, t in _TEMPLATES.items()
        }

    def expression(self, column: exp.Column, method: MaskMethod) -> exp.Expr:
        if method is MaskMethod.REDACT:
            return exp.Literal.string(REDACTED)
        tree = self._templates[method].copy()
        for placeholder in list(tree.find_all(exp.Column)):
            placeholder.replace(column.copy())
        return tree

    def is_mask(self, node: exp.Expr) -> bool:
        """Exactly a mask expression over one column (a REDACT literal reads nothing at all)."""
        columns = {c.sql(dialect="mysql") for c in node.find_all(exp.Column)}
        if len(columns) != 1:
            return False
        column = next(node.find_all(exp.Column))
        text = node.sql(dialect="mysql")
        return any(
            text == self.expression(column, m).sql(dialect="mysql") for m in self._templates
        )


def mask_select(
    sql: str,
    current_db: str | None,
    analysis: Analysis,
    masks: Masks,
    table_columns: Mapping[TableRef, tuple[str, ...]],
    analyze: Callable[[str, str | None], Analysis],
    masker: Masker,
) -> str:
    """The text to forward instead of `sql`. `table_columns`: real column names, in order, of
    the masked tables (for `*`). `analyze` is the analyzer (passed in: it imports this module's
    neighbours). Raises MaskingError."""
    tree = _parse(sql)
    names = {c for columns in masks.values() for c in columns}

    _check_reads(_hollow(tree, lambda node: False), current_db, masks, analyze, "used")
    rewritten = tree.copy()
    sources = _sources(rewritten, current_db)
    items: list[exp.Expr] = []
    for item in rewritten.expressions:
        inner = item.this if isinstance(item, exp.Alias) else item
        if _is_star(inner):
            items.extend(_expand(inner, sources, masks, table_columns, masker))
        elif _is_plain_column(inner) and inner.name.lower() in names:
            method = _method(inner.name.lower(), masks)
            alias = item.alias if isinstance(item, exp.Alias) else inner.name
            items.append(exp.alias_(masker.expression(inner, method), exp.to_identifier(alias, quoted=True)))
        else:
            items.append(item)
    rewritten.set("expressions", items)
    text = rewritten.sql(dialect="mysql")
    _verify(text, tree, current_db, analysis, masks, analyze, masker)
    return text


def _parse(sql: str) -> exp.Select:
    try:
        tree = parse_one(sql, prepare(tokenize(sql), sql.upper()))
    except (Denied, sqlglot.errors.ParseError, sqlglot.errors.TokenError):
        raise MaskingError("the statement could not be parsed for masking") from None
    if type(tree) is not exp.Select:
        raise MaskingError(
            "masked columns can be read only by a plain SELECT (no UNION, no outer parentheses)"
        )
    return tree


def _is_plain_column(node: exp.Expr) -> bool:
    return type(node) is exp.Column and isinstance(node.this, exp.Identifier)


def _is_star(node: exp.Expr) -> bool:
    return isinstance(node, exp.Star) or (type(node) is exp.Column and isinstance(node.this, exp.Star))


def _hollow(tree: exp.Select, also: Callable[[exp.Expr], bool]) -> str:
    """`tree` with every plain select-list item (and every item `also` accepts) replaced by
    NULL, keeping explicit aliases: what the statement reads outside its select list."""
    hollow = tree.copy()
    items: list[exp.Expr] = []
    for item in hollow.expressions:
        inner = item.this if isinstance(item, exp.Alias) else item
        if _is_plain_column(inner) or _is_star(inner) or also(inner):
            if isinstance(item, exp.Alias):
                items.append(exp.alias_(exp.null(), exp.to_identifier(item.alias, quoted=True)))
            else:
                items.append(exp.null())
        else:
            items.append(item)
    hollow.set("expressions", items)
    return hollow.sql(dialect="mysql")


def _check_reads(
    sql: str,
    current_db: str | None,
    masks: Masks,
    analyze: Callable[[str, str | None], Analysis],
    verb: str,
) -> Analysis:
    check = analyze(sql, current_db)
    if check.deny is not None:
        raise MaskingError(f"the statement could not be checked for masked columns ({check.deny.code.value})")
    for target, column, privilege in sorted(check.columns):
        if target in masks and privilege is Privilege.SELECT and (column in masks[target] or not column.isascii()):
            raise MaskingError(
                f"{target}.{column} is masked for you and is {verb} outside the select list "
                "(WHERE, JOIN, ORDER BY, GROUP BY, HAVING, an expression or a subquery), where "
                "its value could be inferred: select it as a plain column only"
            )
    for req in sorted(check.star_tables):
        if req.target in masks and req.privilege is Privilege.SELECT:
            raise MaskingError(
                f"{req.target} has masked columns and is read with * outside the select list "
                "(a subquery, derived table, CTE or NATURAL JOIN): name its columns"
            )
    return check


class _Source:
    __slots__ = ("qualifier", "keys", "ref")

    def __init__(self, qualifier: exp.Column, keys: set[str], ref: TableRef | None) -> None:
        self.qualifier = qualifier  # a prototype column carrying the table (and db) to write
        self.keys = keys  # the lower-case ways `q.*` may name it: alias, or table and db.table
        self.ref = ref  # the real table it may be, when it is a table name


def _key(table: str, db: str | None = None) -> str:
    return f"{db}.{table}".lower() if db else table.lower()


def _sources(tree: exp.Select, current_db: str | None) -> list[_Source] | None:
    """The FROM sources in order, for star expansion; None when their shape is not one this
    module expands (comma lists, nested joins, USING / NATURAL joins)."""
    from_ = tree.args.get("from_")
    if from_ is None or from_.args.get("expressions"):
        return None
    nodes = [from_.this]
    for join in tree.args.get("joins") or []:
        if join.args.get("using") or (join.args.get("method") or "").upper() == "NATURAL":
            return None
        nodes.append(join.this)
    out: list[_Source] = []
    for node in nodes:
        if node.args.get("joins"):
            return None
        alias = node.alias
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier):
            if node.args.get("catalog") is not None:
                return None
            db_name = node.db or current_db
            ref = canonical_table(db_name, node.name) if db_name else None
            if alias:
                proto = exp.column("x", table=exp.to_identifier(alias, quoted=True))
                keys = {_key(alias)}
            else:
                db = exp.to_identifier(node.db, quoted=True) if node.db else None
                proto = exp.column("x", table=exp.to_identifier(node.name, quoted=True), db=db)
                keys = {_key(node.name)} | ({_key(node.name, db_name)} if db_name else set())
            out.append(_Source(proto, keys, ref))
        elif alias:  # a derived table, LATERAL, VALUES or JSON_TABLE: never a masked table
            out.append(_Source(exp.column("x", table=exp.to_identifier(alias, quoted=True)), {_key(alias)}, None))
        else:
            return None
    return out


def _star_key(star: exp.Column) -> str:
    return _key(star.table, star.args["db"].name if star.args.get("db") is not None else None)


def _qualified(source: _Source, name: str | exp.Star) -> exp.Column:
    column = source.qualifier.copy()
    column.set("this", name if isinstance(name, exp.Star) else exp.to_identifier(name, quoted=True))
    return column


def _expand(
    star: exp.Expr,
    sources: list[_Source] | None,
    masks: Masks,
    table_columns: Mapping[TableRef, tuple[str, ...]],
    masker: Masker,
) -> list[exp.Expr]:
    if sources is None:
        raise MaskingError(
            "* over tables with masked columns needs a simple FROM (no comma list, USING, NATURAL "
            "or nested joins): name the columns"
        )
    if isinstance(star, exp.Column):  # q.*
        chosen = [s for s in sources if _star_key(star) in s.keys]
        if len(chosen) != 1:
            raise MaskingError(f"cannot tell which table {star.sql(dialect='mysql')} reads: name the columns")
    else:
        chosen = sources
    out: list[exp.Expr] = []
    for source in chosen:
        if source.ref is None or source.ref not in masks:
            out.append(_qualified(source, exp.Star()))
            continue
        columns = table_columns.get(source.ref)
        if not columns:
            raise MaskingError(f"the columns of {source.ref} are not known, so * cannot be masked: name the columns")
        masked = masks[source.ref]
        for name in columns:
            column = _qualified(source, name)
            method = masked.get(name.lower())
            if method is None:
                out.append(column)
            else:
                out.append(exp.alias_(masker.expression(column, method), exp.to_identifier(name, quoted=True)))
    return out


def _method(name: str, masks: Masks) -> MaskMethod:
    methods = {columns[name] for columns in masks.values() if name in columns}
    return methods.pop() if len(methods) == 1 else MaskMethod.REDACT


def _verify(
    text: str,
    original: exp.Select,
    current_db: str | None,
    analysis: Analysis,
    masks: Masks,
    analyze: Callable[[str, str | None], Analysis],
    masker: Masker,
) -> None:
    """The forwarded text, checked from scratch."""
    tree = _parse(text)
    names = {c for columns in masks.values() for c in columns}
    sources = _sources(tree, current_db)
    for item in tree.expressions:
        inner = item.this if isinstance(item, exp.Alias) else item
        if _is_plain_column(inner) and inner.name.lower() in names:
            raise MaskingError("masking left a masked column unmasked")
        if isinstance(inner, exp.Star):
            raise MaskingError("masking left a * unexpanded")
        if _is_star(inner):
            matches = [s for s in sources or () if _star_key(inner) in s.keys]
            if not matches or any(s.ref in masks for s in matches):
                raise MaskingError("masking left a * of a masked table")
    check = _check_reads(_hollow(tree, masker.is_mask), current_db, masks, analyze, "read")
    again = analyze(text, current_db)
    if (
        again.kind is not analysis.kind
        or again.requirements != analysis.requirements
        or len(list(tree.find_all(exp.Placeholder))) != len(list(original.find_all(exp.Placeholder)))
        or check.requirements - analysis.requirements
    ):
        raise MaskingError("the masked statement does not read what the statement reads")
