"""The pure checks of bench/soak.py (marker matching, transaction atomicity), on small made-up
inputs, failing ones included: a check that cannot fail checks nothing."""

from __future__ import annotations

import pytest

from tests.helpers import load_bench

soak = load_bench("soak")

LOG = """\
/usr/sbin/mariadbd, Version: 10.11.6-MariaDB-0+deb12u1-log (Debian 12). started with:
Tcp port: 3306  Unix socket: /tmp/x/mysqld.sock
Time\t\t    Id Command\tArgument
261207 17:11:29\t    10 Query\t/* soak:1:1 */ SELECT COUNT(*) FROM employee
\t\t    10 Query\t/* soak:1:2 */ BEGIN
\t\t    10 Query\t/* soak:1:3 */ INSERT INTO soak (marker, txn) VALUES ('soak:1:3', '1:t1')
\t\t    10 Query\t/* soak:1:4 */ COMMIT
\t\t     9 Query\tKILL QUERY 10
\t\t    11 Query\t/* soak:2:1 */ SELECT SLEEP(8)
\t\t     7 Query\tSELECT INFO FROM information_schema.PROCESSLIST WHERE INFO LIKE CONCAT('%/* so', 'ak:%')
"""


def ev(kind: str, marker: str | None, text: str = "SELECT 1") -> dict:
    return {"type": kind, "statement": f"/* {marker} */ {text}" if marker else text}


GOOD = [
    ev("statement.completed", "soak:1:1"),
    ev("statement.completed", "soak:1:2"),
    ev("statement.completed", "soak:1:3"),
    ev("statement.completed", "soak:1:4"),
    ev("statement.allowed", "soak:2:1"),  # a long statement's opening event: not a closing one
    ev("statement.failed", "soak:2:1"),
    ev("statement.denied", "soak:1:5"),  # never reached the database
    ev("statement.failed", "soak:1:6"),  # cut before the database (it was down)
    ev("session.start", None),
    ev("statement.completed", None, "SELECT COUNT(*) FROM employee"),  # the probe: no marker
]


def test_markers_in_log_counts_only_comment_markers():
    found = soak.markers_in_log(LOG)
    assert found == {"soak:1:1": 1, "soak:1:2": 1, "soak:1:3": 1, "soak:1:4": 1, "soak:2:1": 1}
    # the value 'soak:1:3' and the PROCESSLIST query's split pattern are not markers
    assert soak.marker_of("INSERT INTO soak VALUES ('soak:1:3')") is None
    assert soak.marker_of("/* soak:12:345 */ COMMIT") == "soak:12:345"


def test_a_consistent_run_passes_and_each_case_is_classified():
    client = {"soak:1:1": "ok", "soak:1:2": "ok", "soak:1:3": "ok", "soak:1:4": "ok", "soak:2:1": "error",
              "soak:1:5": "error", "soak:1:6": "conn", "soak:3:9": "conn"}
    r = soak.match_markers(LOG, GOOD, client)
    assert r.passed, r.failures()
    assert (r.in_log, r.audited) == (5, 7)
    assert r.ok == {
        "completed, in the log": 4,
        "failed, in the log": 1,
        "denied, not in the log": 1,
        "failed, not in the log (cut before the database)": 1,
        "no event, not in the log (connection lost before the proxy decided)": 1,  # soak:3:9
    }


@pytest.mark.parametrize("log_extra, events, client, failure, marker", [
    # in the general log, but the audit trail has nothing closing it
    ("\t\t 10 Query\t/* soak:4:1 */ SELECT 1\n", [], {}, "in_log_without_event", "soak:4:1"),
    ("\t\t 10 Query\t/* soak:4:1 */ SELECT SLEEP(8)\n", [ev("statement.allowed", "soak:4:1")], {},
     "in_log_without_event", "soak:4:1"),
    # denied by the proxy, yet MariaDB received it
    ("\t\t 10 Query\t/* soak:4:1 */ SELECT * FROM hr_prod.salary\n", [ev("statement.denied", "soak:4:1")], {},
     "denied_in_log", "soak:4:1"),
    # two closing events for one statement
    ("\t\t 10 Query\t/* soak:4:1 */ SELECT 1\n",
     [ev("statement.completed", "soak:4:1"), ev("statement.failed", "soak:4:1")], {}, "several_events", "soak:4:1"),
    # completed without ever reaching the database
    ("", [ev("statement.completed", "soak:4:1")], {}, "completed_not_in_log", "soak:4:1"),
    # executed twice (a retried statement)
    ("\t\t 10 Query\t/* soak:4:1 */ INSERT INTO soak VALUES (1)\n\t\t 12 Query\t/* soak:4:1 */ INSERT INTO soak VALUES (1)\n",
     [ev("statement.completed", "soak:4:1")], {}, "executed_twice", "soak:4:1"),
    # the client got an answer, the audit trail has no event for it
    ("", [], {"soak:4:1": "error"}, "answered_without_event", "soak:4:1"),
    ("", [], {"soak:4:1": "ok"}, "answered_without_event", "soak:4:1"),
    # opened (statement.allowed, a long statement) but never closed, in the log or not
    ("", [ev("statement.allowed", "soak:4:1")], {"soak:4:1": "conn"}, "allowed_without_closing", "soak:4:1"),
    ("\t\t 10 Query\t/* soak:4:1 */ SELECT SLEEP(8)\n", [ev("statement.allowed", "soak:4:1")], {},
     "allowed_without_closing", "soak:4:1"),
    # the client got a result, the audit trail says it failed
    ("\t\t 10 Query\t/* soak:4:1 */ SELECT 1\n", [ev("statement.failed", "soak:4:1")], {"soak:4:1": "ok"},
     "result_without_completed", "soak:4:1"),
])
def test_each_inconsistency_fails(log_extra, events, client, failure, marker):
    r = soak.match_markers(LOG + log_extra, GOOD + events, client)
    assert not r.passed
    assert r.failures()[failure] == [marker]


def test_a_lost_statement_the_client_saw_no_answer_for_is_not_a_failure():
    r = soak.match_markers("", [], {"soak:5:1": "conn"})
    assert r.passed and r.ok["no event, not in the log (connection lost before the proxy decided)"] == 1


def T(id_, markers, outcome):
    return soak.Txn(id_, list(markers), outcome)


def test_atomicity_passes_when_every_transaction_is_all_or_nothing():
    txns = [
        T("1:t1", ["soak:1:2", "soak:1:3"], "committed"),
        T("1:t2", ["soak:1:6"], "rolled_back"),
        T("1:t3", ["soak:1:9", "soak:1:10"], "abandoned"),
        T("2:t1", ["soak:2:2"], "commit_unknown"),
        T("2:t2", ["soak:2:5", "soak:2:6"], "commit_unknown"),
        T("2:t3", [], "abandoned"),  # cut at BEGIN
    ]
    rows = [("soak:1:2", "1:t1"), ("soak:1:3", "1:t1"), ("soak:2:2", "2:t1")]
    r = soak.check_atomicity(txns, rows)
    assert r.passed, r.failures()
    assert r.ok == {"committed: all rows": 1, "rolled_back: no rows": 1, "abandoned: no rows": 1,
                    "commit answer lost: all rows": 1, "commit answer lost: no rows": 1, "no rows written": 1}


@pytest.mark.parametrize("txn, rows, failure", [
    (T("1:t1", ["soak:1:2", "soak:1:3"], "committed"), [("soak:1:2", "1:t1")], "partial"),
    (T("1:t1", ["soak:1:2", "soak:1:3"], "commit_unknown"), [("soak:1:3", "1:t1")], "partial"),
    (T("1:t1", ["soak:1:2", "soak:1:3"], "abandoned"), [("soak:1:2", "1:t1")], "partial"),
    (T("1:t1", ["soak:1:2"], "committed"), [], "committed_missing"),
    (T("1:t1", ["soak:1:2"], "rolled_back"), [("soak:1:2", "1:t1")], "uncommitted_present"),
    (T("1:t1", ["soak:1:2", "soak:1:3"], "abandoned"), [("soak:1:2", "1:t1"), ("soak:1:3", "1:t1")],
     "uncommitted_present"),
    (T("1:t1", ["soak:1:2"], "committed"), [("soak:1:2", "1:t1"), ("soak:9:9", "9:t9")], "stray_rows"),
    (T("1:t1", ["soak:1:2"], "committed"), [("soak:1:2", "1:t1"), ("soak:1:2", "2:t7")], "stray_rows"),
])
def test_atomicity_failures(txn, rows, failure):
    r = soak.check_atomicity([txn], rows)
    assert not r.passed
    assert failure in r.failures(), r.failures()


def test_windows_and_rss_bound():
    windows = [(100.0, 110.0)]
    assert soak.windows_hit(95, 100, windows) and soak.windows_hit(105, 106, windows)
    assert soak.windows_hit(109, 120, windows)
    assert not soak.windows_hit(90, 99.9, windows) and not soak.windows_hit(110.1, 111, windows)
    assert soak.rss_bounded(80, 260) and not soak.rss_bounded(80, 260.1)
