"""Reading and writing through views (proxy/authz/views.py expand, then decide): a view never
widens access. The definitions are written as MariaDB's information_schema.VIEWS gives them
(names qualified, columns aliased)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone

import pytest

from proxy.authz import views
from proxy.authz.analyze import analyze
from proxy.authz.decide import GrantSet, decide
from proxy.authz.model import (
    Analysis,
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

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
DEV = Principal("dev")

DEFINITIONS = {
    "hr_test": {
        # a view in a database dev may read, over a table of one dev may not
        "pay": "select `hr_prod`.`salary`.`emp_no` AS `emp_no`,`hr_prod`.`salary`.`amount` AS `amount` "
               "from `hr_prod`.`salary`",
        "names": "select `hr_test`.`people`.`id` AS `id`,`hr_test`.`people`.`name` AS `name` from `hr_test`.`people`",
        "nested": "select `hr_test`.`pay`.`emp_no` AS `emp_no` from `hr_test`.`pay`",
        "elsewhere": "select `other`.`v2`.`x` AS `x` from `other`.`v2`",
        "broken": "select load_file('/etc/passwd') AS `f`",
        "circle": "select `hr_test`.`circle`.`a` AS `a` from `hr_test`.`circle`",
        "badges": "select `hr_prod`.`employee`.`name` AS `name`,`hr_prod`.`employee`.`badge` AS `badge` "
                  "from `hr_prod`.`employee`",
        "badge_free": "select `hr_prod`.`employee`.`name` AS `name` from `hr_prod`.`employee`",
    },
    "hr_prod": {},
    "other": {"v2": "select `secret`.`t`.`x` AS `x` from `secret`.`t`"},
    "secret": {},
}


def catalog(known: Mapping[str, Mapping[str, str | None]] = DEFINITIONS) -> views.ViewOf:
    parsed = {db: {name: views.definition_analysis(analyze, db, text) for name, text in found.items()}
              for db, found in known.items()}

    def view_of(table: TableRef) -> Analysis | None:
        if table.db not in parsed:
            raise views.NotKnown(table.db)
        return parsed[table.db].get(table.table or "")

    return view_of


def grants(*entries: tuple[str, tuple[str, ...]], **extra: object) -> GrantSet:
    out = []
    for target, privileges in entries:
        db, table = target.split(".")
        out.append(Grant("user:dev", db, table, frozenset(Privilege.parse(p) for p in privileges), **extra))
    return GrantSet(out, "test")


def run(sql: str, granted: GrantSet, db: str = "hr_test", known=None):
    expanded = views.expand(analyze(sql, db), known or catalog())
    assert isinstance(expanded, Analysis), expanded
    return decide(expanded, DEV, granted, NOW)


def test_a_view_does_not_widen_a_database_grant() -> None:
    dev = grants(("hr_test.*", ("SELECT",)))
    decision = run("SELECT amount FROM pay", dev)
    assert not decision.allowed and decision.code is DenyCode.MISSING_GRANT
    assert Requirement(TableRef("hr_prod", "salary"), Privilege.SELECT) in decision.missing
    # the table itself is refused the same way
    assert not run("SELECT amount FROM hr_prod.salary", dev).allowed


def test_a_view_over_granted_tables_is_read() -> None:
    decision = run("SELECT amount FROM pay", grants(("hr_test.*", ("SELECT",)), ("hr_prod.salary", ("SELECT",))))
    assert decision.allowed, decision.reason
    assert decision.analysis.views == {TableRef("hr_test", "pay")}
    assert "hr_prod.salary" in decision.analysis.audit_tables  # the audit names what was read


def test_the_view_itself_needs_a_grant_as_in_mysql() -> None:
    decision = run("SELECT amount FROM hr_test.pay", grants(("hr_prod.salary", ("SELECT",))), db="hr_prod")
    assert not decision.allowed and decision.missing == (Requirement(TableRef("hr_test", "pay"), Privilege.SELECT),)


def test_nested_views_in_other_databases_are_followed() -> None:
    dev = grants(("hr_test.*", ("SELECT",)), ("other.*", ("SELECT",)))
    decision = run("SELECT * FROM elsewhere", dev)
    assert not decision.allowed and "secret.t" in decision.reason
    assert run("SELECT * FROM elsewhere", grants(("hr_test.*", ("SELECT",)), ("other.*", ("SELECT",)),
                                                 ("secret.t", ("SELECT",)))).allowed
    nested = run("SELECT emp_no FROM nested", grants(("hr_test.*", ("SELECT",))))
    assert not nested.allowed and "hr_prod.salary" in nested.reason


@pytest.mark.parametrize("sql", [
    "SELECT (SELECT MAX(amount) FROM pay) AS m",
    "SELECT 1 FROM hr_test.people WHERE EXISTS (SELECT 1 FROM pay)",
    "WITH c AS (SELECT amount FROM pay) SELECT * FROM c",
    "SELECT * FROM people JOIN pay ON people.id = pay.emp_no",
    "INSERT INTO people (id) SELECT emp_no FROM pay",
    "CREATE TABLE copy AS SELECT * FROM pay",
    "EXPLAIN SELECT * FROM pay",
    "UPDATE people SET name = (SELECT MAX(amount) FROM pay)",
    "CREATE VIEW again AS SELECT * FROM pay",
])
def test_every_way_of_reading_a_view_is_expanded(sql: str) -> None:
    dev = grants(("hr_test.*", ("SELECT", "INSERT", "UPDATE", "CREATE", "CREATE VIEW")))
    decision = run(sql, dev)
    assert not decision.allowed and "hr_prod.salary" in decision.reason, decision


def test_prepare_of_a_view_read_is_expanded() -> None:
    decision = run("PREPARE s FROM 'SELECT amount FROM pay'", grants(("hr_test.*", ("SELECT",))))
    assert not decision.allowed and "hr_prod.salary" in decision.reason


@pytest.mark.parametrize(("sql", "privilege"), [
    ("UPDATE pay SET amount = 0 WHERE emp_no = 1", "UPDATE"),
    ("DELETE FROM pay WHERE emp_no = 1", "DELETE"),
    ("INSERT INTO pay (emp_no, amount) VALUES (1, 2)", "INSERT"),
])
def test_writing_through_a_view_needs_the_write_on_its_tables(sql: str, privilege: str) -> None:
    on_view = grants(("hr_test.*", ("SELECT", privilege)), ("hr_prod.salary", ("SELECT",)))
    decision = run(sql, on_view)
    assert not decision.allowed
    assert Requirement(TableRef("hr_prod", "salary"), Privilege.parse(privilege)) in decision.missing
    assert run(sql, grants(("hr_test.*", ("SELECT", privilege)), ("hr_prod.salary", ("SELECT", privilege)))).allowed


def test_an_unbounded_write_through_a_view_is_one_on_its_tables() -> None:
    sql = "DELETE FROM pay"
    bounded_only = GrantSet([
        Grant("user:dev", "hr_test", "*", frozenset({Privilege.SELECT, Privilege.DELETE}), allow_unbounded_writes=True),
        Grant("user:dev", "hr_prod", "salary", frozenset({Privilege.SELECT, Privilege.DELETE})),
    ], "t")
    decision = run(sql, bounded_only)
    assert not decision.allowed and decision.code is DenyCode.UNBOUNDED_WRITE and "hr_prod.salary" in decision.reason


def test_column_grants_apply_to_the_columns_a_view_reads() -> None:
    dev = GrantSet([
        Grant("user:dev", "hr_test", "*", frozenset({Privilege.SELECT})),
        Grant("user:dev", "hr_prod", "salary", frozenset({Privilege.SELECT}), columns=frozenset({"emp_no"})),
    ], "t")
    decision = run("SELECT emp_no FROM pay", dev)  # the view reads amount too, whatever is selected
    assert not decision.allowed and "hr_prod.salary.amount" in decision.reason


def test_masked_columns_are_not_read_through_a_view() -> None:
    granted = GrantSet(
        [Grant("user:dev", "hr_test", "*", frozenset({Privilege.SELECT})),
         Grant("user:dev", "hr_prod", "employee", frozenset({Privilege.SELECT}))],
        "t", masks=[Mask("user:dev", "hr_prod", "employee", (("badge", MaskMethod.REDACT),))])
    decision = run("SELECT name FROM badges", granted)
    assert not decision.allowed and decision.code is DenyCode.MASKED_COLUMN and "badge" in decision.reason
    assert run("SELECT name FROM badge_free", granted).allowed  # no masked column in the definition


def test_a_view_whose_definition_is_refused_cannot_be_read() -> None:
    decision = run("SELECT * FROM broken", grants(("hr_test.*", ("SELECT",))))
    assert not decision.allowed and decision.code is DenyCode.UNSUPPORTED_STATEMENT
    assert "hr_test.broken" in decision.reason
    hidden = catalog({"hr_test": {"hidden": None}})  # its definition is not visible
    assert not run("SELECT * FROM hidden", grants(("hr_test.*", ("SELECT",))), known=hidden).allowed


def test_a_view_over_information_schema_cannot_be_read() -> None:
    known = catalog({"hr_test": {"tabs": "select `information_schema`.`TABLES`.`TABLE_NAME` AS `n` "
                                         "from `information_schema`.`TABLES`"}})
    decision = run("SELECT * FROM tabs", grants(("hr_test.*", ("SELECT",))), known=known)
    assert not decision.allowed and "information_schema" in decision.reason


def test_self_reference_and_depth_end() -> None:
    looped = run("SELECT * FROM circle", grants(("hr_test.*", ("SELECT",))))  # (MariaDB refuses to make one)
    assert looped.allowed and looped.analysis.views == {TableRef("hr_test", "circle")}
    chain = {f"v{i}": f"select `hr_test`.`v{i + 1}`.`a` AS `a` from `hr_test`.`v{i + 1}`" for i in range(40)}
    decision = run("SELECT * FROM v0", grants(("hr_test.*", ("SELECT",))), known=catalog({"hr_test": chain}))
    assert not decision.allowed and "nested" in decision.reason


def test_unknown_databases_are_asked_for_first() -> None:
    known = catalog({"hr_test": DEFINITIONS["hr_test"]})  # "other" and "hr_prod" not read yet
    assert views.expand(analyze("SELECT * FROM people", "hr_test"), known) is not None
    assert views.expand(analyze("SELECT * FROM hr_prod.salary", "hr_test"), known) == frozenset({"hr_prod"})
    assert views.expand(analyze("SELECT * FROM elsewhere", "hr_test"), known) == frozenset({"other"})


def test_no_view_no_change_and_names_of_views_are_not_expanded() -> None:
    plain = analyze("SELECT name FROM people", "hr_test")
    assert views.expand(plain, catalog()) is plain
    for sql in ("DROP VIEW pay", "SHOW CREATE VIEW pay", "DESCRIBE pay", "SHOW CREATE TABLE pay"):
        a = analyze(sql, "hr_test")
        assert a.kind is not StatementKind.DENIED, a
        expanded = views.expand(a, catalog())
        assert isinstance(expanded, Analysis) and not expanded.views, sql


def test_information_schema_views_shows_definitions_only_to_those_who_see_everything() -> None:
    from proxy.authz.metadata import Visibility, restrict_metadata

    sql = "SELECT table_name, view_definition FROM information_schema.views WHERE table_schema = 'hr_test'"
    restricted, _ = restrict_metadata(sql, None, Visibility(databases=frozenset({"hr_test"})))
    assert "'' AS VIEW_DEFINITION" in restricted and "SELECT *" not in restricted
    unrestricted, _ = restrict_metadata(sql, None, Visibility(everything=True))
    assert unrestricted == sql
    tables, _ = restrict_metadata("SELECT * FROM information_schema.tables", None, Visibility(databases=frozenset({"x"})))
    assert "SELECT * FROM information_schema.tables WHERE" in tables  # other tables keep every column


def test_show_create_table_of_a_view_needs_show_view() -> None:
    a = views.expand(analyze("SHOW CREATE TABLE pay", "hr_test"), catalog())
    assert isinstance(a, Analysis) and Requirement(TableRef("hr_test", "pay"), Privilege.SHOW_VIEW) in a.requirements
    table = views.expand(analyze("SHOW CREATE TABLE people", "hr_test"), catalog())
    assert isinstance(table, Analysis) and all(r.privilege is not Privilege.SHOW_VIEW for r in table.requirements)
    assert not run("SHOW CREATE TABLE pay", grants(("hr_test.*", ("SELECT",)))).allowed
