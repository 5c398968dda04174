"""The authorization corpus: every case in tests/authz/corpus/*.yaml, run through `analyze`.

File format (one YAML document per file):

    db: hr_prod                  # default current database for the file's cases (null: none)
    cases:
      - name: cte-shadows-table  # optional; the test id is "<file>:<name or index>"
        why: ...                 # optional note for the reader
        sql: WITH employee AS (SELECT * FROM salary) SELECT * FROM employee
        db: hr_prod              # optional, overrides the file default (null allowed)
        expect:
          allow:
            kind: query          # a StatementKind value
            class: SELECT        # optional: statement_class
            requires: ["SELECT hr_prod.salary"]   # the exact requirement set
            use_db: ...          # optional (default: none)
            database_access: [hr_prod]            # optional exact set (default: empty)
            kill_target: 12      # optional (default: none)
            kill_query_only: true                 # optional (default: false)
            metadata_tables: [tables, columns]    # optional exact set (default: empty)
            unbounded_writes: [hr_prod.salary]    # optional exact set (default: empty)
            prepared_name: s     # optional (default: none)
            prepared: {kind: query, requires: [...]}   # PREPARE: the analysis of the text, with
                                 # the same keys as `allow` (default: no prepared analysis)
      - sql: SELECT 1; DROP TABLE salary
        expect: {deny: multiple_statements}      # a DenyCode value; optional `class` beside it

A requirement is "PRIVILEGE db.table"; names may be backquoted (`hr_prod`.`a.b` is the table
"a.b" in hr_prod), exactly as in policy files.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.authz.analyze import analyze
from proxy.authz.model import Analysis, DenyCode, Privilege, Requirement, StatementKind, TableRef
from proxy.authz.names import canonical_table, split_qualified

CORPUS = Path(__file__).parent / "corpus"
_CASE_KEYS = {"name", "why", "sql", "db", "expect", "never_run"}  # never_run: must not reach a real server
_ALLOW_KEYS = {
    "kind",
    "rewritten",
    "class",
    "requires",
    "use_db",
    "database_access",
    "kill_target",
    "kill_query_only",
    "metadata_tables",
    "unbounded_writes",
    "prepared_name",
    "prepared",
}


def load_cases() -> list[tuple[str, str, str | None, dict[str, Any]]]:
    """(id, sql, current db, expectation) for every corpus case, in file order."""
    cases = []
    for path in sorted(CORPUS.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        if set(doc) - {"db", "cases"}:
            raise ValueError(f"{path.name}: unknown top-level keys {set(doc) - {'db', 'cases'}}")
        default_db = doc.get("db")
        for index, case in enumerate(doc["cases"]):
            unknown = set(case) - _CASE_KEYS
            if unknown or "sql" not in case or "expect" not in case:
                raise ValueError(f"{path.name} case {index}: bad keys {sorted(case)}")
            expect = case["expect"]
            if set(expect) not in ({"allow"}, {"deny"}, {"deny", "class"}):
                raise ValueError(f"{path.name} case {index}: bad expect {expect}")
            if "allow" in expect:
                _check_allow_keys(expect["allow"], f"{path.name} case {index}")
            db = case["db"] if "db" in case else default_db
            cases.append((f"{path.stem}:{case.get('name', index)}", case["sql"], db, expect))
    return cases


def _check_allow_keys(allow: dict[str, Any], where: str) -> None:
    if set(allow) - _ALLOW_KEYS:
        raise ValueError(f"{where}: bad allow keys {allow}")
    if "prepared" in allow:
        _check_allow_keys(allow["prepared"], where)


CASES = load_cases()


def parse_requirement(text: str) -> Requirement:
    privilege = max((p for p in Privilege if text.startswith(p.value + " ")), key=lambda p: len(p.value))  # CREATE VIEW
    return Requirement(parse_table(text[len(privilege.value) + 1 :]), privilege)


def parse_table(name: str) -> TableRef:
    db, table = split_qualified(name)
    return canonical_table(db, table)


def test_corpus_is_large_and_ids_are_unique() -> None:
    ids = Counter(case_id for case_id, *_ in CASES)
    assert [i for i, n in ids.items() if n > 1] == []
    assert len(CASES) >= 400


@pytest.mark.parametrize(("sql", "db", "expect"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_case(sql: str, db: str | None, expect: dict[str, Any]) -> None:
    result = analyze(sql, db)
    if "deny" in expect:
        assert result.kind is StatementKind.DENIED, result
        assert result.deny is not None
        assert result.deny.code is DenyCode(expect["deny"]), result.deny
        assert result.requirements == frozenset()
        if "class" in expect:
            assert result.statement_class == expect["class"]
        return
    check_allowed(result, expect["allow"])


def check_allowed(result: Analysis, allow: dict[str, Any]) -> None:
    assert result.deny is None, result.deny
    assert result.kind is StatementKind(allow["kind"])
    if "class" in allow:
        assert result.statement_class == allow["class"]
    expected = frozenset(parse_requirement(r) for r in allow.get("requires", []))
    assert result.requirements == expected
    assert result.use_db == allow.get("use_db")
    assert result.database_access == frozenset(allow.get("database_access", []))
    assert result.kill_target == allow.get("kill_target")
    assert result.kill_query_only == allow.get("kill_query_only", False)
    assert result.metadata_tables == frozenset(allow.get("metadata_tables", []))
    unbounded = frozenset(parse_table(t) for t in allow.get("unbounded_writes", []))
    assert result.unbounded_writes == unbounded
    assert result.prepared_name == allow.get("prepared_name")
    assert result.rewritten == allow.get("rewritten")
    if "prepared" in allow:
        assert result.prepared_analysis is not None
        check_allowed(result.prepared_analysis, allow["prepared"])
    else:
        assert result.prepared_analysis is None
