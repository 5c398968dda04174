"""Column-level grants: every case in tests/authz/columns.yaml, analyzed and decided against that
file's grants (loaded by the policy loader, so the `columns` key is exercised as written)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.authz.analyze import analyze
from proxy.authz.decide import GrantSet, decide
from proxy.authz.model import DenyCode, Principal, TableRef
from proxy.authz.policy import PolicyError, check_overlaps, grants_from_document

DATA = Path(__file__).parent / "columns.yaml"
_CASE_KEYS = {"name", "sql", "db", "user", "groups", "expect"}
NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def _load() -> tuple[GrantSet, dict[str, Any], list[Any]]:
    doc = yaml.safe_load(DATA.read_text(encoding="utf-8"))
    grants = grants_from_document({"grants": doc["grants"]}, DATA.name)
    check_overlaps(grants)
    cases = []
    ids: set[str] = set()
    for index, case in enumerate(doc["cases"]):
        if set(case) - _CASE_KEYS or "sql" not in case or "expect" not in case:
            raise ValueError(f"{DATA.name} case {index}: bad keys {sorted(case)}")
        case_id = f"columns:{case.get('name', index)}"
        assert case_id not in ids
        ids.add(case_id)
        cases.append(pytest.param(case, id=case_id))
    return GrantSet(grants, "test"), doc, cases


GRANTS, DOC, CASES = _load()


@pytest.mark.parametrize("case", CASES)
def test_case(case: dict[str, Any]) -> None:
    principal = Principal(case.get("user", DOC["user"]), tuple(case.get("groups", ())))
    analysis = analyze(case["sql"], case.get("db", DOC["db"]))
    decision = decide(analysis, principal, GRANTS, NOW)
    expect = case["expect"]
    if expect == "allow":
        assert decision.allowed, decision.reason
        return
    assert not decision.allowed, f"allowed: {analysis}"
    assert decision.code is DenyCode(expect["deny"]), decision.reason
    assert expect.get("mentions", "") in decision.reason


def test_column_names_are_case_insensitive_and_stored_lower_case() -> None:
    g = grants_from_document(
        {"grants": [{"subject": "user:a", "grant": "hr.t", "privileges": ["SELECT"], "columns": ["Id", "NAME"]}]},
        "p.yaml",
    )[0]
    assert g.columns == frozenset({"id", "name"})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"grant": "hr.*", "privileges": ["SELECT"], "columns": ["id"]}, "db.table object"),
        ({"grant": "*.*", "privileges": ["SELECT"], "columns": ["id"]}, "db.table object"),
        ({"grant": "hr.t", "privileges": ["SELECT", "DELETE"], "columns": ["id"]}, "not DELETE"),
        ({"grant": "hr.t", "privileges": "ALL", "columns": ["id"]}, "SELECT, INSERT and UPDATE only"),
        ({"grant": "hr.t", "privileges": ["SELECT"], "columns": []}, "non-empty list"),
        ({"grant": "hr.t", "privileges": ["SELECT"], "columns": "id"}, "non-empty list"),
        ({"grant": "hr.t", "privileges": ["SELECT"], "columns": ["id", 3]}, "3"),
        ({"grant": "hr.t", "privileges": ["SELECT"], "columns": ["*"]}, "'*'"),
        ({"grant": "hr.t", "privileges": ["SELECT"], "columns": [" id"]}, "' id'"),
    ],
)
def test_bad_columns_are_policy_errors_naming_file_and_entry(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(PolicyError) as e:
        grants_from_document({"grants": [{"subject": "user:a", **entry}]}, "policies/p.yaml")
    assert "policies/p.yaml: grants[0]" in str(e.value) and message in str(e.value)


def test_grants_without_columns_leave_the_analysis_columns_unread() -> None:
    """A statement whose every grant is table-level decides exactly as before column grants."""
    g = GrantSet(grants_from_document(
        {"grants": [{"subject": "user:z", "grant": "hr.employee", "privileges": ["SELECT"]}]}, "p.yaml"
    ))
    for sql in ("SELECT * FROM employee", "SELECT salary FROM employee e NATURAL JOIN employee f"):
        assert decide(analyze(sql, "hr"), Principal("z"), g, NOW).allowed


def test_describe_needs_any_privilege_and_lists_granted_columns_only() -> None:
    g = GrantSet(grants_from_document({"grants": [
        {"subject": "user:w", "grant": "hr.salary", "privileges": ["UPDATE"], "columns": ["note"]},
        {"subject": "user:w", "grant": "hr.title", "privileges": ["INSERT"]},
        {"subject": "user:w", "grant": "hr.proc", "privileges": ["EXECUTE"]},
    ]}, "p.yaml"))
    w = Principal("w")
    d = decide(analyze("DESCRIBE salary", "hr"), w, g, NOW)
    assert d.allowed and d.listed_columns == (TableRef("hr", "salary"), frozenset({"note"}))
    d = decide(analyze("SHOW FULL COLUMNS FROM title", "hr"), w, g, NOW)
    assert d.allowed and d.listed_columns is None  # a table-level grant: every column
    for sql in ("DESCRIBE employee", "SHOW COLUMNS FROM proc", "SHOW CREATE TABLE salary", "SHOW INDEX FROM salary"):
        assert not decide(analyze(sql, "hr"), w, g, NOW).allowed, sql


def test_describe_through_privileges_without_columns_lists_no_column() -> None:
    """MariaDB answers DESCRIBE of a table held with DELETE, ALTER, CREATE or DROP only (no
    column privilege) with no rows; INDEX alone does not count (MariaDB refuses it at database
    level)."""
    g = GrantSet(grants_from_document({"grants": [
        {"subject": "user:v", "grant": "hr.ledger", "privileges": ["DELETE", "ALTER"]},
        {"subject": "user:v", "grant": "hr.idx", "privileges": ["INDEX"]},
        {"subject": "user:v", "grant": "hr.mixed", "privileges": ["DELETE"]},
        {"subject": "group:g", "grant": "hr.mixed", "privileges": ["SELECT"], "columns": ["id"]},
    ]}, "p.yaml"))
    v = Principal("v", ("g",))
    d = decide(analyze("DESCRIBE ledger", "hr"), v, g, NOW)
    assert d.allowed and d.listed_columns == (TableRef("hr", "ledger"), frozenset())
    d = decide(analyze("SHOW COLUMNS FROM mixed", "hr"), v, g, NOW)
    assert d.allowed and d.listed_columns == (TableRef("hr", "mixed"), frozenset({"id"}))
    assert not decide(analyze("DESCRIBE idx", "hr"), v, g, NOW).allowed
    assert decide(analyze("CREATE INDEX i ON idx (a)", "hr"), v, g, NOW).allowed
    assert not decide(analyze("ALTER TABLE idx ADD INDEX i (a)", "hr"), v, g, NOW).allowed
    assert not decide(analyze("CREATE INDEX i ON ledger (a)", "hr"), v, g, NOW).allowed
