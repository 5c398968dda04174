"""Grammar coverage against SQL nobody here wrote: MariaDB's own mysql-test suite.

    .venv/bin/python bench/grammar_coverage.py [--tests-dir DIR] [--recursive]
        [--report out.json] [--failures-file parse_errors.txt] [--max-bytes 100000]
        [--timeout 5] [--examples 20] [--top 15] [--patterns 30]

1. Reads every `*.test` file of --tests-dir (default: where Debian's `mariadb-test-data`, pulled
   in by `mariadb-test`, puts the main suite). Nothing is installed here: a missing directory is
   an error that says which package brings it.
2. Extracts the SQL statements with a reader of the mysqltest language (`extract`, pure,
   tested in tests/unit/test_grammar_coverage.py): the current delimiter (`delimiter X`,
   `--delimiter X`), `--command` lines, `#` comments, commands without `--` (let, echo, source,
   connect, if/while blocks, perl / write_file / append_file blocks up to their terminator ...).
   Not measured, and counted by reason: statements expected to fail (`--error` / `error` with a
   code other than 0 before them, or before the `reap` of a `send`), `eval` statements that use
   `$variables`, statements with an unresolved `$variable` outside quotes, those between
   `--disable_parsing` and `--enable_parsing`, those run while `--disable_abort_on_error` is in
   force (errors are ignored there), and those in `if (0)` blocks (never run). The statements
   kept are what the suite sends to a server that answers them without an error (the file's
   own server, in the session state the file set up: a statement after `SET NAMES sjis` or
   `SET sql_mode=ANSI_QUOTES` is analyzed as it is, although jitproxy would have refused that
   SET). Lines that are not UTF-8 are read as Latin-1, byte for byte.
3. Analyzes each distinct statement text once with the pure analyzer,
   `proxy.authz.analyze.analyze(sql, "test")` (not the proxy, so no analysis cache in between:
   the cache lives in proxy.server), then `decide`s it for a person holding ALL on *.* with
   unbounded writes allowed, so that only refusals the grants cannot lift remain. Outcomes:
   `allowed`, or the deny code (parse_error: sqlglot or jitproxy's reader could not read it;
   unsupported_statement; every other code by name). Statements over --max-bytes are not
   analyzed (outcome `skipped_oversize`); a statement still running after --timeout seconds is
   interrupted with SIGALRM (best effort: the handler runs between Python bytecodes; outcome
   `timeout`).
4. Prints a table per first keyword, the DML / DDL / other split, and the most frequent
   parse-error causes (sqlglot's error message and the token it stopped at, found by wrapping
   `proxy.authz.analyze.denied` for the duration of the run to see the exception being
   handled; the analysis itself is unchanged). --report writes all of it as JSON with up to
   --examples statements per (keyword, outcome); --failures-file writes every distinct
   statement refused as parse_error, one per line as a JSON string (a corpus to work from).

Counts are per statement occurrence in the suite ("statements"); "distinct" counts each
statement text once.
"""

from __future__ import annotations

import argparse
import bisect
import json
import re
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_TESTS_DIR = Path("/usr/share/mysql/mysql-test/main")
PACKAGE_HINT = "Debian's mariadb-test (its mariadb-test-data installs the suite)"

# -- the mysqltest language ---------------------------------------------------------------------

# mysqltest's commands (client/mysqltest.cc, command_names), lower case. A query whose first
# word is one of these (or starts with enable_ / disable_ / replace_) is a command, not SQL.
COMMANDS = frozenset(
    """
    connection query connect sleep real_sleep inc dec source disconnect let echo while end
    system result require save_master_pos sync_with_master sync_slave_with_master error send
    reap dirty_close ping eval evalp exec execw exec_in_background delimiter vertical_results
    horizontal_results query_vertical query_horizontal sorted_result partially_sorted_result
    lowercase_result start_timer end_timer character_set if remove_file file_exists write_file
    copy_file perl die exit skip chmod append_file cat_file diff_files send_quit change_user
    mkdir rmdir force-rmdir force-cpdir list_files list_files_write_file list_files_append_file
    send_shutdown shutdown_server result_format move_file remove_files_wildcard
    copy_files_wildcard send_eval output reset_connection write_line wait_for_slave_to_stop
    """.split()
)
_COMMAND_PREFIXES = ("enable_", "disable_", "replace_")
# Commands that do not use up a pending `--error` (it is for the next statement they modify).
_MODIFIERS = frozenset(
    """
    echo sorted_result partially_sorted_result lowercase_result vertical_results
    horizontal_results result_format send character_set
    """.split()
)
# Commands whose argument is a statement sent to the server.
_QUERY_COMMANDS = frozenset(
    {"query", "eval", "evalp", "send", "send_eval", "query_vertical", "query_horizontal"}
)
_EVAL_COMMANDS = frozenset({"eval", "evalp", "send_eval"})
_SEND_COMMANDS = frozenset({"send", "send_eval"})
# Commands followed by raw lines up to a terminator line (default EOF); which argument names it.
_BLOCK_COMMANDS = {"perl": 0, "write_file": 1, "append_file": 1}

_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:-[A-Za-z]+)?")
_BLOCK_HEAD = re.compile(r"\s*(?:if|while)\b", re.IGNORECASE)
_SET_SQL_MODE = re.compile(
    r"\s*SET\s+(?:SESSION\s+|LOCAL\s+|@@SESSION\.|@@LOCAL\.|@@)?SQL_MODE\s*:?=\s*(.*)", re.I | re.S
)
_ANSI_QUOTES_MODES = r"\b(?:ANSI_QUOTES|ANSI|ORACLE|POSTGRESQL|MSSQL|DB2|MAXDB)\b"
_VARIABLE = re.compile(r"\$(?:[A-Za-z_]|\{)")

SKIP_EXPECTED_ERROR = "expected_error"
SKIP_EVAL_VARIABLE = "eval_variable"
SKIP_VARIABLE = "unresolved_variable"
SKIP_DISABLED_PARSING = "disabled_parsing"
SKIP_UNTERMINATED = "unterminated"
SKIP_ABORT_ON_ERROR = "abort_on_error_disabled"
SKIP_DEAD_BLOCK = "if_0_block"

# `--character_set X` makes mysqltest read multi-byte characters of X as one: a second byte of
# 0x5C (backslash) or a quote does not count. Lead bytes, for files read as Latin-1.
_MB_LEAD: dict[str, Callable[[int], bool]] = {
    "sjis": lambda b: 0x81 <= b <= 0x9F or 0xE0 <= b <= 0xFC,
    "cp932": lambda b: 0x81 <= b <= 0x9F or 0xE0 <= b <= 0xFC,
    "gbk": lambda b: 0x81 <= b <= 0xFE,
    "big5": lambda b: 0x81 <= b <= 0xFE,
    "gb18030": lambda b: 0x81 <= b <= 0xFE,
}


@dataclass(frozen=True)
class Statement:
    """One statement of a test file: `sql` as sent to the server, the 1-based `line` it starts
    on, `via` the command that sends it ("sql" for a plain one), and `skip`: why it is not
    measured (None: measured)."""

    sql: str
    line: int
    via: str = "sql"
    skip: str | None = None


def is_command_word(word: str) -> bool:
    w = word.lower()
    return w in COMMANDS or w.startswith(_COMMAND_PREFIXES)


def expects_error(args: str) -> bool:
    """`--error 1064`, `error ER_PARSE_ERROR,0;`: True unless every listed code is 0 (success
    expected). A code given as a $variable counts as an error."""
    codes = [c.strip() for c in re.split(r"[,\s]+", args.strip().rstrip(";")) if c.strip()]
    return not codes or any(c not in ("0", "S00000") for c in codes)


def unescape_eval(text: str) -> str:
    """What `eval` sends once no $variable is left: `\\$`, `\\\\` and `\\"` lose the backslash."""
    return re.sub(r"\\([\\$\"])", r"\1", text)


def has_eval_variable(text: str) -> bool:
    """An `eval` argument substitutes $name and ${name} anywhere, quotes included; `\\$` is a
    literal dollar."""
    return re.search(r"(?<!\\)\$(?:[A-Za-z_]|\{)", text) is not None


def has_unresolved_variable(sql: str) -> bool:
    """`$name` / `${name}` outside quotes and not inside a name (`t$1` is a table): mysqltest
    sends a plain statement as it is, so such a statement reaches the server unresolved."""
    quote = None
    i = 0
    while i < len(sql):
        ch = sql[i]
        if quote:
            if ch == "\\" and quote != "`":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "'\"`":
            quote = ch
        elif ch == "$" and _VARIABLE.match(sql, i) and not (i and (sql[i - 1].isalnum() or sql[i - 1] in "_$")):
            return True
        i += 1
    return False


def first_keyword(sql: str) -> str:
    """The statement's first word, upper case, after leading blanks, `(`, comments and the
    opening of an executable comment (`/*!50001 CREATE ...*/`, `/*M!100101 ...*/`); "?" when
    it starts with no word."""
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch.isspace() or ch == "(":
            i += 1
        elif sql.startswith("/*", i):
            m = re.match(r"/\*(?:M?!\d*)", sql[i:])
            if m:
                i += m.end()
                continue
            end = sql.find("*/", i + 2)
            if end < 0:
                return "?"
            i = end + 2
        elif ch == "#" or sql.startswith("-- ", i) or sql.startswith("--\t", i) or sql.startswith("--\n", i):
            end = sql.find("\n", i)
            if end < 0:
                return "?"
            i = end + 1
        else:
            m = _WORD.match(sql, i)
            return m.group(0).split("-")[0].upper() if m else "?"
    return "?"


def extract(text: str, latin1: bool = False) -> list[Statement]:
    """Every statement of a mysqltest file, in order, the skipped ones included (see
    `Statement.skip`). Follows mysqltest's reader: a query runs up to the current delimiter
    outside quotes (`'`, `"`, backquotes; a backslash escapes the next character inside `'` and
    `"`, as the session's sql_mode says: not with NO_BACKSLASH_ESCAPES, not in `"` with
    ANSI_QUOTES); at the start of a
    query, `#` starts a comment line and `--` a one-line command (or comment); `if (...)` and
    `while (...)` end at their `{`, and a `}` closes the block, restoring the delimiter in force
    when it opened. `latin1`: the text is the file's bytes read as Latin-1, so that
    `--character_set sjis|gbk|big5` can be followed (a multi-byte character is read whole)."""
    return _Reader(text, latin1).run()


class _Reader:
    def __init__(self, text: str, latin1: bool = False) -> None:
        self.text = text
        self.latin1 = latin1
        self.mb_lead: Callable[[int], bool] | None = None
        self.blocks: list[tuple[str, bool]] = []  # (delimiter at the opening, dead: `if (0)`)
        self.abort_on_error = True
        self.abort_once = False
        # The session's sql_mode, as far as the reader needs it (MDEV-13187): a backslash
        # escapes nothing with NO_BACKSLASH_ESCAPES, nor in a "name" with ANSI_QUOTES.
        self.backslash_escapes = True
        self.ansi_quotes = False
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.delimiter = ";"
        self.pending_error = False
        self.pending_send = False
        self.parsing_disabled = False
        self.last_send: int | None = None
        self.out: list[Statement] = []

    def line_of(self, pos: int) -> int:
        return bisect.bisect_left(self.newlines, pos) + 1

    def end_of_line(self, pos: int) -> int:
        """The position just after the newline ending the line that holds `pos`."""
        nl = self.text.find("\n", pos)
        return len(self.text) if nl < 0 else nl + 1

    def run(self) -> list[Statement]:
        text, n = self.text, len(self.text)
        pos = 0
        while pos < n:
            ch = text[pos]
            if ch.isspace():
                pos += 1
            elif ch == "#":
                pos = self.end_of_line(pos)
            elif text.startswith("--", pos):
                eol = self.end_of_line(pos)
                line = self.line_of(pos)
                block = self.dashed(text[pos + 2:eol].rstrip("\r\n"), line)
                pos = self.skip_block(eol, block) if block else eol
            elif ch == "}":
                pos += 1  # the end of an if / while block
                if self.blocks:
                    self.delimiter = self.blocks.pop()[0]
            else:
                pos = self.query(pos)
        return self.out

    def query(self, start: int) -> int:
        """Reads one query from `start`; returns where the next one starts."""
        text, n, delim, mb_lead = self.text, len(self.text), self.delimiter, self.mb_lead
        block_head = _BLOCK_HEAD.match(text, start) is not None
        quote = None
        i = start
        end = -1
        while i < n:
            ch = text[i]
            if mb_lead is not None and mb_lead(ord(ch)) and ord(ch) < 256:
                i += 2
                continue
            if quote:
                if ch == "\\" and self.backslash_escapes and (
                    quote == "'" or (quote == '"' and not self.ansi_quotes)
                ):
                    i += 2
                    continue
                if ch == quote:
                    quote = None
            elif text.startswith(delim, i):
                end, after = i, i + len(delim)
                break
            elif ch in "'\"`":
                if i == start or text[i - 1] != "\\":  # mysqltest: `\'` opens no quote
                    quote = ch
            elif ch == "{" and block_head:
                end, after = i, i + 1
                break
            i += 1
        line = self.line_of(start)
        if end < 0:  # no delimiter before the end of the file
            body = text[start:].strip()
            if body:
                word = _first_word(body)
                if not is_command_word(word):
                    self.out.append(Statement(body, line, skip=SKIP_UNTERMINATED))
            return n
        body = text[start:end].strip()
        if not body:
            return after
        word = _first_word(body)
        if is_command_word(word):
            args = body[len(word):].strip()
            if text[end:after] == "{":  # if (...) { / while (...) {
                self.blocks.append((self.delimiter, self.dead() or _dead_condition(args)))
            block = self.command(word.lower(), args, line)
            if block:
                return self.skip_block(self.end_of_line(after - 1), block)
            return after
        self.statement(body, line, "sql")
        return after

    def dashed(self, rest: str, line: int) -> str | None:
        """A `--...` line (without the dashes); returns a block terminator to skip to."""
        m = _WORD.match(rest)
        if not m or not is_command_word(m.group(0)):
            return None  # `-- a comment`, `--#`, an unknown word
        word = m.group(0)
        return self.command(word.lower(), rest[len(word):].strip(), line)

    def command(self, word: str, args: str, line: int) -> str | None:
        """Applies a mysqltest command; returns the terminator of the block it opens, if any."""
        if word == "delimiter":
            if args:
                self.delimiter = args.split()[0]
            return None
        if word == "character_set":
            name = args.rstrip(";").strip().lower()
            self.mb_lead = _MB_LEAD.get(name) if self.latin1 else None
            return None
        if word in ("disable_abort_on_error", "enable_abort_on_error"):
            once = args.rstrip(";").strip().upper() == "ONCE"
            if word == "enable_abort_on_error":
                self.abort_on_error, self.abort_once = True, False
            elif once:
                self.abort_once = True
            else:
                self.abort_on_error = False
            return None
        if word == "error":
            self.pending_error = expects_error(args)
            return None
        if word == "disable_parsing":
            self.parsing_disabled = True
            return None
        if word == "enable_parsing":
            self.parsing_disabled = False
            return None
        if word in _QUERY_COMMANDS and args:
            self.statement(args, line, word)
            return None
        if word in _SEND_COMMANDS:  # a bare `send`: the next statement is sent
            self.pending_send = True
            return None
        if word == "reap":
            if self.pending_error and self.last_send is not None:
                s = self.out[self.last_send]
                if s.skip is None:
                    self.out[self.last_send] = Statement(s.sql, s.line, s.via, SKIP_EXPECTED_ERROR)
            self.pending_error = False
            self.last_send = None
            return None
        if word in _BLOCK_COMMANDS:
            parts = args.rstrip(";").split()
            index = _BLOCK_COMMANDS[word]
            self.pending_error = False
            return parts[index] if len(parts) > index else "EOF"
        if word not in _MODIFIERS and not word.startswith(_COMMAND_PREFIXES):
            self.pending_error = False
        return None

    def statement(self, sql: str, line: int, via: str) -> None:
        skip = None
        sent = self.pending_send or via in _SEND_COMMANDS
        if via in _EVAL_COMMANDS:
            if has_eval_variable(sql):
                skip = SKIP_EVAL_VARIABLE
            sql = unescape_eval(sql)
        if self.parsing_disabled:
            skip = SKIP_DISABLED_PARSING
        elif self.dead():
            skip = SKIP_DEAD_BLOCK
        elif self.pending_error:
            skip = SKIP_EXPECTED_ERROR
        elif not self.abort_on_error or self.abort_once:
            skip = SKIP_ABORT_ON_ERROR
        elif skip is None and has_unresolved_variable(sql):
            skip = SKIP_VARIABLE
        self.pending_error = False
        self.abort_once = False
        self.pending_send = False
        self.out.append(Statement(sql, line, via, skip))
        if skip is None:
            m = _SET_SQL_MODE.match(sql)
            if m:
                mode = m.group(1).upper()
                self.backslash_escapes = "NO_BACKSLASH_ESCAPES" not in mode
                self.ansi_quotes = re.search(_ANSI_QUOTES_MODES, mode) is not None
        if sent:
            self.last_send = len(self.out) - 1

    def dead(self) -> bool:
        return bool(self.blocks) and self.blocks[-1][1]

    def skip_block(self, pos: int, terminator: str) -> int:
        """Skips raw lines from `pos` through the line that is exactly `terminator`."""
        text, n = self.text, len(self.text)
        while pos < n:
            eol = self.end_of_line(pos)
            if text[pos:eol].strip() == terminator:
                return eol
            pos = eol
        return n


def _dead_condition(head_args: str) -> bool:
    """`if (0)` / `while (0)`: a block mysqltest never runs (test writers use it to switch
    statements off)."""
    return re.fullmatch(r"\(\s*0\s*\)", head_args.strip()) is not None


def _first_word(body: str) -> str:
    m = _WORD.match(body)
    return m.group(0) if m else ""


# -- classification -----------------------------------------------------------------------------

DML = frozenset({"SELECT", "WITH", "INSERT", "UPDATE", "DELETE", "REPLACE", "TABLE", "VALUES"})
DDL = frozenset({"CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE"})
_OBJECT_WORDS = frozenset(
    """
    TABLE TABLES VIEW INDEX PROCEDURE FUNCTION TRIGGER EVENT DATABASE SCHEMA USER ROLE SEQUENCE
    SERVER TABLESPACE LOGFILE PACKAGE AGGREGATE
    """.split()
)


def group_of(keyword: str) -> str:
    return "DML" if keyword in DML else "DDL" if keyword in DDL else "other"


def statement_head(sql: str, keyword: str) -> str:
    """The keyword, and for CREATE / ALTER / DROP the kind of object (CREATE OR REPLACE
    DEFINER=x VIEW -> CREATE VIEW; CREATE TEMPORARY TABLE -> CREATE TABLE)."""
    if keyword not in ("CREATE", "ALTER", "DROP"):
        return keyword
    for word in re.findall(r"[A-Za-z_]+", sql[:300])[1:14]:
        w = word.upper()
        if w in _OBJECT_WORDS:
            if w == "AGGREGATE":
                w = "FUNCTION"
            elif w == "TABLES":
                w = "TABLE"
            return f"{keyword} {w}"
    return keyword


# -- parse-error causes -------------------------------------------------------------------------


def _token_shape(text: str, keywords: frozenset[str]) -> str:
    t = text.strip()
    if not t:
        return "<end>"
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_$]*", t):
        up = t.upper()
        if up in keywords:
            return up
        if any(c.isdigit() for c in t) or len(t) <= 2:
            return "<name>"
        return up
    if re.fullmatch(r"[0-9.eE+-]+|0x[0-9a-fA-F]+", t):
        return "<number>"
    if t[0] in "'\"":
        return "<string>"
    if t[0] == "`":
        return "<quoted name>"
    if t[0] in "@":
        return "<@variable>"
    return t[:20]


def _normalize_detail(detail: str) -> str:
    d = re.sub(r"'[^']*'|`[^`]*`|\"[^\"]*\"", "'…'", detail)
    d = re.sub(r"\(line \d+, column \d+\)", "", d)
    return re.sub(r"\d+", "N", d).strip()


def cause_of(exc: BaseException | None, detail: str, keywords: frozenset[str] = frozenset()) -> str:
    """A short cause for a parse_error: sqlglot's message and the token it stopped at, or the
    exception / jitproxy detail with names and numbers generalized."""
    seen = 0
    while exc is not None and hasattr(exc, "code") and seen < 5:
        inner = exc.__cause__ or exc.__context__
        if inner is None or not type(inner).__name__.endswith(("ParseError", "TokenError")):
            break
        exc, seen = inner, seen + 1
    if exc is not None and type(exc).__name__ == "ParseError":
        errors = getattr(exc, "errors", None) or []
        if errors and isinstance(errors[0], dict):
            e = errors[0]
            desc = re.sub(r"\s+", " ", str(e.get("description") or "")).strip()
            desc = re.sub(r"<class 'sqlglot\.expressions\.(?:\w+\.)*(\w+)'>", r"\1", desc)
            return f"sqlglot: {desc} at {_token_shape(str(e.get('highlight') or ''), keywords)}"
        return "sqlglot: " + _normalize_detail(str(exc).splitlines()[0] if str(exc) else "ParseError")
    if exc is not None and type(exc).__name__ == "TokenError":
        return "sqlglot tokenizer: " + _normalize_detail(str(exc).splitlines()[0][:80])
    if exc is not None and not hasattr(exc, "code") and not isinstance(exc, RecursionError):
        return f"analyzer exception {type(exc).__name__}: {_normalize_detail(str(exc)[:80])}"
    return "jitproxy: " + _normalize_detail(detail)


# -- the run ------------------------------------------------------------------------------------

OUTCOME_ALLOWED = "allowed"
OUTCOME_OVERSIZE = "skipped_oversize"
OUTCOME_TIMEOUT = "timeout"


class _StatementTimeout(BaseException):
    """Raised by SIGALRM; a BaseException so that the analyzer's `except Exception` lets it by."""


@dataclass
class Result:
    outcome: str
    detail: str = ""
    cause: str | None = None
    seconds: float = 0.0


class Measurer:
    """analyze + decide for a person holding ALL on *.*, one analysis per distinct text."""

    def __init__(self, db: str, timeout: float, max_bytes: int) -> None:
        from proxy.authz import analyze as analyze_module
        from proxy.authz.decide import GrantSet, decide
        from proxy.authz.model import ALL_PRIVILEGES, Grant, Principal
        from proxy.authz.lexer import DIALECT

        self._module = analyze_module
        self._analyze = analyze_module.analyze
        self._decide = decide
        self.db = db
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.principal = Principal("coverage")
        self.grants = GrantSet(
            [Grant("user:coverage", "*", "*", frozenset(ALL_PRIVILEGES), allow_unbounded_writes=True,
                   source="bench/grammar_coverage.py")],
            "coverage",
        )
        self.now = datetime.now(timezone.utc)
        self.keywords = frozenset(k for k in DIALECT.tokenizer_class.KEYWORDS if " " not in k)
        self.cache: dict[str, Result] = {}
        self._captured: list[BaseException | None] = []
        self._alarm = timeout > 0 and hasattr(signal, "setitimer") and (
            threading.current_thread() is threading.main_thread()
        )

    def __enter__(self) -> Measurer:
        original = getattr(self._module, "denied", None)
        self._original_denied = original
        if original is not None:
            captured = self._captured

            def denied(*args: Any, **kwargs: Any) -> Any:
                captured.append(sys.exc_info()[1])
                return original(*args, **kwargs)

            self._module.denied = denied
        if self._alarm:
            self._previous_handler = signal.signal(signal.SIGALRM, _raise_timeout)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._original_denied is not None:
            self._module.denied = self._original_denied
        if self._alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self._previous_handler)

    def measure(self, sql: str) -> Result:
        found = self.cache.get(sql)
        if found is None:
            found = self._measure(sql)
            self.cache[sql] = found
        return found

    def _measure(self, sql: str) -> Result:
        if len(sql.encode("utf-8", "surrogateescape")) > self.max_bytes:
            return Result(OUTCOME_OVERSIZE, f"over {self.max_bytes} bytes")
        self._captured.clear()
        started = time.perf_counter()
        try:
            if self._alarm:
                signal.setitimer(signal.ITIMER_REAL, self.timeout)
            try:
                analysis = self._analyze(sql, self.db)
                decision = self._decide(analysis, self.principal, self.grants, self.now)
            finally:
                if self._alarm:
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except _StatementTimeout:
            return Result(OUTCOME_TIMEOUT, f"over {self.timeout}s", seconds=time.perf_counter() - started)
        seconds = time.perf_counter() - started
        if decision.allowed:
            return Result(OUTCOME_ALLOWED, seconds=seconds)
        code = decision.code.value if decision.code is not None else "unknown"
        cause = None
        if code == "parse_error":
            exc = next((e for e in self._captured if e is not None), None)
            cause = cause_of(exc, decision.reason, self.keywords)
        return Result(code, decision.reason, cause, seconds)


def _raise_timeout(signum: int, frame: object) -> None:
    raise _StatementTimeout()


def decode_test_file(data: bytes) -> tuple[str, bool]:
    """A test file's text, and whether some of it is not UTF-8: such lines (bytes in sjis, gbk,
    latin1 ... that the test sends as they are) are read as Latin-1, byte for byte, and the
    UTF-8 lines around them as UTF-8."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        pass
    lines = []
    for raw in data.split(b"\n"):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(raw.decode("latin-1"))
    return "\n".join(lines), True


def read_test_file(path: Path) -> tuple[str, bool]:
    return decode_test_file(path.read_bytes())


def find_tests(tests_dir: Path, recursive: bool) -> list[Path]:
    return sorted(tests_dir.rglob("*.test") if recursive else tests_dir.glob("*.test"))


def pct(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 2) if whole else 0.0


def run(
    files: Iterable[Path],
    base: Path,
    measurer: Measurer,
    examples: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    files = list(files)
    t0 = time.perf_counter()
    extracted: list[tuple[str, Statement]] = []
    skipped: Counter[str] = Counter()
    not_utf8 = 0
    for path in files:
        text, latin1 = read_test_file(path)
        not_utf8 += latin1
        name = str(path.relative_to(base)) if path.is_relative_to(base) else str(path)
        for s in extract(text, latin1):
            if s.skip:
                skipped[s.skip] += 1
            else:
                extracted.append((name, s))
    t_extract = time.perf_counter() - t0

    by_keyword: dict[str, Counter[str]] = defaultdict(Counter)
    by_head: dict[str, Counter[str]] = defaultdict(Counter)
    by_group: dict[str, Counter[str]] = defaultdict(Counter)
    distinct_by_group: dict[str, Counter[str]] = defaultdict(Counter)
    outcomes: Counter[str] = Counter()
    distinct_outcomes: Counter[str] = Counter()
    example_map: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    patterns: dict[str, dict[str, Any]] = {}
    causes: Counter[str] = Counter()
    failures: list[str] = []
    seen: set[str] = set()
    timed: list[tuple[float, str, str]] = []
    t1 = time.perf_counter()
    for n, (name, s) in enumerate(extracted):
        if progress and n and n % 20000 == 0:
            progress(f"{n}/{len(extracted)} statements, {time.perf_counter() - t1:.0f}s")
        keyword = first_keyword(s.sql)
        group = group_of(keyword)
        fresh = s.sql not in seen
        r = measurer.measure(s.sql)
        by_keyword[keyword][r.outcome] += 1
        head = statement_head(s.sql, keyword)
        by_head[head][r.outcome] += 1
        by_group[group][r.outcome] += 1
        outcomes[r.outcome] += 1
        where = f"{name}:{s.line}"
        if fresh:
            seen.add(s.sql)
            distinct_outcomes[r.outcome] += 1
            distinct_by_group[group][r.outcome] += 1
            timed.append((r.seconds, where, s.sql))
            if r.outcome != OUTCOME_ALLOWED:
                bucket = example_map[keyword][r.outcome]
                if len(bucket) < examples:
                    bucket.append({"sql": s.sql[:2000], "at": where, "detail": r.detail, "cause": r.cause})
            if r.outcome == "parse_error":
                failures.append(s.sql)
        if r.outcome == "parse_error":
            cause = r.cause or "jitproxy: " + _normalize_detail(r.detail)
            causes[cause] += 1
            key = f"{head} | {cause}"
            p = patterns.setdefault(key, {"pattern": key, "count": 0, "distinct": 0, "examples": []})
            p["count"] += 1
            if fresh:
                p["distinct"] += 1
                if len(p["examples"]) < 3:
                    p["examples"].append({"sql": s.sql[:500], "at": where})
    t_analyze = time.perf_counter() - t1

    total = sum(outcomes.values())
    timed.sort(key=lambda x: -x[0])
    return {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": len(files),
        "files_not_utf8": not_utf8,
        "statements": total,
        "distinct_statements": len(seen),
        "skipped": dict(skipped.most_common()),
        "seconds": {"extract": round(t_extract, 2), "analyze": round(t_analyze, 2)},
        "outcomes": dict(outcomes.most_common()),
        "distinct_outcomes": dict(distinct_outcomes.most_common()),
        "parse_error_share": pct(outcomes["parse_error"], total),
        "parse_error_share_distinct": pct(distinct_outcomes["parse_error"], len(seen)),
        "groups": {
            g: {
                "statements": sum(c.values()),
                "outcomes": dict(c.most_common()),
                "parse_error_share": pct(c["parse_error"], sum(c.values())),
                "distinct_statements": sum(distinct_by_group[g].values()),
                "parse_error_share_distinct": pct(
                    distinct_by_group[g]["parse_error"], sum(distinct_by_group[g].values())
                ),
            }
            for g, c in sorted(by_group.items())
        },
        "by_keyword": {
            k: {"statements": sum(c.values()), "outcomes": dict(c.most_common()),
                "parse_error_share": pct(c["parse_error"], sum(c.values()))}
            for k, c in sorted(by_keyword.items(), key=lambda kv: -sum(kv[1].values()))
        },
        "by_head": {
            h: {"statements": sum(c.values()), "outcomes": dict(c.most_common())}
            for h, c in sorted(by_head.items(), key=lambda kv: -sum(kv[1].values()))
        },
        "parse_error_causes": [{"cause": c, "count": n} for c, n in causes.most_common()],
        "parse_error_patterns": sorted(patterns.values(), key=lambda p: (-p["count"], p["pattern"])),
        "slowest": [{"seconds": round(t, 4), "at": w, "sql": q[:300]} for t, w, q in timed[:10]],
        "examples": {k: dict(v) for k, v in sorted(example_map.items())},
        "_failures": failures,
    }


def summary(report: dict[str, Any], top: int, n_patterns: int) -> str:
    out: list[str] = []
    total = report["statements"]
    out.append(
        f"{report['files']} .test files ({report['files_not_utf8']} with lines not in UTF-8, read as "
        "Latin-1); "
        f"{total} statements measured ({report['distinct_statements']} distinct); skipped: "
        + ", ".join(f"{k} {v}" for k, v in report["skipped"].items())
    )
    out.append(
        f"time: extract {report['seconds']['extract']}s, analyze+decide {report['seconds']['analyze']}s"
    )
    out.append("")
    out.append("outcomes (ALL on *.*): " + ", ".join(
        f"{k} {v} ({pct(v, total)}%)" for k, v in report["outcomes"].items()))
    out.append(
        f"parse_error: {report['parse_error_share']}% of statements, "
        f"{report['parse_error_share_distinct']}% of distinct statements"
    )
    for g, d in report["groups"].items():
        out.append(
            f"  {g:<5} {d['statements']:>7} statements: parse_error {d['parse_error_share']}% "
            f"(distinct: {d['parse_error_share_distinct']}% of {d['distinct_statements']}); "
            f"allowed {pct(d['outcomes'].get('allowed', 0), d['statements'])}%"
        )
    out.append("")
    header = f"{'keyword':<14}{'stmts':>8}{'allowed':>9}{'parse%':>8}{'unsup%':>8}  other"
    out.append(header)
    out.append("-" * len(header))
    for k, d in list(report["by_keyword"].items())[:top]:
        o, n = d["outcomes"], d["statements"]
        other = {c: v for c, v in o.items() if c not in ("allowed", "parse_error", "unsupported_statement")}
        out.append(
            f"{k:<14}{n:>8}{pct(o.get('allowed', 0), n):>8}%{pct(o.get('parse_error', 0), n):>7}%"
            f"{pct(o.get('unsupported_statement', 0), n):>7}%  "
            + ", ".join(f"{c} {v}" for c, v in sorted(other.items(), key=lambda kv: -kv[1]))
        )
    out.append("")
    ranked = sorted(
        ((k, d) for k, d in report["by_keyword"].items() if d["outcomes"].get("parse_error")),
        key=lambda kd: -kd[1]["outcomes"]["parse_error"],
    )
    out.append("parse_error by first keyword (most first): " + ", ".join(
        f"{k} {d['outcomes']['parse_error']} ({d['parse_error_share']}% of {d['statements']})"
        for k, d in ranked[:top]))
    out.append("")
    out.append(f"top parse_error causes (of {report['outcomes'].get('parse_error', 0)}):")
    for c in report["parse_error_causes"][:top]:
        out.append(f"  {c['count']:>6}  {c['cause']}")
    out.append("")
    out.append(f"top {n_patterns} parse_error patterns (statement head | cause: statements, distinct):")
    for p in report["parse_error_patterns"][:n_patterns]:
        ex = p["examples"][0]["sql"].replace("\n", " ")[:110] if p["examples"] else ""
        out.append(f"  {p['count']:>6} {p['distinct']:>5}  {p['pattern']}")
        out.append(f"                 e.g. {ex}")
    out.append("")
    refused = Counter()
    for h, d in report["by_head"].items():
        for code, v in d["outcomes"].items():
            if code not in ("allowed", "parse_error"):
                refused[(h, code)] += v
    out.append("other refusals by statement head (they may hide parse errors behind them):")
    out.append("  " + ", ".join(f"{h} {code} {v}" for (h, code), v in refused.most_common(top)))
    out.append("")
    out.append("slowest statements:")
    for s in report["slowest"][:5]:
        out.append(f"  {s['seconds']:.3f}s {s['at']}: {s['sql'][:90]!r}")
    return "\n".join(out)


def analyzer_version() -> dict[str, str]:
    """What was measured: sqlglot's version and a digest of proxy/authz/*.py as they are on disk
    (the working tree may differ from any commit), so two reports can be told apart."""
    import hashlib

    import sqlglot

    digest = hashlib.sha256()
    for path in sorted((ROOT / "proxy" / "authz").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return {"sqlglot": sqlglot.__version__, "proxy_authz_sha256": digest.hexdigest()[:16]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tests-dir", type=Path, default=DEFAULT_TESTS_DIR,
                    help=f"a mysql-test suite directory of *.test files (default {DEFAULT_TESTS_DIR})")
    ap.add_argument("--recursive", action="store_true", help="also *.test files in subdirectories")
    ap.add_argument("--db", default="test", help="the current database for every statement")
    ap.add_argument("--report", type=Path, help="write the full report as JSON here")
    ap.add_argument("--failures-file", type=Path,
                    help="write every distinct parse_error statement here, one JSON string a line")
    ap.add_argument("--max-bytes", type=int, default=100_000, help="statements longer are not analyzed")
    ap.add_argument("--timeout", type=float, default=5.0,
                    help="interrupt one statement's analysis after this many seconds (0: never)")
    ap.add_argument("--examples", type=int, default=20, help="examples per (keyword, outcome)")
    ap.add_argument("--top", type=int, default=15, help="keywords and causes in the printed table")
    ap.add_argument("--patterns", type=int, default=30, help="parse_error patterns printed")
    ap.add_argument("--limit-files", type=int, default=0, help="only the first N files (a quick look)")
    opts = ap.parse_args(argv)

    tests_dir: Path = opts.tests_dir
    files = find_tests(tests_dir, opts.recursive) if tests_dir.is_dir() else []
    if not files:
        print(
            f"grammar_coverage: no *.test files in {tests_dir}. Install {PACKAGE_HINT} "
            "(apt-get install mariadb-test) or pass --tests-dir.",
            file=sys.stderr,
        )
        return 2
    if opts.limit_files:
        files = files[: opts.limit_files]

    import logging

    logging.getLogger("sqlglot").setLevel(logging.ERROR)
    started = time.perf_counter()
    with Measurer(opts.db, opts.timeout, opts.max_bytes) as measurer:
        report = run(files, tests_dir, measurer, opts.examples,
                     progress=lambda m: print(f"  ... {m}", file=sys.stderr, flush=True))
    report["tests_dir"] = str(tests_dir)
    report["analyzer"] = analyzer_version()
    report["seconds"]["total"] = round(time.perf_counter() - started, 2)
    failures = report.pop("_failures")
    print(summary(report, opts.top, opts.patterns))
    print(f"\ntotal {report['seconds']['total']}s; analyzer {report['analyzer']}")
    if opts.report:
        opts.report.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        print(f"report: {opts.report}")
    if opts.failures_file:
        with opts.failures_file.open("w", encoding="utf-8", errors="surrogateescape") as f:
            for sql in failures:
                f.write(json.dumps(sql, ensure_ascii=False) + "\n")
        print(f"parse_error statements: {opts.failures_file} ({len(failures)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
