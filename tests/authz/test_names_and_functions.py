"""The naming rule (names.py), the function lists (functions.py), the readable
information_schema tables (infoschema.py) and string literals of PREPARE (prepared.py)."""

from __future__ import annotations

import pytest

from proxy.authz import functions, infoschema, metadata
from proxy.authz.analyze import analyze
from proxy.authz.model import DenyCode, TableRef
from proxy.authz.names import (
    canonical_db,
    canonical_routine,
    canonical_table,
    looks_like_information_schema,
    normalize_ident,
    split_qualified,
    table_ref,
)
from proxy.authz.outcome import Denied
from proxy.authz.sql_prepare import literal_text


@pytest.mark.parametrize(
    ("written", "exact"),
    [
        ("salary", "salary"),
        ("`salary`", "salary"),
        ("`Salary`", "Salary"),
        ("`a``b`", "a`b"),
        ("`a.b`", "a.b"),
        ("``", ""),
        ("`", "`"),
        (" salary ", " salary "),
    ],
)
def test_normalize_ident(written: str, exact: str) -> None:
    assert normalize_ident(written) == exact


@pytest.mark.parametrize(
    ("text", "parts"),
    [
        ("hr_prod.salary", ("hr_prod", "salary")),
        ("`hr_prod`.`salary`", ("hr_prod", "salary")),
        ("`hr.prod`.`a.b`", ("hr.prod", "a.b")),
        ("`we``ird`.t", ("we`ird", "t")),
        ("hr_prod", ("hr_prod", None)),
        ("hr_prod.*", ("hr_prod", "*")),
        ("*.*", ("*", "*")),
        ("HR.Salary", ("HR", "Salary")),
    ],
)
def test_split_qualified(text: str, parts: tuple[str, str | None]) -> None:
    assert split_qualified(text) == parts


@pytest.mark.parametrize(
    "text", ["", ".", "a.", ".b", "a.b.c", "`a", "`a`b", "a`b`", "`*`.t", "db.`*`", "a..b"]
)
def test_split_qualified_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        split_qualified(text)


def test_information_schema_folds_case_on_both_sides() -> None:
    assert canonical_table("INFORMATION_SCHEMA", "TABLES") == TableRef("information_schema", "tables")
    assert table_ref("`Information_Schema`", "Columns") == TableRef("information_schema", "columns")
    assert canonical_db("INFORMATION_SCHEMA") == "information_schema"
    assert canonical_table("HR", "Salary") == TableRef("HR", "Salary")


def test_policy_and_sql_spellings_meet() -> None:
    # A policy naming `hr_prod`.`a.b` and SQL reading `hr_prod`.`a.b` require the same object.
    db, table = split_qualified("`hr_prod`.`a.b`")
    analysis = analyze("SELECT * FROM `hr_prod`.`a.b`", None)
    assert {r.target for r in analysis.requirements} == {canonical_table(db, table)}


def test_function_lists_are_consistent() -> None:
    assert not functions.DENIED_FUNCTIONS & functions.MYSQL_BUILTINS
    assert functions.IGNORE_SPACE_FUNCTIONS <= functions.MYSQL_BUILTINS
    assert not functions.FOREIGN_FUNCTION_NAMES & functions.MYSQL_BUILTINS
    assert all(name == name.upper() for name in functions.MYSQL_BUILTINS)


@pytest.mark.parametrize("name", sorted(functions.DENIED_FUNCTIONS - {"NEXT_VALUE_FOR"}))
def test_every_denied_function_is_denied(name: str) -> None:
    for spelling in (name, name.lower()):
        result = analyze(f"SELECT {spelling}(1)", "hr_prod")
        assert result.deny is not None and result.deny.code is DenyCode.DENIED_FUNCTION, spelling


@pytest.mark.parametrize("name", sorted(functions.FOREIGN_FUNCTION_NAMES))
def test_sqlglot_only_functions_are_unknown(name: str) -> None:
    result = analyze(f"SELECT {name}(1)", "hr_prod")
    assert result.deny is not None
    assert result.deny.code in (DenyCode.UNKNOWN_FUNCTION, DenyCode.PARSE_ERROR), name


@pytest.mark.parametrize(
    ("name", "lookalike"),
    [
        ("information_schema", False),  # the real one: ASCII, folded by canonical_db
        ("INFORMATION_SCHEMA", False),
        ("\u0131nformation_schema", True),  # dotless i
        ("informat\u0131on_\u017fchema", True),  # dotless i, long s
        ("\u00ednformation_schema", True),  # accented
        ("\uff49\uff4e\uff46\uff4f\uff52\uff4d\uff41\uff54\uff49\uff4f\uff4e_schema", True),
        ("informaci\u00f3n", False),
        ("hr_prod", False),
    ],
)
def test_information_schema_lookalikes(name: str, lookalike: bool) -> None:
    assert looks_like_information_schema(name) is lookalike


def test_routines_fold_case() -> None:
    assert canonical_routine("Payroll", "Run_Payroll") == TableRef("Payroll", "run_payroll")
    assert canonical_routine("INFORMATION_SCHEMA", "X") == TableRef("information_schema", "x")


def test_readable_metadata_tables_are_the_ones_the_session_can_filter() -> None:
    assert infoschema.READABLE == metadata.FILTERABLE
    assert all(name == name.lower() for name in infoschema.READABLE)


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        ("'abc'", "abc"),
        ('"abc"', "abc"),
        ("'it''s'", "it's"),
        ('"say ""hi"""', 'say "hi"'),
        ("'a\\'b'", "a'b"),
        ("'a\\\"b'", 'a"b'),
        ("'\\n\\r\\t\\b\\0\\Z'", "\n\r\t\b\x00\x1a"),
        ("'\\\\'", "\\"),
        ("'\\%\\_'", "\\%\\_"),  # kept for LIKE
        ("'\\x\\`'", "x`"),  # any other escaped character stands for itself
        ("'\"'", '"'),
        ("''", ""),
    ],
)
def test_literal_text_unescapes_like_mysql(raw: str, text: str) -> None:
    assert literal_text(raw) == text


@pytest.mark.parametrize("raw", ["abc", "'abc", "'ab'c'", "'abc\\'", "`abc`", "'"])
def test_literal_text_rejects_what_is_not_one_literal(raw: str) -> None:
    with pytest.raises(Denied):
        literal_text(raw)
