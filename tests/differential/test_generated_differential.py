"""Differential run of Hypothesis-generated SQL (grammar.py): each statement is decided by
jitproxy, executed as the equivalent MariaDB account, and sent through the real proxy. A leak or
a canary fails the example (and Hypothesis shrinks it); the false-denial rate is asserted over
the whole run. Deterministic: derandomized, no example database."""

from __future__ import annotations

import os

import pytest

from hypothesis import HealthCheck, given, settings

from tests.differential import scratch as schema
from tests.differential.canary import CanaryCheck, through_proxy
from tests.differential.grammar import statement, statement_with_views
from tests.differential.harness import Case, Tally, Verdict, compare

# JITPROXY_DIFFERENTIAL_EXAMPLES=5000 (with --timeout=0) for a deeper local run; the ceilings
# below are for the default.
EXAMPLES = int(os.environ.get("JITPROXY_DIFFERENTIAL_EXAMPLES", "800"))
# label -> (statements touching diff_d's column grants?, share of the examples, false-denial
# ceiling). The bar is 5% of the statements MariaDB allows. With column grants, generated
# SQL is often wrong in ways MariaDB reports only after its privilege checks (ambiguous or
# unknown columns: proxy/authz/columns.py counts such a name on every table in reach), so there
# the bar applies to the statements that ran; both rates are printed.
# "generated-views": the same statements with aliased tables read through views.
RUNS = {"generated": (False, 1.0, 0.05), "generated-columns": (True, 0.4, 0.05), "generated-views": (None, 0.3, 0.05)}


@pytest.mark.parametrize("label", list(RUNS))
def test_generated_sql_against_mariadb_and_through_the_proxy(
    label, scratch, jit, direct, via_proxy, markers, report
) -> None:
    column_grants, share, ceiling = RUNS[label]
    before = schema.fingerprint(scratch.mariadb)
    tally = Tally(label)
    check = CanaryCheck(schema.value_canaries(), schema.name_canaries())

    @settings(
        max_examples=max(1, int(EXAMPLES * share)),
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
    )
    @given(sql=statement_with_views() if column_grants is None else statement(column_grants))
    def one(sql: str) -> None:
        case = Case(label, sql, scratch.current_db)
        result = compare(case, jit, direct)
        tally.add(result)
        assert result.verdict is not Verdict.LEAK, "leak (jitproxy allows, MariaDB refuses):\n" + result.describe()
        marker, tagged = markers.tag(sql)
        through = through_proxy(case, tagged, marker, jit, via_proxy, check)
        assert through.canaries == [], f"canary reached the client: {through.canaries} for {tagged!r}: {through.response}"
        assert not through.bypassed_decision, f"the session forwarded a refused statement: {tagged!r}"

    try:
        one()
    finally:  # the numbers so far, also when an example failed
        report.extend(tally.summary_lines())

    sentinel, sql = markers.tag("SELECT 1")
    assert via_proxy.run(sql, scratch.current_db, keep_session=False).ok
    check.assert_never_reached(scratch.mariadb.general_log_text(), sentinel)
    report.append(
        f"canary[{label}]: {check.sent} statements through the proxy, {len(check.refused)} refused, "
        "0 responses with a canary, 0 refused statements in the general log"
    )
    assert schema.fingerprint(scratch.mariadb) == before, "a statement changed the scratch data for good"
    ratio = tally.working_false_denial_ratio if column_grants else tally.false_denial_ratio
    assert ratio <= ceiling, (
        f"false denials {ratio:.1%} > {ceiling:.0%}:\n"
        + tally.report(Verdict.FALSE_DENIAL)
    )
