"""The notation of the README's tested examples (tests/readme_examples.py), without a database:
a mistake in it must fail here, in seconds, not as a puzzling failure of the demo run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.readme_examples import as_at_the_prompt, missing, steps

ROOT = Path(__file__).resolve().parents[2]

SAMPLE = """\
Prose, and an unmarked block that never runs:

```sh
rm -rf /
```

```sh readme-test
export A=1   # a comment for the reader
REQ=$(jitproxy request create --db hr_prod \\
  --table salary --quiet)
# → request $REQ: pending
# → until …T18:00:00
# exit 0
jitproxy request show "$REQ"
# again until it shows this, within 30s
# → expired
jitproxy nonsense
# exit 2
jitproxy login
# meanwhile: sign in as dev at the page it prints
# → signed in as dev
```

```sh readme-test session
mariadb -u dev hr_prod
```

```sql readme-test
MariaDB [hr_prod]> SELECT 1;
| 1 |
MariaDB [hr_prod]> SELECT * FROM salary;
ERROR 1142 (42000): SELECT command denied
```
"""


def test_blocks_become_steps_in_order() -> None:
    found = steps(SAMPLE)
    assert [(s.kind, s.text) for s in found] == [
        ("sh", "export A=1   # a comment for the reader"),
        ("sh", "REQ=$(jitproxy request create --db hr_prod   --table salary --quiet)"),
        ("sh", 'jitproxy request show "$REQ"'),
        ("sh", "jitproxy nonsense"),
        ("sh", "jitproxy login"),
        ("session", "mariadb -u dev hr_prod"),
        ("sql", "SELECT 1;"),
        ("sql", "SELECT * FROM salary;"),
    ]
    create, show, nonsense = found[1:4]
    assert create.expected == ["request $REQ: pending", "until …T18:00:00"] and create.exit_code == 0
    assert show.again_within_s == 30 and show.expected == ["expired"]
    assert nonsense.exit_code == 2 and nonsense.again_within_s is None and nonsense.sign_in_as is None
    assert found[4].sign_in_as == "dev" and found[4].expected == ["signed in as dev"]
    assert found[6].expected == ["| 1 |"] and found[7].expected == ["ERROR 1142 (42000): SELECT command denied"]
    assert found[1].line == 9  # where it starts in the README's line, for failure messages


@pytest.mark.parametrize(("text", "message"), [
    ("```sh readme-test\n# → x\n```\n", "an expectation before any command"),
    ("```sh readme-test\nls\n# exit one\n```\n", "unreadable expectation"),
    ("```sh readme-test\nls\n#→ x\n```\n", "unreadable expectation"),
    ("```sh readme-test\njitproxy login\n# meanwhile: approve it\n```\n", "unreadable expectation"),
    ("```sh readme-test\nls\n", "not closed"),
    ("```python readme-test\nprint()\n```\n", "not python"),
    ("```sh readme-test session\na\nb\n```\n", "one command"),
    ("```sql readme-test\n| 1 |\n```\n", "output before any statement"),
])
def test_a_mistake_in_the_notation_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        steps(text)


def test_fragments_match_one_line_with_values_and_any_spacing() -> None:
    values = {"REQ": "r-1f65", "END": "22:04"}.__getitem__
    output = ("r-1f65  approved  dev              prod   hr_prod.{salary} SELECT until 2026-12-07T22:04:00+00:00\n"
              "  grant g-b601 hr_prod.salary: active\n")
    assert missing(output, ["$REQ approved dev prod … SELECT until …T$END:00", "grant g-… hr_prod.salary"], values) == []
    assert missing(output, ["$REQ revoked"], values) == ["$REQ revoked"]
    assert missing(output, ["approved … hr_prod.salary: active"], values) != []  # … stays on its line
    assert missing("cost: $5 (x*2)\n", ["(x*2)"], values) == []  # the rest is literal


def test_a_piped_clients_errors_read_as_at_its_prompt() -> None:
    assert as_at_the_prompt("ERROR 1142 (42000) at line 3: SELECT command denied\n") == \
        "ERROR 1142 (42000): SELECT command denied\n"


def test_the_readme_reads() -> None:
    found = steps((ROOT / "README.md").read_text(encoding="utf-8"))
    kinds = [s.kind for s in found]
    assert kinds.index("session") < kinds.index("sql")
    # the top of the README: sign in, connect, SQL (issue 18)
    first = next(i for i, s in enumerate(found) if s.kind == "sh" and s.text.startswith("jitproxy login"))
    assert found[first].sign_in_as and found[first + 1].kind == "session" and found[first + 2].kind == "sql"
    assert found[first + 1].text.startswith("jitproxy connect") and first == 1
    assert sum(1 for s in found if s.expected) >= 20
