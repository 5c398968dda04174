"""The shape cache may only ever serve an analysis identical to a fresh one; the tokens one
tokenization hands the analyzer give the analysis it would make alone."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings, strategies as st
from sqlglot.dialects.mysql import MySQL
from sqlglot.tokens import TokenType

from proxy.authz.analyze import analyze
from proxy.authz.fingerprint import fingerprint, shape
from proxy.authz.model import StatementKind

CORPUS = Path(__file__).resolve().parents[1] / "authz" / "corpus"


def corpus_statements() -> list[tuple[str, str | None]]:
    out = []
    for path in sorted(CORPUS.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        for case in doc.get("cases", []):
            if isinstance(case, dict) and isinstance(case.get("sql"), str):
                out.append((case["sql"], case.get("db", "hr_prod")))
    return out


def key(sql: str):
    return shape(sql).key


STATEMENTS = [(sql, db) for sql, db in corpus_statements() if key(sql) is not None]

NUMBERS = ["0", "7", "999999999999", "1.5", "3e10"]
STRINGS = ["'x'", "''", "'it''s'", "'a\\\\'", "'\\' OR 1=1 -- '", "' UNION SELECT * FROM salary -- '", "'/*!50000 x */'"]


def variants(sql: str, picks: list[int]) -> str:
    tokens = [t for t in MySQL().tokenize(sql)]
    out, last, i = [], 0, 0
    for tok in tokens:
        if tok.token_type is TokenType.NUMBER:
            choice = NUMBERS[picks[i % len(picks)] % len(NUMBERS)]
        elif tok.token_type is TokenType.STRING and sql[tok.start] == "'":
            choice = STRINGS[picks[i % len(picks)] % len(STRINGS)]
        else:
            continue
        out.append(sql[last : tok.start])
        out.append(choice)
        last = tok.end + 1
        i += 1
    out.append(sql[last:])
    return "".join(out)


def test_the_corpus_has_fingerprintable_statements():
    assert len(STATEMENTS) > 150


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(STATEMENTS) if STATEMENTS else st.nothing(), st.lists(st.integers(0, 50), min_size=1, max_size=8))
def test_same_fingerprint_means_same_analysis(case, picks):
    sql, db = case
    original = analyze(sql, db)
    variant = variants(sql, picks)
    if key(variant) != key(sql) or original.kind is not StatementKind.QUERY:
        return
    assert analyze(variant, db) == original, (sql, variant)


@pytest.mark.parametrize("sql", [
    "SELECT 1 /*!50000 , (SELECT 1 FROM salary) */",
    "SELECT 1 -- comment",
    "SELECT 1 # comment",
    "SELECT 'é' FROM employee",
    "SELECT\x0bid FROM employee",
    "SET sql_mode = 'ANSI_QUOTES'",
    "KILL 5",
    "PREPARE s FROM 'SELECT * FROM salary'",
    "SHOW TABLES LIKE 'x'",
    "SELECT 1; SELECT 2",
])
def test_statements_a_literal_or_comment_could_change_get_no_key(sql):
    assert key(sql) is None


def test_identifiers_and_quoting_are_part_of_the_key():
    a = key("SELECT * FROM employee WHERE id = 1")
    assert a == key("SELECT * FROM employee WHERE id = 2")
    assert a != key("SELECT * FROM salary WHERE id = 1")
    assert a != key("SELECT * FROM `employee` WHERE id = 1")
    assert a != key("SELECT * FROM employee WHERE id = '1'")
    # a quoted identifier holding a space is one token, never two words
    assert key("SELECT `a b` FROM employee") != key("SELECT a b FROM employee")


def test_statements_sharing_a_key_share_their_audit_fingerprint():
    assert fingerprint("select * FROM employee WHERE id = 1") == fingerprint("SELECT *  FROM employee WHERE id = 2")
    assert fingerprint("SELECT * FROM employee") != fingerprint("SELECT * FROM Employee")


def test_the_audit_fingerprint_sees_the_whole_of_every_statement():
    """sqlglot's own tokenizer reads everything after CALL, PREPARE, RENAME... as one string
    literal: two different procedures called would share a fingerprint."""
    assert fingerprint("CALL p(1)") != fingerprint("CALL q(1)")
    assert fingerprint("CALL p(1)") == fingerprint("CALL p(2)")
    assert fingerprint("RENAME TABLE a TO b") != fingerprint("RENAME TABLE a TO c")
    assert fingerprint("SELECT 'unterminated") == fingerprint("SELECT 'other unterminated")


@pytest.mark.parametrize("sql, db", corpus_statements())
def test_the_tokens_handed_over_give_the_analysis_made_alone(sql, db):
    assert analyze(sql, db, shape(sql).tokens) == analyze(sql, db)
