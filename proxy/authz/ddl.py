"""DDL on tables: CREATE [TEMPORARY] TABLE (also ... SELECT, ... LIKE and PARTITION BY),
ALTER TABLE, DROP [TEMPORARY] TABLE, TRUNCATE, RENAME TABLE; CREATE / DROP INDEX and sequences
(schema_objects.py). Table options are allow-listed: engines that reach outside the table
(FEDERATED, CONNECT, MERGE, SPIDER ...) and file placement options are refused. Every other
object (routines, triggers, events, databases, users, servers ...) is denied with its reason;
views are views.py's.

CREATE TABLE needs CREATE on the new table; with a SELECT it fills the table, so INSERT on it
too (MariaDB's rule), and SELECT on what the query reads. Sequence functions are refused in
table definitions (a DEFAULT NEXTVAL(s) runs at every later INSERT).

Temporary tables: a temporary table shadows the real table of the same name for the rest of the
session, so it is authorized exactly as that real table: CREATE TEMPORARY TABLE t needs CREATE on
(db, t) and every later statement naming t needs the grants on (db, t), as if t were real. A
person can shadow only names they hold CREATE on, and never reads or writes more through a
shadow than their grants on that name allow.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NoReturn

from sqlglot import exp
from sqlglot.tokens import Token, TokenType

from proxy.authz import partitions, schema_objects, views
from proxy.authz.model import Analysis, DenyCode, Privilege, Requirement, StatementKind, TableRef
from proxy.authz.outcome import Denied, result
from proxy.authz.parse import parse_one, prepare
from proxy.authz.lexer import Cursor, leading_words, word
from proxy.authz.walk import (
    ALIAS,
    WRITE,
    Collector,
    check_args,
    collected,
    cross_check,
    resolve_named,
)

# CREATE/ALTER TABLE options. Engines that reach outside the table (FEDERATED, CONNECT, MERGE,
# SPIDER ...) and file placement options are not allowed.
ALLOWED_ENGINES = frozenset({"innodb", "myisam", "memory", "heap", "aria", "archive"})
_ALLOWED_NAMED_PROPERTIES = frozenset(
    """
    KEY_BLOCK_SIZE AVG_ROW_LENGTH MAX_ROWS MIN_ROWS PACK_KEYS STATS_PERSISTENT STATS_AUTO_RECALC
    STATS_SAMPLE_PAGES CHECKSUM DELAY_KEY_WRITE PAGE_CHECKSUM TRANSACTIONAL
    """.split()
)
_SIMPLE_TABLE_OPTIONS = (
    exp.CharacterSetProperty,
    exp.CollateProperty,
    exp.AutoIncrementProperty,
    exp.SchemaCommentProperty,
    exp.RowFormatProperty,
)
_ALTER_ACTIONS = (
    exp.ColumnDef,
    exp.ModifyColumn,
    exp.AlterColumn,
    exp.AddConstraint,
    exp.DropPrimaryKey,
    exp.RenameColumn,
    exp.RenameIndex,
    exp.ForceProperty,
)
_ALTER_DROP_KINDS = frozenset({"COLUMN", "INDEX", "KEY", "FOREIGN KEY", "CONSTRAINT", "CHECK"})


def _table_options(
    options: Iterable[exp.Expr], what: str, *, alter: bool = False, temporary: bool = False
) -> None:
    for p in options:
        if isinstance(p, exp.TemporaryProperty):
            if not temporary:
                raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} of an unsupported form")
        elif isinstance(p, exp.EngineProperty):
            if p.name.lower() not in ALLOWED_ENGINES:
                raise Denied(
                    DenyCode.UNSUPPORTED_STATEMENT, f"{what} with ENGINE={p.name} is not supported"
                )
        elif isinstance(p, _SIMPLE_TABLE_OPTIONS):
            continue
        elif isinstance(p, exp.LikeProperty) and not alter:
            continue
        elif alter and isinstance(p, (exp.AlgorithmProperty, exp.LockProperty, exp.Order)):
            continue
        elif type(p) is exp.Property and p.name.upper() in _ALLOWED_NAMED_PROPERTIES:
            continue
        else:
            raise Denied(
                DenyCode.UNSUPPORTED_STATEMENT,
                f"{what} option {_option_name(p)} is not supported",
            )


def _option_name(node: exp.Expr) -> str:
    """How a person wrote the option (its words up to `=` or `(`: never its value, which may be
    a secret such as PASSWORD='...'), not the parser's class name."""
    if type(node) is exp.Property:
        return node.name.upper()
    text = node.sql("mysql").split("=", 1)[0].split("(", 1)[0].split("'", 1)[0].strip().upper()
    return " ".join(text.split()[:4]) or type(node).__name__


# Table options and ALTER TABLE actions refused whatever the rest of the statement says, found
# in the tokens before parsing, so that the person gets the reason even when sqlglot does not
# read the rest (a parse error otherwise).
_REFUSED_ACTIONS = {
    "EXCHANGE": "ALTER TABLE ... EXCHANGE PARTITION moves rows between two tables",
    "DISCARD": "ALTER TABLE ... DISCARD TABLESPACE works on the server's files",
    "IMPORT": "ALTER TABLE ... IMPORT TABLESPACE works on the server's files",
}


def _refused_options(tokens: list[Token], what: str) -> None:
    depth = 0
    n = len(tokens)
    for i, tok in enumerate(tokens):
        tt = tok.token_type
        if tt is TokenType.L_PAREN:
            depth += 1
            continue
        if tt is TokenType.R_PAREN:
            depth -= 1
            continue
        if depth:
            continue
        w = word(tok)
        nxt = tokens[i + 1] if i + 1 < n else None
        if w == "ENGINE" and nxt is not None:
            k = i + 2 if nxt.token_type is TokenType.EQ else i + 1
            name = tokens[k].text if k < n else ""
            if name.lower() not in ALLOWED_ENGINES:
                raise Denied(
                    DenyCode.UNSUPPORTED_STATEMENT,
                    f"{what} with ENGINE={name} is not supported",
                    what,
                )
        elif w in ("DATA", "INDEX") and word(nxt) == "DIRECTORY":
            raise Denied(
                DenyCode.UNSUPPORTED_STATEMENT,
                f"{what} with {w} DIRECTORY is not supported: it places files on the server",
                what,
            )
        elif w in ("UNION", "CONNECTION") and nxt is not None and nxt.token_type is TokenType.EQ:
            raise Denied(
                DenyCode.UNSUPPORTED_STATEMENT,
                f"{what} with {w}= is not supported: it makes the table reach other tables or "
                "servers",
                what,
            )
        elif what == "ALTER TABLE" and w in _REFUSED_ACTIONS and i > 2:
            raise Denied(
                DenyCode.UNSUPPORTED_STATEMENT, f"{_REFUSED_ACTIONS[w]}; it is not supported", what
            )


def _ddl_target(node: exp.Expr | None, c: Collector, what: str) -> TableRef:
    if isinstance(node, exp.Schema):
        node = node.this
    if not isinstance(node, exp.Table) or isinstance(node.this, exp.Func) or node.args.get("joins"):
        raise Denied(DenyCode.UNACCOUNTED_TABLE, f"{what} target of an unsupported form")
    ref = c.resolve(node, frozenset())
    if ref is None:
        raise Denied(DenyCode.UNACCOUNTED_TABLE, f"{what} target is not a table")
    c.roles[id(node)] = WRITE
    return ref


def _table_object(tokens: list[Token], verb: str) -> tuple[bool, str]:
    """`VERB TABLE` or `VERB TEMPORARY TABLE` → (temporary, statement class); any other object
    (VIEW, DATABASE, ...) is refused with its own reason."""
    second = word(tokens[1]) if len(tokens) > 1 else None
    temporary = second == "TEMPORARY" and len(tokens) > 2 and word(tokens[2]) == "TABLE"
    if second != "TABLE" and not temporary:
        _unsupported_object(tokens)
    return temporary, f"{verb} TEMPORARY TABLE" if temporary else f"{verb} TABLE"


_CREATE_ARGS = frozenset({"this", "kind", "expression", "exists", "properties"})


_ROUTINE_OBJECTS = frozenset({"VIEW", "TRIGGER", "PROCEDURE", "FUNCTION", "EVENT", "PACKAGE", "AGGREGATE"})
_VIEW_PREFIXES = frozenset({"OR", "ALGORITHM", "DEFINER", "SQL", "SQL SECURITY", "VIEW"})


def _is_view(tokens: list[Token]) -> bool:
    """CREATE / ALTER ... VIEW: the first object word after the verb's options is VIEW (the
    options are shared with triggers and routines, which stay refused)."""
    if word(tokens[1] if len(tokens) > 1 else None) not in _VIEW_PREFIXES:
        return False
    found = next((w for w in (word(t) for t in tokens[1:16]) if w in _ROUTINE_OBJECTS), None)
    return found == "VIEW"


def create_statement(
    sql: str, tokens: list[Token], current_db: str | None, dispatch: views.Dispatch
) -> Analysis:
    if _is_view(tokens):
        return views.create_view(sql, tokens, current_db, dispatch)
    words = [word(t) for t in tokens[1:6]]
    if words[:2] == ["OR", "REPLACE"]:
        words = words[2:]
    if words[:1] == ["INDEX"] or (
        words[:1] in (["UNIQUE"], ["FULLTEXT"], ["SPATIAL"]) and words[1:2] == ["INDEX"]
    ):
        return schema_objects.create_index(prepare(tokens, sql.upper()), current_db)
    if words[:1] == ["SEQUENCE"] or words[:2] == ["TEMPORARY", "SEQUENCE"]:
        return schema_objects.create_sequence(
            prepare(tokens, sql.upper()), current_db, ALLOWED_ENGINES
        )
    temporary, what = _table_object(tokens, "CREATE")
    _refused_options(tokens, what)
    # before prepare(): `LIST (` / `HASH (` there are no function calls (the clause checks its
    # own expressions)
    tokens = partitions.strip_partitioning(tokens, ALLOWED_ENGINES)
    tokens = prepare(tokens, sql.upper())
    tokens = _strip_duplicate_handling(tokens)
    tree = parse_one(sql, tokens)
    if not isinstance(tree, exp.Create) or str(tree.args.get("kind") or "").upper() != "TABLE":
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} of an unsupported form", what)
    check_args(tree, _CREATE_ARGS, what)
    properties = tree.args.get("properties")
    options = properties.expressions if properties is not None else []
    if temporary != any(isinstance(p, exp.TemporaryProperty) for p in options):
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} of an unsupported form", what)
    _table_options(options, what, temporary=temporary)
    c = Collector(current_db)
    ref = _ddl_target(tree.this, c, what)
    c.walk(tree)
    cross_check(tree, c)
    _no_sequence_functions(c, what)
    requirements = {Requirement(ref, Privilege.CREATE)}
    if tree.expression is not None:
        # CREATE TABLE ... SELECT fills the new table: MariaDB wants INSERT on it too
        requirements.add(Requirement(ref, Privilege.INSERT))
    return collected(StatementKind.QUERY, what, c, requirements)


def _strip_duplicate_handling(tokens: list[Token]) -> list[Token]:
    """CREATE TABLE ... {IGNORE | REPLACE} [AS] SELECT: what happens to rows with a duplicate key
    in the new table (sqlglot does not read it); the same privileges either way."""
    depth = 0
    for i, tok in enumerate(tokens):
        tt = tok.token_type
        if tt is TokenType.L_PAREN:
            depth += 1
        elif tt is TokenType.R_PAREN:
            depth -= 1
        elif depth == 0 and i > 2 and word(tok) in ("IGNORE", "REPLACE") and i + 1 < len(tokens):
            nxt = tokens[i + 1]
            if word(nxt) in ("AS", "SELECT", "WITH") or nxt.token_type is TokenType.L_PAREN:
                return tokens[:i] + tokens[i + 1 :]
    return tokens


def _no_sequence_functions(c: Collector, what: str) -> None:
    if c.sequences:
        raise Denied(
            DenyCode.UNSUPPORTED_STATEMENT,
            f"sequence functions in {what} are not supported (a DEFAULT NEXTVAL(...) would "
            "advance the sequence on every later INSERT, whoever runs it)",
            what,
        )


def alter_statement(
    sql: str, tokens: list[Token], current_db: str | None, dispatch: views.Dispatch
) -> Analysis:
    if _is_view(tokens):
        return views.create_view(sql, tokens, current_db, dispatch)
    if word(tokens[1] if len(tokens) > 1 else None) == "SEQUENCE":
        return schema_objects.alter_sequence(
            prepare(tokens, sql.upper()), current_db, ALLOWED_ENGINES
        )
    if word(tokens[1] if len(tokens) > 1 else None) != "TABLE":
        _unsupported_object(tokens)
    _refused_options(tokens, "ALTER TABLE")
    tree = parse_one(sql, prepare(tokens, sql.upper()))
    if not isinstance(tree, exp.Alter) or str(tree.args.get("kind") or "").upper() != "TABLE":
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "ALTER TABLE of an unsupported form")
    check_args(tree, frozenset({"this", "kind", "actions", "options"}), "ALTER TABLE")
    c = Collector(current_db)
    ref = _ddl_target(tree.this, c, "ALTER TABLE")
    for action in tree.args.get("actions") or []:
        if isinstance(action, exp.Drop):
            if str(action.args.get("kind") or "").upper() not in _ALTER_DROP_KINDS:
                raise Denied(
                    DenyCode.UNSUPPORTED_STATEMENT,
                    f"ALTER TABLE ... DROP {action.args.get('kind')} is not supported",
                )
            check_args(action, frozenset({"kind", "tables", "exists"}), "ALTER TABLE ... DROP")
            for name in action.args.get("tables") or []:
                if isinstance(name, exp.Table):
                    c.roles[id(name)] = ALIAS  # an index or constraint name
        elif isinstance(action, exp.AlterRename):
            raise Denied(
                DenyCode.UNSUPPORTED_STATEMENT,
                "ALTER TABLE ... RENAME is not supported; use RENAME TABLE a TO b",
            )
        elif not isinstance(action, _ALTER_ACTIONS):
            raise Denied(
                DenyCode.UNSUPPORTED_STATEMENT,
                f"ALTER TABLE action {_option_name(action)} is not supported",
            )
    _table_options(tree.args.get("options") or [], "ALTER TABLE", alter=True)
    c.walk(tree)
    cross_check(tree, c)
    _no_sequence_functions(c, "ALTER TABLE")
    return collected(StatementKind.QUERY, "ALTER TABLE", c, {Requirement(ref, Privilege.ALTER)})


def drop_statement(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    second = [word(t) for t in tokens[1:3]]
    if second[:1] == ["INDEX"]:
        return schema_objects.drop_index(tokens, current_db)
    if second[:1] == ["SEQUENCE"] or second == ["TEMPORARY", "SEQUENCE"]:
        return schema_objects.drop_sequence(tokens, current_db)
    if second[:1] == ["VIEW"]:
        return views.drop_view(tokens, current_db)
    temporary, what = _table_object(tokens, "DROP")
    tree = parse_one(sql, prepare(tokens, sql.upper()))
    if not isinstance(tree, exp.Drop) or str(tree.args.get("kind") or "").upper() != "TABLE":
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} of an unsupported form", what)
    if bool(tree.args.get("temporary")) != temporary:
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, f"{what} of an unsupported form", what)
    check_args(
        tree, frozenset({"kind", "tables", "exists", "cascade", "restrict", "temporary"}), what
    )
    c = Collector(current_db)
    refs = [_ddl_target(t, c, what) for t in tree.args.get("tables") or []]
    if not refs:
        raise Denied(DenyCode.PARSE_ERROR, f"{what} without a table", what)
    c.walk(tree)
    cross_check(tree, c)
    return collected(StatementKind.QUERY, what, c, {Requirement(r, Privilege.DROP) for r in refs})


def truncate_statement(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    tree = parse_one(sql, prepare(tokens, sql.upper()))
    if not isinstance(tree, exp.TruncateTable):
        raise Denied(DenyCode.UNSUPPORTED_STATEMENT, "TRUNCATE of an unsupported form")
    check_args(tree, frozenset({"expressions"}), "TRUNCATE")
    c = Collector(current_db)
    refs = [_ddl_target(t, c, "TRUNCATE") for t in tree.expressions]
    if not refs:
        raise Denied(DenyCode.PARSE_ERROR, "TRUNCATE without a table")
    c.walk(tree)
    cross_check(tree, c)
    # MySQL requires the DROP privilege for TRUNCATE TABLE.
    requirements = {Requirement(r, Privilege.DROP) for r in refs}
    return collected(StatementKind.QUERY, "TRUNCATE", c, requirements)


def rename_statement(sql: str, tokens: list[Token], current_db: str | None) -> Analysis:
    """RENAME TABLE a TO b [, c TO d ...]: ALTER and DROP on each old name, CREATE and INSERT on
    each new one (MySQL's rule). Unqualified names are in the current database."""
    c = Cursor(tokens, 1)
    if not c.accept("TABLE", "TABLES"):
        _unsupported_object(tokens)
    requirements: set[Requirement] = set()
    while True:
        old = resolve_named(*c.table_name(), current_db)
        c.expect("TO")
        new = resolve_named(*c.table_name(), current_db)
        requirements |= {
            Requirement(old, Privilege.ALTER),
            Requirement(old, Privilege.DROP),
            Requirement(new, Privilege.CREATE),
            Requirement(new, Privilege.INSERT),
        }
        if c.accept_type(TokenType.COMMA) is None:
            break
    c.expect_end()
    return result(StatementKind.QUERY, "RENAME TABLE", requirements)


_DEFINER_RIGHTS = (
    "views, routines, triggers and events run with their definer's rights, so creating or "
    "changing one would hand the shared account's privileges to everyone who uses it"
)
# The word after CREATE / ALTER / DROP / RENAME -> why that statement is denied.
_OBJECT_REASONS: dict[str, str] = {
    **dict.fromkeys(
        """
        VIEW TRIGGER PROCEDURE FUNCTION EVENT DEFINER ALGORITHM SQL AGGREGATE PACKAGE
        """.split(),
        _DEFINER_RIGHTS,
    ),
    **dict.fromkeys(
        ["USER", "ROLE"], "accounts and privileges are managed by jitproxy grants, not upstream"
    ),
    **dict.fromkeys(["DATABASE", "SCHEMA"], "databases are created and dropped by their owners"),
    "SERVER": "a server definition lets tables reach other servers",
    "INSTANCE": "it changes the server for every session",
}


def _unsupported_object(tokens: list[Token]) -> NoReturn:
    second = word(tokens[1]) if len(tokens) > 1 else None
    what = leading_words(tokens, 3 if second in ("TEMPORARY", "OR") else 2) or "this statement"
    reason = _OBJECT_REASONS.get(second or "")
    raise Denied(
        DenyCode.UNSUPPORTED_STATEMENT,
        f"{what} is not supported" + (f": {reason}" if reason else ""),
        what,
    )
