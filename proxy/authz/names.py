"""One naming rule for databases and tables, shared by the analyzer and the policy loader.

The upstream runs with `lower_case_table_names=0` (Aurora MySQL on Linux): database and table
names are compared exactly, case-sensitively. A name means the same thing whether it comes from
SQL (`hr_prod`.`salary`) or from a policy file (hr_prod.salary): surrounding backquotes are
removed (a doubled backquote inside stands for one) and nothing else changes. The exceptions:
`information_schema`, whose database and table names MySQL always compares case-insensitively
(they are folded to lower case on both sides; a non-ASCII database name the server might also
read as information_schema is refused by the analyzer, see `looks_like_information_schema`),
and stored routine names, which are case-insensitive too (`canonical_routine` folds them).

Two entry points, for two kinds of input:
- `table_ref(db, table)` / `split_qualified(text)` take names *as written* (possibly backquoted),
  e.g. from a policy file;
- `canonical_table(db, table)` / `canonical_db(db)` take *exact* names, already unquoted (what
  the SQL parser hands over, or the session's current database). They never strip anything: a
  table whose name really is `` `x` `` (with the backquotes) stays distinct from `x`.
"""

from __future__ import annotations

import unicodedata

from proxy.authz.model import TableRef

INFORMATION_SCHEMA = "information_schema"


def normalize_ident(name: str) -> str:
    """A name as written -> the exact name: `` `Salary` `` -> ``Salary``, `` `a``b` `` -> ``a`b``.

    Text not wrapped in backquotes is returned unchanged (no case folding, no trimming).
    """
    if len(name) >= 2 and name[0] == "`" and name[-1] == "`":
        return name[1:-1].replace("``", "`")
    return name


def canonical_table(db: str, table: str | None = None) -> TableRef:
    """The canonical `TableRef` for exact (unquoted) names."""
    if db.lower() == INFORMATION_SCHEMA:
        return TableRef(INFORMATION_SCHEMA, table.lower() if table is not None else None)
    return TableRef(db, table)


def canonical_db(db: str) -> str:
    """The canonical form of an exact database name."""
    return INFORMATION_SCHEMA if db.lower() == INFORMATION_SCHEMA else db


def looks_like_information_schema(db: str) -> bool:
    """A non-ASCII name the server may read as `information_schema`: it compares that name with
    an accent- and case-insensitive collation (utf8mb3_general_ci), so `ınformation_schema`
    (dotless i), `informatıon_ſchema` or `ínformation_schema` name it too. Such names are refused
    rather than guessed either way."""
    if db.isascii():
        return False
    folded = "".join(
        ch for ch in unicodedata.normalize("NFKD", db) if not unicodedata.combining(ch)
    )
    return folded.upper().lower() == INFORMATION_SCHEMA


def canonical_routine(db: str, name: str) -> TableRef:
    """A stored routine (procedure or function), for EXECUTE: routine names are compared
    case-insensitively by MySQL, so they are folded to lower case (callers accept ASCII names
    only, where this folding is exactly the server's)."""
    return TableRef(canonical_db(db), name.lower())


def table_ref(db: str, table: str | None = None) -> TableRef:
    """The canonical `TableRef` for names as written (each may be backquoted)."""
    return canonical_table(
        normalize_ident(db), normalize_ident(table) if table is not None else None
    )


def split_qualified(text: str) -> tuple[str, str | None]:
    """Split a policy-style name into exact (database, table-or-None) names.

    ``hr_prod.salary`` -> ("hr_prod", "salary"); `` `hr_prod`.`salary` `` -> the same;
    `` `hr.prod`.`t` `` -> ("hr.prod", "t"); ``hr_prod`` -> ("hr_prod", None);
    ``hr_prod.*`` -> ("hr_prod", "*"). A dot inside backquotes is part of the name.
    Raises ValueError for anything else (empty parts, unbalanced quotes, more than two parts,
    a backquoted ``*``, which would name a table called ``*`` rather than every table).
    """
    parts: list[str] = []
    current: list[str] = []
    i, n = 0, len(text)
    quoted_part = False
    while i < n:
        ch = text[i]
        if ch == "`":
            if current or quoted_part:
                raise ValueError(f"misplaced backquote in {text!r}")
            j = i + 1
            buf: list[str] = []
            while True:
                if j >= n:
                    raise ValueError(f"unbalanced backquote in {text!r}")
                if text[j] == "`":
                    if j + 1 < n and text[j + 1] == "`":
                        buf.append("`")
                        j += 2
                        continue
                    break
                buf.append(text[j])
                j += 1
            if buf == ["*"]:
                raise ValueError(f"a backquoted * is not a wildcard in {text!r}")
            current = buf
            quoted_part = True
            i = j + 1
            if i < n and text[i] != ".":
                raise ValueError(f"unexpected text after backquoted name in {text!r}")
            continue
        if ch == ".":
            if not current and not quoted_part:
                raise ValueError(f"empty name part in {text!r}")
            parts.append("".join(current))
            current, quoted_part = [], False
            i += 1
            continue
        current.append(ch)
        i += 1
    if not current and not quoted_part:
        raise ValueError(f"empty name part in {text!r}")
    parts.append("".join(current))
    if len(parts) > 2 or any(p == "" for p in parts):
        raise ValueError(f"expected db or db.table, got {text!r}")
    if len(parts) == 1:
        return parts[0], None
    return parts[0], parts[1]
