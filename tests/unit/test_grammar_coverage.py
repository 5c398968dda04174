"""The mysqltest reader and the bookkeeping of bench/grammar_coverage.py, on small made-up
mysqltest snippets (delimiters, --error, blocks, perl, quotes ...) and a tiny suite in a
temporary directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlglot
from sqlglot.errors import ParseError

from tests.helpers import load_bench

gc = load_bench("grammar_coverage")


def kept(text: str, latin1: bool = False) -> list[str]:
    return [s.sql for s in gc.extract(text, latin1) if s.skip is None]


def skipped(text: str) -> list[tuple[str, str]]:
    return [(s.sql, s.skip) for s in gc.extract(text) if s.skip is not None]


# -- statements, comments, commands -----------------------------------------------------------


def test_statements_comments_and_dashed_commands() -> None:
    text = """\
# a comment; with a semicolon
--echo # select 1; is not sent
-- a comment for the reader
--disable_warnings
DROP TABLE IF EXISTS t1;
--enable_warnings
CREATE TABLE t1 (a INT,
  b VARCHAR(10));
select 1; select 2;   # two on a line, then a comment
--source include/have_innodb.inc
let $x = 1;
echo done;
connect (con1,localhost,root,,);
connection con1;
disconnect con1;
sleep 1;
"""
    assert kept(text) == [
        "DROP TABLE IF EXISTS t1",
        "CREATE TABLE t1 (a INT,\n  b VARCHAR(10))",
        "select 1",
        "select 2",
    ]


def test_line_numbers_are_where_the_statement_starts() -> None:
    got = [(s.sql, s.line) for s in gc.extract("# c\n\nSELECT\n 1;\n  SELECT 2;\n")]
    assert got == [("SELECT\n 1", 3), ("SELECT 2", 5)]


def test_multi_line_command_without_dashes_is_not_sql() -> None:
    text = "let $q= SELECT a\n  FROM t1;\nSELECT 3;\n"
    assert kept(text) == ["SELECT 3"]


def test_sql_comment_lines_inside_a_statement_stay() -> None:
    text = "SELECT 1\n# not a mysqltest comment here\n-- nor this\n, 2;\n"
    assert kept(text) == ["SELECT 1\n# not a mysqltest comment here\n-- nor this\n, 2"]


# -- delimiters -------------------------------------------------------------------------------


def test_delimiter_changes_both_spellings() -> None:
    text = """\
delimiter |;
CREATE PROCEDURE p1()
BEGIN
  SELECT 1;
  SELECT 2;
END|
delimiter ;|
--delimiter //
CREATE FUNCTION f() RETURNS INT RETURN 1//
SELECT 'a;b'//
--delimiter ;
SELECT 3;
DELIMITER $$;
SELECT 4$$
DELIMITER ;$$
SELECT 5;
"""
    assert kept(text) == [
        "CREATE PROCEDURE p1()\nBEGIN\n  SELECT 1;\n  SELECT 2;\nEND",
        "CREATE FUNCTION f() RETURNS INT RETURN 1",
        "SELECT 'a;b'",
        "SELECT 3",
        "SELECT 4",
        "SELECT 5",
    ]


def test_delimiter_inside_quotes_does_not_end_the_statement() -> None:
    text = """SELECT 'it''s; here', "x;y", `c;d` FROM t;\nSELECT 'a\\';b';\nSELECT 2;\n"""
    assert kept(text) == ["SELECT 'it''s; here', \"x;y\", `c;d` FROM t", "SELECT 'a\\';b'", "SELECT 2"]


def test_backslash_in_backquotes_and_before_a_quote() -> None:
    text = "create table `a1\\``b1` (a int);\nlet $e= with\\`some\\'quotes;\nSELECT 1;\n"
    assert kept(text) == ["create table `a1\\``b1` (a int)", "SELECT 1"]


def test_sql_mode_decides_what_a_backslash_escapes() -> None:
    text = (
        "set sql_mode=no_backslash_escapes;\nselect \"foo\\\"\"bar\";\nset sql_mode=default;\n"
        "set sql_mode=ansi_quotes;\ncreate table \"a\\\"\"b\" (a int);\nset sql_mode=default;\n"
        "select 'x\\';y';\n"
    )
    assert kept(text)[1] == 'select "foo\\""bar"'
    assert kept(text)[4] == 'create table "a\\""b" (a int)'
    assert kept(text)[-1] == "select 'x\\';y'"


# -- expected errors --------------------------------------------------------------------------


def test_error_skips_only_the_next_statement() -> None:
    text = """\
--error ER_NO_SUCH_TABLE
SELECT * FROM missing;
SELECT 1;
error 1064;
SELEC 2;
SELECT 3;
--error 1050,1051
CREATE TABLE t1 (a INT); SELECT 4;
"""
    assert kept(text) == ["SELECT 1", "SELECT 3", "SELECT 4"]
    assert [why for _, why in skipped(text)] == ["expected_error"] * 3


def test_error_zero_means_success_expected() -> None:
    assert kept("--error 0\nSELECT 1;\n--error 0,ER_PARSE_ERROR\nSELECT 2;\n") == ["SELECT 1"]


def test_error_survives_modifiers_but_not_other_commands() -> None:
    text = """\
--error 1146
--replace_result $MYSQLTEST_VARDIR VARDIR
--sorted_result
SELECT * FROM missing;
--error 1
--exec false
SELECT 1;
"""
    assert kept(text) == ["SELECT 1"]
    assert skipped(text) == [("SELECT * FROM missing", "expected_error")]


def test_error_at_reap_skips_the_statement_sent() -> None:
    text = """\
--send SELECT SLEEP(1)
SELECT 'other';
--reap
send UPDATE t1 SET a = 1;
connection default;
--error ER_LOCK_DEADLOCK
--reap
--send
SELECT 5;
reap;
"""
    assert kept(text) == ["SELECT SLEEP(1)", "SELECT 'other'", "SELECT 5"]
    assert skipped(text) == [("UPDATE t1 SET a = 1", "expected_error")]


def test_disable_abort_on_error_and_disable_parsing() -> None:
    text = """\
--disable_abort_on_error ONCE
garbage;
SELECT 1;
--disable_abort_on_error
SELECT 2;
--enable_abort_on_error
--disable_parsing
SELECT 3;
--enable_parsing
SELECT 4;
"""
    assert kept(text) == ["SELECT 1", "SELECT 4"]
    assert [why for _, why in skipped(text)] == [
        "abort_on_error_disabled", "abort_on_error_disabled", "disabled_parsing"]


# -- eval and variables -----------------------------------------------------------------------


def test_eval_with_variables_is_skipped_and_without_is_kept() -> None:
    text = """\
eval SELECT $x FROM t1;
--eval SELECT '\\$notvar', 1
eval CREATE TABLE t2 (a INT);
--eval SELECT * FROM ${table}
--query_vertical SELECT 9
SELECT 'json $.a', JSON_VALUE(@j, '$.b');
SELECT $y;
SELECT * FROM t$1;
"""
    assert kept(text) == [
        "SELECT '$notvar', 1",
        "CREATE TABLE t2 (a INT)",
        "SELECT 9",
        "SELECT 'json $.a', JSON_VALUE(@j, '$.b')",
        "SELECT * FROM t$1",
    ]
    assert [why for _, why in skipped(text)] == ["eval_variable", "eval_variable", "unresolved_variable"]


def test_has_unresolved_variable() -> None:
    assert gc.has_unresolved_variable("SELECT $a")
    assert gc.has_unresolved_variable("SELECT ${a}")
    assert not gc.has_unresolved_variable("SELECT '$a', \"$b\", `$c`")
    assert not gc.has_unresolved_variable("SELECT a$b, 5$")
    assert gc.has_eval_variable("SELECT '$a'")
    assert not gc.has_eval_variable("SELECT '\\$a'")


# -- blocks -----------------------------------------------------------------------------------


def test_perl_and_write_file_blocks_are_skipped() -> None:
    text = """\
perl;
  print "SELECT 1;\\n";
  my $x = 'unbalanced;
EOF
SELECT 1;
--perl END_OF_PERL
  open(F, ">x"); print F "DROP TABLE t1;";
EOF
END_OF_PERL
write_file $MYSQLTEST_VARDIR/tmp/a.sql;
DROP DATABASE mysql;
EOF
--append_file $MYSQLTEST_VARDIR/tmp/a.sql DONE
DROP TABLE t9;
DONE
SELECT 2;
"""
    assert kept(text) == ["SELECT 1", "SELECT 2"]


def test_if_and_while_blocks() -> None:
    text = """\
let $i= 2;
while ($i)
{
  SELECT 'in while';
  eval INSERT INTO t1 VALUES ($i);
  dec $i;
}
if ($have_x) {
  delimiter |;
  SELECT 'in if'|
}
SELECT 'after';
if (0)
{
  SELECT 'never';
}
if (`SELECT 1`) { SELECT 'inline'; }
"""
    assert kept(text) == ["SELECT 'in while'", "SELECT 'in if'", "SELECT 'after'", "SELECT 'inline'"]
    assert ("SELECT 'never'", "if_0_block") in skipped(text)


def test_multibyte_character_set_is_read_whole() -> None:
    # sjis: 0x95 0x5C is one character; its second byte is a backslash
    sjis = b"--character_set sjis\nSELECT '\x95\x5c';\nSELECT 2;\n".decode("latin-1")
    assert kept(sjis, latin1=True) == ["SELECT '\x95\\'", "SELECT 2"]
    assert kept(sjis.replace("--character_set sjis\n", ""), latin1=True) == []  # the quote never ends


def test_unterminated_statement_at_the_end() -> None:
    assert skipped("SELECT 1;\nSELECT 2") == [("SELECT 2", "unterminated")]
    assert skipped("SELECT 1;\necho no delimiter") == []


# -- classification ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sql", "keyword"),
    [
        ("select 1", "SELECT"),
        ("  (SELECT 1) UNION (SELECT 2)", "SELECT"),
        ("/* note */ insert into t values (1)", "INSERT"),
        ("/*!40101 SET NAMES utf8 */", "SET"),
        ("/*M!100101 create table t (a int) */", "CREATE"),
        ("# c\nupdate t set a=1", "UPDATE"),
        ("-- c\ndelete from t", "DELETE"),
        ("/* only a comment */", "?"),
        ("'a string'", "?"),
    ],
)
def test_first_keyword(sql: str, keyword: str) -> None:
    assert gc.first_keyword(sql) == keyword


def test_groups_and_heads() -> None:
    assert gc.group_of("WITH") == "DML" and gc.group_of("REPLACE") == "DML"
    assert gc.group_of("TRUNCATE") == "DDL" and gc.group_of("SHOW") == "other"
    assert gc.statement_head("CREATE OR REPLACE DEFINER=root@localhost VIEW v AS SELECT 1", "CREATE") == "CREATE VIEW"
    assert gc.statement_head("create temporary table if not exists t (a int)", "CREATE") == "CREATE TABLE"
    assert gc.statement_head("CREATE AGGREGATE FUNCTION f() RETURNS INT", "CREATE") == "CREATE FUNCTION"
    assert gc.statement_head("SELECT 1", "SELECT") == "SELECT"


def test_cause_of_a_sqlglot_error_and_of_a_jitproxy_detail() -> None:
    with pytest.raises(ParseError) as info:
        sqlglot.parse_one("SELECT (1 FROM t1", read="mysql")
    cause = gc.cause_of(info.value, "the statement could not be parsed (line 1, column 9)")
    assert cause.startswith("sqlglot: Expecting )")

    class Denied(Exception):  # shaped like proxy.authz.outcome.Denied
        code = "parse_error"

    try:
        try:
            raise info.value
        except ParseError:
            raise Denied("x") from None
    except Denied as wrapped:
        assert gc.cause_of(wrapped, "x") == cause  # the ParseError behind it
    assert gc.cause_of(None, "no SQL statement starts with GARBAGE 12") == (
        "jitproxy: no SQL statement starts with GARBAGE N")
    assert gc.cause_of(KeyError("k"), "the statement could not be analyzed").startswith(
        "analyzer exception KeyError")


# -- measuring --------------------------------------------------------------------------------


def test_measurer_outcomes_and_it_leaves_the_analyzer_as_it_was() -> None:
    from proxy.authz import analyze as analyze_module

    before = analyze_module.denied
    with gc.Measurer("test", timeout=5, max_bytes=1000) as m:
        assert m.measure("SELECT 1").outcome == "allowed"
        assert m.measure("UPDATE t1 SET a = 1").outcome == "allowed"  # unbounded writes granted
        assert m.measure("GRANT ALL ON *.* TO x").outcome == "unsupported_statement"
        bad = m.measure("GARBAGE 1")
        assert bad.outcome == "parse_error" and bad.cause and bad.cause.startswith("jitproxy:")
        bad = m.measure("SELECT (1 FROM t1")
        assert bad.outcome == "parse_error" and bad.cause and bad.cause.startswith("sqlglot")
        assert m.measure("SELECT '" + "x" * 2000 + "'").outcome == "skipped_oversize"
        assert m.measure("SELECT 1") is m.measure("SELECT 1")  # once per distinct text
    assert analyze_module.denied is before


def test_run_and_main_on_a_tiny_suite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite = tmp_path / "main"
    suite.mkdir()
    (suite / "a.test").write_text(
        "SELECT 1;\nSELECT 1;\n--error 1146\nSELECT * FROM nope;\nGARBAGE 1;\nGRANT ALL ON *.* TO x;\n"
    )
    (suite / "b.test").write_bytes(b"SELECT '\xe9';\nCREATE TABLE t1 (a INT);\n")  # not UTF-8
    (suite / "notes.txt").write_text("SELECT 2;\n")
    report_path, failures_path = tmp_path / "out.json", tmp_path / "fail.txt"
    rc = gc.main(["--tests-dir", str(suite), "--report", str(report_path),
                  "--failures-file", str(failures_path)])
    assert rc == 0
    report = json.loads(report_path.read_text())
    assert report["files"] == 2 and report["files_not_utf8"] == 1
    assert report["statements"] == 6 and report["distinct_statements"] == 5
    assert report["skipped"] == {"expected_error": 1}
    assert report["outcomes"] == {"allowed": 4, "parse_error": 1, "unsupported_statement": 1}
    assert report["by_keyword"]["SELECT"]["statements"] == 3
    assert report["groups"]["DDL"]["statements"] == 1
    assert report["examples"]["GARBAGE"]["parse_error"][0]["at"] == "a.test:5"
    assert report["parse_error_patterns"][0]["count"] == 1
    assert [json.loads(line) for line in failures_path.read_text().splitlines()] == ["GARBAGE 1"]
    assert "parse_error" in capsys.readouterr().out


def test_main_says_what_to_install_when_the_suite_is_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert gc.main(["--tests-dir", str(tmp_path / "nowhere")]) == 2
    assert "mariadb-test" in capsys.readouterr().err


def test_expects_error_codes() -> None:
    assert gc.expects_error("1064") and gc.expects_error("ER_PARSE_ERROR,0") and gc.expects_error("$err")
    assert not gc.expects_error("0") and not gc.expects_error("0;") and not gc.expects_error("0, 0")


def test_decoding_keeps_utf8_lines_and_reads_the_others_byte_for_byte() -> None:
    text, mixed = gc.decode_test_file("SELECT 'пер';\n".encode() + b"SELECT '\xe9';\n")
    assert mixed and text == "SELECT 'пер';\nSELECT '\xe9';\n"
    assert gc.decode_test_file("SELECT 'é';".encode()) == ("SELECT 'é';", False)


def test_a_statement_over_the_time_limit_is_interrupted() -> None:
    from proxy.authz import analyze as analyze_module

    big = "INSERT INTO t1 VALUES " + ", ".join(f"({i}, 'x{i}')" for i in range(3000))
    with gc.Measurer("test", timeout=0.000001, max_bytes=1_000_000) as m:
        assert m.measure(big).outcome == "timeout"
    with gc.Measurer("test", timeout=0, max_bytes=1_000_000) as m:  # 0: no limit
        assert m.measure(big).outcome == "allowed"
    assert analyze_module.analyze(big, "test").deny is None  # nothing left behind
