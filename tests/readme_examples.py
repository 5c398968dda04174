"""The README's examples as steps to run: the fenced blocks marked `readme-test` (see the
README's "Tests" section for the notation), read in order.

- ```` ```sh readme-test ````: shell commands, one a line (a line ending in `\\` goes on),
  each followed by comment lines that say what it must do:
  `# → text` it prints text (`…` stands for anything on that line; `$NAME` is the shell
  variable's value at that moment), `# exit N` its exit code (else 0), `# again until it shows
  this, within 30s` run it again until it does (a poll with a deadline, never a fixed sleep),
  `# meanwhile: sign in as NAME at the page it prints` what a person does while it runs (the
  page `jitproxy login` prints: tests/idp_page.py). Other comments are for the reader.
- ```` ```sh readme-test session ````: the command that opens the MySQL client session the
  ```` ```sql readme-test ```` blocks after it type into (until the next session block): lines
  `MariaDB [db]> statement` and, after each, the lines it must print (each a `# →` fragment
  without the prefix).

Kept apart from the test that runs them so the notation is checked without a database
(tests/unit/test_readme_examples.py)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

_FENCE = re.compile(r"^```(\w+)\s+readme-test(?:\s+(session))?\s*$")
_PROMPT = re.compile(r"^MariaDB \[[^\]]*\]> (.*)$")
_EXPECT = "# → "
_EXIT = re.compile(r"^# exit (\d+)$")
_AGAIN = re.compile(r"^# again until it shows this, within (\d+)s$")
_MEANWHILE = re.compile(r"^# meanwhile: sign in as (\S+) at the page it prints$")
_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


@dataclass
class Step:
    kind: str  # "sh": a shell command; "session": open the client session; "sql": a statement in it
    text: str
    line: int  # in the README, for the failure message
    expected: list[str] = field(default_factory=list)
    exit_code: int = 0
    again_within_s: float | None = None
    sign_in_as: str | None = None  # meanwhile, at the IdP's page the command prints


def steps(markdown: str) -> list[Step]:
    """Every marked block's steps, in the README's order."""
    out: list[Step] = []
    for kind, first_line, body in _blocks(markdown):
        if kind == "sql":
            out.extend(_sql_steps(body, first_line))
        else:
            found = list(_sh_steps(body, first_line))
            if kind == "session":
                if len(found) != 1 or found[0].expected:
                    raise ValueError(f"README line {first_line}: a session block holds one command and no expectations")
                found[0].kind = "session"
            out.extend(found)
    return out


def _blocks(markdown: str) -> Iterator[tuple[str, int, list[str]]]:
    """(kind, line of the block's first line, its lines) of each marked block."""
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        i += 1
        if not match:
            continue
        language, session = match.groups()
        if language not in ("sh", "sql") or (session and language != "sh"):
            raise ValueError(f"README line {i}: readme-test blocks are sh, sh ... session or sql, not {language}")
        start = i
        while i < len(lines) and not lines[i].startswith("```"):
            i += 1
        if i == len(lines):
            raise ValueError(f"README line {start}: the readme-test block is not closed")
        yield ("session" if session else language), start + 1, lines[start:i]
        i += 1


def _sh_steps(body: list[str], first_line: int) -> Iterator[Step]:
    step: Step | None = None
    pending, started = "", 0
    for number, line in enumerate(body, first_line):
        if pending or (line.strip() and not line.startswith("#")):
            started = started or number
            pending += line[:-1] if line.endswith("\\") else line  # as bash reads backslash-newline
            if line.endswith("\\"):
                continue
            if step is not None:
                yield step
            # a trailing `# comment` stays: bash skips it
            step, pending, started = Step("sh", pending.strip(), started), "", 0
            continue
        if not line.startswith("#"):
            continue
        if step is None:
            raise ValueError(f"README line {number}: an expectation before any command")
        _expectation(step, line, number)
    if step is not None:
        yield step


def _expectation(step: Step, line: str, number: int) -> None:
    if line.startswith(_EXPECT):
        step.expected.append(line[len(_EXPECT):])
    elif match := _EXIT.match(line):
        step.exit_code = int(match.group(1))
    elif match := _AGAIN.match(line):
        step.again_within_s = float(match.group(1))
    elif match := _MEANWHILE.match(line):
        step.sign_in_as = match.group(1)
    elif line.startswith(("# exit", "# again", "# meanwhile", "# →", "#→")):
        raise ValueError(f"README line {number}: unreadable expectation {line!r}")


def _sql_steps(body: list[str], first_line: int) -> Iterator[Step]:
    step: Step | None = None
    for number, line in enumerate(body, first_line):
        prompt = _PROMPT.match(line)
        if prompt:
            if step is not None:
                yield step
            step = Step("sql", prompt.group(1), number)
        elif line.strip():
            if step is None:
                raise ValueError(f"README line {number}: output before any statement")
            step.expected.append(line)
    if step is not None:
        yield step


def pattern(fragment: str, value: Callable[[str], str]) -> re.Pattern[str]:
    """`fragment` as a pattern over one line of output: `…` is anything on that line, `$NAME`
    the shell variable's value (from `value`), and any run of spaces matches any other (tables
    are padded to their widest cell, which the README need not copy)."""
    parts = []
    for piece in fragment.split("…"):
        text = _VARIABLE.sub(lambda m: "\0" + m.group(1) + "\0", piece)
        pieces = text.split("\0")
        escaped = [re.escape(value(p)) if i % 2 else _spaces(re.escape(p)) for i, p in enumerate(pieces)]
        parts.append("".join(escaped))
    return re.compile("[^\n]*?".join(parts))


def _spaces(escaped: str) -> str:
    return re.sub(r"(?:\\ )+", " +", escaped)


def missing(output: str, expected: list[str], value: Callable[[str], str]) -> list[str]:
    """The expected fragments that `output` does not show."""
    return [fragment for fragment in expected if not pattern(fragment, value).search(output)]


def as_at_the_prompt(output: str) -> str:
    """A piped client's output as its prompt shows it: errors there name no input line."""
    return re.sub(r"^(ERROR \d+ \(\w+\)) at line \d+:", r"\1:", output, flags=re.MULTILINE)
