"""Statement sets read from files: the authorization corpus (tests/authz/corpus/*.yaml),
translated onto the scratch schema, and this suite's own `extra_cases.yaml`.

The translation renames databases only (`hr_prod` → `diff_a`, the other databases the corpus
names → `diff_b` / `diff_c`); table names stay, and the scratch schema has the corpus's main
tables (employee, title, salary, department) with every column the corpus uses. The column pass
translates `hr_prod` → `diff_d` instead, where the same tables are granted column by column
(`COLUMN_DATABASE_MAP`); `column_cases.yaml` holds hand-written statements for it. Expectations in
the corpus are ignored: here MariaDB is the oracle. A case whose current database has no
counterpart is skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.differential.harness import Case

CORPUS_DIR = Path(__file__).parents[1] / "authz" / "corpus"
EXTRA_CASES = Path(__file__).with_name("extra_cases.yaml")

DATABASE_MAP = {
    "hr_prod": "diff_a",
    "hr_test": "diff_c",
    "payroll": "diff_b",
    "vault": "diff_b",
    "other": "diff_b",
    "sandbox": "diff_c",
}
COLUMN_DATABASE_MAP = {**DATABASE_MAP, "hr_prod": "diff_d"}
COLUMN_CASES = Path(__file__).with_name("column_cases.yaml")
# Current databases the person can be in (None: no database selected). Neither MariaDB nor
# jitproxy lets them into diff_b (the corpus's USE cases check that), so a case that starts
# there describes a session that cannot exist.
RUNNABLE_DBS = {None, "diff_a", "diff_c", "diff_d", "information_schema"}
_NAME = re.compile(r"(?<![\w$@])(" + "|".join(DATABASE_MAP) + r")(?![\w$])", re.IGNORECASE)


def translate_sql(sql: str, mapping: dict[str, str] = DATABASE_MAP) -> str:
    def rename(match: re.Match[str]) -> str:
        word = match.group(1)
        target = mapping[word.lower()]
        return target.upper() if word.isupper() else target

    return _NAME.sub(rename, sql)


def translate_db(db: str | None, mapping: dict[str, str] = DATABASE_MAP) -> str | None:
    if db is None:
        return None
    if db.lower() == "information_schema":
        return "information_schema"
    return mapping.get(db, db)


def corpus_cases(mapping: dict[str, str] = DATABASE_MAP) -> tuple[list[Case], int]:
    """(translated cases, number skipped). Reads whatever the corpus holds today."""
    cases: list[Case] = []
    skipped = 0
    for path in sorted(CORPUS_DIR.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        default_db = doc.get("db")
        for index, entry in enumerate(doc.get("cases") or []):
            if not isinstance(entry, dict) or not isinstance(entry.get("sql"), str) or entry.get("never_run"):
                skipped += 1  # never_run: the statement harms a real server (e.g. crashes MariaDB)
                continue
            db = translate_db(entry["db"] if "db" in entry else default_db, mapping)
            if db not in RUNNABLE_DBS:
                skipped += 1
                continue
            name = f"{path.stem}:{entry.get('name', index)}"
            cases.append(Case(name, translate_sql(entry["sql"], mapping), db))
    return cases, skipped


def extra_cases(path: Path = EXTRA_CASES, prefix: str = "extra") -> list[Case]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    default_db = doc.get("db")
    return [
        Case(f"{prefix}:{entry['name']}", entry["sql"], entry.get("db", default_db))
        for entry in doc["cases"]
    ]


def column_cases() -> list[Case]:
    return extra_cases(COLUMN_CASES, "columns")


VIEW_CASES = Path(__file__).with_name("view_cases.yaml")


def view_cases() -> list[Case]:
    return extra_cases(VIEW_CASES, "views")
