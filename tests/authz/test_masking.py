"""Column masks, pure: policy loading, the decision, and the select-list rewrite against a corpus
of ways to read a masked value without its mask."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from proxy.authz.analyze import analyze
from proxy.authz.decide import GrantSet, decide
from proxy.authz.masking import Masker, MaskingError, by_table, mask_select
from proxy.authz.model import DenyCode, MaskMethod, Principal, TableRef
from proxy.authz.policy import PolicyError, check_mask_overlaps, grants_from_document, masks_from_document

NOW = datetime(2026, 11, 21, tzinfo=timezone.utc)
EMP = TableRef("hr", "emp")
DEPT = TableRef("hr", "dept")
DOC = {
    "grants": [
        {"subject": "group:ext", "grant": "hr.*", "privileges": ["SELECT", "UPDATE", "INSERT", "DELETE"],
         "allow_unbounded_writes": True},
    ],
    "masks": [
        {"subject": "group:ext", "table": "hr.emp", "columns": {"ssn": "partial", "Email": "hash", "salary": "redact"}},
    ],
}
COLUMNS = {EMP: ("id", "name", "email", "ssn", "salary", "dept_id"), DEPT: ("id", "title")}
EXT = Principal("bob", ("ext",))


@pytest.fixture(scope="module")
def grants() -> GrantSet:
    return GrantSet(grants_from_document(DOC, "p.yaml"), masks=masks_from_document(DOC, "p.yaml"))


def _run(sql: str, grants: GrantSet, principal: Principal = EXT) -> str:
    """'allow' (unmasked), 'mask:<forwarded text>' or 'deny:<reason>'."""
    analysis = analyze(sql, "hr")
    decision = decide(analysis, principal, grants, NOW)
    if not decision.allowed:
        return f"deny:{decision.code.value}:{decision.reason}"
    if not decision.masks:
        return "allow"
    try:
        return "mask:" + mask_select(sql, "hr", analysis, by_table(decision.masks), COLUMNS, analyze, Masker("salt"))
    except MaskingError as e:
        return f"deny:masked_column:{e}"


# Reading a masked value by inference, or unmasked: every line must be refused.
ATTACKS = [
    "SELECT id FROM emp WHERE ssn = '123-45-6789'",
    "SELECT id FROM emp WHERE ssn LIKE '1%'",
    "SELECT id FROM emp WHERE SUBSTR(ssn, 1, 1) = '1'",
    "SELECT id FROM emp ORDER BY salary DESC LIMIT 1",
    "SELECT id FROM emp ORDER BY 1, salary",
    "SELECT COUNT(*) FROM emp GROUP BY salary",
    "SELECT dept_id FROM emp GROUP BY dept_id HAVING MAX(salary) > 1000",
    "SELECT MAX(salary) FROM emp",
    "SELECT salary + 0 FROM emp",
    "SELECT CONCAT(ssn, '') FROM emp",
    "SELECT CAST(salary AS CHAR) FROM emp",
    "SELECT salary > 1000 FROM emp",
    "SELECT IF(salary > 1000, 'rich', 'poor') FROM emp",
    "SELECT (SELECT ssn FROM emp LIMIT 1)",
    "SELECT x FROM (SELECT ssn AS x FROM emp) d",
    "SELECT d.* FROM (SELECT * FROM emp) d",
    "WITH c AS (SELECT ssn FROM emp) SELECT ssn FROM c",
    "WITH c AS (SELECT * FROM emp) SELECT id FROM c",
    "SELECT ssn FROM emp UNION SELECT 'x'",
    "SELECT 'x' UNION SELECT ssn FROM emp",
    "(SELECT ssn FROM emp)",
    "SELECT d.title FROM dept d JOIN emp e ON e.ssn = d.title",
    "SELECT d.title FROM dept d WHERE EXISTS (SELECT 1 FROM emp e WHERE e.salary > 5)",
    "SELECT id FROM emp e WHERE e.id IN (SELECT id FROM emp WHERE ssn > '5')",
    "SELECT ROW_NUMBER() OVER (ORDER BY salary) FROM emp",
    "SELECT id, salary FROM emp ORDER BY salary",
    "SELECT ssn FROM emp ORDER BY ssn",
    "SELECT * FROM emp NATURAL JOIN dept",
    "SELECT * FROM emp JOIN dept USING (id)",
    "SELECT `śsn` FROM emp",
    "SELECT id FROM emp WHERE `SSN` = '1'",
    "SELECT id FROM emp WHERE EMAIL = 'a@b'",
    "SELECT JSON_OBJECT('s', ssn) FROM emp",
    "SELECT GROUP_CONCAT(ssn) FROM emp",
    "SELECT id FROM emp WHERE (ssn, id) = ('1', 1)",
    "SELECT id FROM emp e WHERE e.ssn BETWEEN '1' AND '2'",
    "SELECT id, ssn FROM emp WHERE id = 1 AND ssn REGEXP '^1'",
    "UPDATE emp SET name = ssn WHERE id = 1",
    "UPDATE emp SET name = 'x' WHERE salary > 10",
    "DELETE FROM emp WHERE ssn = '1'",
    "INSERT INTO dept (title) SELECT ssn FROM emp",
    "INSERT INTO dept SELECT id, ssn FROM emp",
    "SELECT ssn INTO @v FROM emp LIMIT 1",
    "PREPARE s FROM 'SELECT ssn FROM emp'",
    "SELECT DISTINCT ssn FROM emp WHERE ssn < '2'",
    "SELECT id FROM emp HAVING ssn = '1'",
    "SELECT e.*, e2.ssn FROM emp e JOIN emp e2 ON e2.ssn = e.ssn",
    "SELECT id FROM emp WHERE MATCH(ssn) AGAINST ('1')",
    "SELECT id FROM emp LIMIT 1 FOR UPDATE SKIP LOCKED UNION SELECT ssn FROM emp",
    # RETURNING hands back the rows written, unmasked
    "INSERT INTO emp (id) VALUES (9) RETURNING ssn",
    "INSERT INTO emp (id) VALUES (9) RETURNING *",
    "INSERT INTO emp (id) VALUES (9) RETURNING emp.*",
    "REPLACE INTO emp (id) VALUES (9) RETURNING CONCAT(name, email)",
    "DELETE FROM emp WHERE id = 9 RETURNING salary",
    "DELETE FROM emp WHERE id = 9 RETURNING *",
    "INSERT INTO dept (title) VALUES ('x') RETURNING (SELECT ssn FROM emp LIMIT 1)",
    "SET @v = (SELECT ssn FROM emp LIMIT 1)",
    "SET STATEMENT max_statement_time = 5 FOR SELECT ssn FROM emp",
]


@pytest.mark.parametrize("sql", ATTACKS)
def test_inference_of_a_masked_value_is_refused(sql, grants):
    outcome = _run(sql, grants)
    assert outcome.startswith("deny:"), outcome


ALLOWED = [
    ("SELECT id, name FROM emp WHERE dept_id = 3 ORDER BY name", "allow"),
    ("UPDATE emp SET ssn = '000' WHERE id = 1", "allow"),  # a write reveals nothing
    ("DELETE FROM emp WHERE id = 1", "allow"),
    ("INSERT INTO emp (id, name) VALUES (9, 'x') RETURNING id, name", "allow"),
    ("DELETE FROM emp WHERE id = 9 RETURNING 1", "allow"),
    ("SET @v = (SELECT name FROM emp LIMIT 1)", "allow"),
    ("SELECT title FROM dept", "allow"),
    ("SELECT ssn FROM emp WHERE id = 7",
     "mask:SELECT CONCAT(REPEAT('*', CHAR_LENGTH(ssn) - LEAST(4, FLOOR(CHAR_LENGTH(ssn) / 2))), "
     "RIGHT(ssn, LEAST(4, FLOOR(CHAR_LENGTH(ssn) / 2)))) AS `ssn` FROM emp WHERE id = 7"),
    ("SELECT e.salary AS pay, e.id FROM emp AS e ORDER BY pay",
     "mask:SELECT '****' AS `pay`, e.id FROM emp AS e ORDER BY pay"),
    ("SELECT EMAIL FROM emp", "mask:SELECT SHA2(CONCAT('salt', EMAIL), 256) AS `EMAIL` FROM emp"),
    ("SELECT * FROM dept JOIN emp ON emp.dept_id = dept.id WHERE dept.id = ?",
     "mask:SELECT `dept`.*, `emp`.`id`, `emp`.`name`, SHA2(CONCAT('salt', `emp`.`email`), 256) AS `email`, "
     "CONCAT(REPEAT('*', CHAR_LENGTH(`emp`.`ssn`) - LEAST(4, FLOOR(CHAR_LENGTH(`emp`.`ssn`) / 2))), "
     "RIGHT(`emp`.`ssn`, LEAST(4, FLOOR(CHAR_LENGTH(`emp`.`ssn`) / 2)))) AS `ssn`, '****' AS `salary`, "
     "`emp`.`dept_id` FROM dept JOIN emp ON emp.dept_id = dept.id WHERE dept.id = ?"),
    ("SELECT d.title, x.n FROM dept d JOIN (SELECT dept_id, COUNT(*) AS n FROM emp GROUP BY dept_id) x "
     "ON x.dept_id = d.id", "allow"),
]


@pytest.mark.parametrize(("sql", "expected"), ALLOWED)
def test_plain_reads_are_masked_and_the_rest_untouched(sql, expected, grants):
    assert _run(sql, grants) == expected


@pytest.mark.parametrize("sql", ["TABLE emp", "SELECT * FROM emp, dept", "SELECT emp.* FROM hr.emp",
                                 "SELECT hr.emp.* FROM emp", "SELECT e.* FROM emp e JOIN emp e2 ON e2.id = e.id"])
def test_every_star_form_is_expanded_masked(sql, grants):
    outcome = _run(sql, grants)
    assert outcome.startswith("mask:SELECT ") and "'****' AS `salary`" in outcome, outcome
    assert "SHA2(CONCAT('salt', " in outcome and ".*" not in outcome.split(" FROM ")[0].replace("`dept`.*", "")


def test_unmasked_subject_reads_plainly():
    doc = {**DOC, "grants": DOC["grants"] + [{"subject": "user:dba", "grant": "hr.*", "privileges": ["SELECT"]}]}
    g = GrantSet(grants_from_document(doc, "p.yaml"), masks=masks_from_document(doc, "p.yaml"))
    assert _run("SELECT ssn FROM emp WHERE ssn LIKE '1%'", g, Principal("dba")) == "allow"


def test_two_masks_of_one_column_with_different_methods_redact():
    doc = {
        "grants": DOC["grants"],
        "masks": DOC["masks"] + [{"subject": "user:bob", "table": "hr.emp", "columns": {"ssn": "hash"}}],
    }
    g = GrantSet(grants_from_document(doc, "p.yaml"), masks=masks_from_document(doc, "p.yaml"))
    decision = decide(analyze("SELECT ssn FROM emp", "hr"), EXT, g, NOW)
    assert (EMP, "ssn", MaskMethod.REDACT) in decision.masks


def test_prepare_of_a_masked_read_is_refused_with_its_own_code(grants):
    decision = decide(analyze("PREPARE s FROM 'SELECT name, ssn FROM emp'", "hr"), EXT, grants, NOW)
    assert not decision.allowed and decision.code is DenyCode.MASKED_COLUMN


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"subject": "group:x", "table": "hr.*", "columns": {"a": "redact"}}, "one table"),
        ({"subject": "group:x", "table": "hr.emp", "columns": {"a": "scramble"}}, "not one of"),
        ({"subject": "group:x", "table": "hr.emp", "columns": {"śsn": "redact"}}, "ASCII"),
        ({"subject": "group:x", "table": "hr.emp", "columns": []}, "map column names"),
        ({"subject": "x", "table": "hr.emp", "columns": {"a": "redact"}}, "user:NAME"),
        ({"subject": "group:x", "table": "hr.emp", "columns": {"a": "redact"}, "until": 1}, "unknown key"),
        ({"subject": "group:x", "columns": {"a": "redact"}}, "missing key"),
    ],
)
def test_bad_mask_entries_are_refused_at_load(entry, message):
    with pytest.raises(PolicyError) as e:
        masks_from_document({"masks": [entry]}, "p.yaml")
    assert message in str(e.value)


def test_two_masks_for_one_subject_and_table_are_refused():
    doc = {"masks": [DOC["masks"][0], {**DOC["masks"][0], "columns": {"name": "redact"}}]}
    with pytest.raises(PolicyError, match="merge"):
        check_mask_overlaps(masks_from_document(doc, "p.yaml"))


def test_a_star_over_a_masked_table_with_unknown_columns_is_refused(grants):
    analysis = analyze("SELECT * FROM emp", "hr")
    masks = {EMP: {"ssn": MaskMethod.PARTIAL}}
    with pytest.raises(MaskingError, match="not known"):
        mask_select("SELECT * FROM emp", "hr", analysis, masks, {}, analyze, Masker())


@pytest.mark.parametrize("forwarded", [
    "SELECT ssn FROM emp",  # a masked column left plain
    "SELECT * FROM emp",  # a star left unexpanded
    "SELECT emp.* FROM emp",  # a star of the masked table
    "SELECT '****' AS ssn FROM emp WHERE ssn > '1'",  # a masked column outside the select list
    "SELECT id FROM emp JOIN dept ON 1",  # reads another table than the statement
])
def test_the_forwarded_text_is_checked_from_scratch(forwarded):
    from proxy.authz.masking import _parse, _verify

    original = "SELECT id FROM emp"
    with pytest.raises(MaskingError):
        _verify(forwarded, _parse(original), "hr", analyze(original, "hr"), {EMP: {"ssn": MaskMethod.REDACT}},
                analyze, Masker())
