"""Load grants from the YAML policy files in `policies/` (GitOps).

A policy file:

    grants:
      - subject: user:dev            # or group:oncall
        grant: hr_prod.employee      # db.table, db.* or *.*
        privileges: [SELECT]         # or ALL
        expires_at: 2026-12-31T00:00:00Z   # optional
        columns: [id, name]          # optional: only these columns (db.table objects, and
                                     # SELECT / INSERT / UPDATE only); SELECT * is then denied
        instance: hr-prod            # optional: only on this upstream instance (default '*': all)

Overlapping entries for one subject and object are an error at load time, so nobody has to
guess which expiry wins (Vitess does the same).

Masks (a restriction, never a grant) show some columns of a table masked to some subjects:

    masks:
      - subject: group:contractors
        table: hr_prod.employee
        columns: {ssn: partial, email: hash, salary: redact}

A masked column may be read only as a plain item of a SELECT's select list (`SELECT ssn`,
`SELECT e.ssn AS s`, or through `*`); used anywhere else (WHERE, JOIN, ORDER BY, GROUP BY, an
expression, a subquery, a write) the statement is denied, since its value could be inferred.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from proxy.authz.model import ALL_PRIVILEGES, COLUMN_PRIVILEGES, Grant, Mask, MaskMethod, Privilege
from proxy.authz.names import canonical_table, split_qualified

_SUBJECT = re.compile(r"^(user|group):[A-Za-z0-9._@-]{1,80}$")
# Masked columns are matched by name: ASCII only, so no accent- or case-folding the server does
# (utf8mb3_general_ci: `śsn` names `ssn`) can hide one; statements get the same rule.
_COLUMN = re.compile(r"^[A-Za-z0-9_$]{1,64}$")
_KEYS = {
    "subject", "grant", "privileges", "expires_at", "max_rows", "allow_unbounded_writes", "columns", "instance"
}


_MASK_KEYS = {"subject", "table", "columns"}


class PolicyError(ValueError):
    pass


@dataclass(frozen=True)
class LoadedPolicy:
    grants: list[Grant]
    masks: list[Mask]
    digest: str  # of every file's name and content: the policy version


def split_object(text: str) -> tuple[str, str]:
    """`db.table` (backquotes allowed: `` `my-db`.`t` ``), `db.*` or `*.*` → (db, table), named by
    the same rule the analyzer uses for SQL (proxy.authz.names)."""
    try:
        db, table = split_qualified(text.strip())
    except ValueError as e:
        raise PolicyError(f"grant object {text!r}: {e}") from None
    if table is None:
        raise PolicyError(f"grant object {text!r} must be db.table, db.* or *.*")
    if db == "*" and table != "*":
        raise PolicyError(f"grant object {text!r}: *.table is not allowed, use *.*")
    if db == "*":
        return db, table
    ref = canonical_table(db, None if table == "*" else table)
    return ref.db, table if table == "*" else ref.table  # type: ignore[return-value]


def parse_expiry(value: Any, where: str) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        dt = value
    else:
        try:
            dt = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            raise PolicyError(f"{where}: expires_at {value!r} is not an ISO 8601 time") from None
    if dt.tzinfo is None:
        raise PolicyError(f"{where}: expires_at must carry a time zone (e.g. ...Z)")
    return dt.astimezone(timezone.utc)


def parse_privileges(value: Any, where: str) -> frozenset[Privilege]:
    if value == "ALL" or value == ["ALL"]:
        return ALL_PRIVILEGES
    if not isinstance(value, list) or not value:
        raise PolicyError(f"{where}: privileges must be a non-empty list or ALL")
    try:
        return frozenset(Privilege.parse(str(p)) for p in value)
    except ValueError as e:
        raise PolicyError(f"{where}: {e}") from None


def _positive_int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PolicyError(f"{where}: max_rows must be a positive integer")
    return value


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"{where}: allow_unbounded_writes must be true or false")
    return value


def parse_columns(
    value: Any, where: str, db: str, table: str, privileges: frozenset[Privilege]
) -> frozenset[str] | None:
    """`columns: [id, name]`: identifiers as written, compared case-insensitively (MySQL's rule
    for column names), stored lower case."""
    if value is None:
        return None
    if db == "*" or table == "*":
        raise PolicyError(f"{where}: columns need a db.table object, not {db}.{table}")
    extra = privileges - COLUMN_PRIVILEGES
    if extra:
        names = ", ".join(sorted(p.value for p in extra))
        raise PolicyError(
            f"{where}: columns apply to SELECT, INSERT and UPDATE only (not {names}); "
            "put the other privileges in their own entry for another object or drop columns"
        )
    if not isinstance(value, list) or not value:
        raise PolicyError(f"{where}: columns must be a non-empty list of column names")
    out: set[str] = set()
    for name in value:
        if (
            not isinstance(name, str)
            or not name
            or len(name) > 64
            or name != name.strip()
            or name == "*"
            or "`" in name
        ):
            raise PolicyError(f"{where}: column {name!r} is not a column name")
        out.add(name.lower())
    return frozenset(out)


# environments / approval_policies are read by proxy.workflow.approvals.
_TOP_LEVEL = {"grants", "masks", "environments", "approval_policies"}


def _check_top_level(doc: Any, source: str) -> None:
    if not isinstance(doc, dict) or set(doc) - _TOP_LEVEL:
        extra = sorted(set(doc) - _TOP_LEVEL) if isinstance(doc, dict) else []
        raise PolicyError(f"{source}: top level keys are {sorted(_TOP_LEVEL)} (unknown: {extra})")


def _subject(entry: dict[str, Any], where: str) -> str:
    subject = str(entry["subject"])
    if not _SUBJECT.match(subject):
        raise PolicyError(f"{where}: subject {subject!r} must be user:NAME or group:NAME")
    return subject


def _entries(
    doc: Any, source: str, section: str, keys: set[str], required: set[str]
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, entry) for each entry of a top-level list, its keys checked."""
    if doc is None:
        return
    _check_top_level(doc, source)
    entries = doc.get(section) or []
    if not isinstance(entries, list):
        raise PolicyError(f"{source}: '{section}' must be a list")
    for i, entry in enumerate(entries):
        where = f"{source}: {section}[{i}]"
        if not isinstance(entry, dict):
            raise PolicyError(f"{where} must be a mapping")
        unknown = set(entry) - keys
        if unknown:
            raise PolicyError(f"{where}: unknown key(s) {sorted(unknown)}")
        missing = required - set(entry)
        if missing:
            raise PolicyError(f"{where}: missing key(s) {sorted(missing)}")
        yield where, entry


def masks_from_document(doc: Any, source: str) -> list[Mask]:
    out: list[Mask] = []
    methods = ", ".join(m.value for m in MaskMethod)
    for where, entry in _entries(doc, source, "masks", _MASK_KEYS, _MASK_KEYS):
        subject = _subject(entry, where)
        try:
            db, table = split_object(str(entry["table"]))
        except PolicyError as e:
            raise PolicyError(f"{where}: {e}") from None
        if db == "*" or table == "*":
            raise PolicyError(f"{where}: masks name one table (db.table), not {db}.{table}")
        columns = entry["columns"]
        if not isinstance(columns, dict) or not columns:
            raise PolicyError(f"{where}: columns must map column names to a method ({methods})")
        parsed: dict[str, MaskMethod] = {}
        for name, method in columns.items():
            if not isinstance(name, str) or not name.isascii() or not _COLUMN.match(name):
                raise PolicyError(f"{where}: column {name!r} is not an ASCII column name")
            try:
                parsed[name.lower()] = MaskMethod(str(method).lower())
            except ValueError:
                raise PolicyError(f"{where}: column {name}: method {method!r} is not one of {methods}") from None
        out.append(Mask(subject, db, table, tuple(sorted(parsed.items())), source))
    return out


def grants_from_document(doc: Any, source: str) -> list[Grant]:
    out: list[Grant] = []
    for where, entry in _entries(doc, source, "grants", _KEYS, {"subject", "grant", "privileges"}):
        subject = _subject(entry, where)
        try:
            db, table = split_object(str(entry["grant"]))
        except PolicyError as e:
            raise PolicyError(f"{where}: {e}") from None
        privileges = parse_privileges(entry["privileges"], where)
        out.append(
            Grant(
                subject=subject,
                db=db,
                table=table,
                privileges=privileges,
                expires_at=parse_expiry(entry.get("expires_at"), where),
                source=source,
                max_rows=_positive_int(entry.get("max_rows"), where),
                allow_unbounded_writes=_flag(entry.get("allow_unbounded_writes", False), where),
                columns=parse_columns(entry.get("columns"), where, db, table, privileges),
                instance=_instance(entry.get("instance", "*"), where),
            )
        )
    return out


def _instance(value: Any, where: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"\*|[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", value):
        raise PolicyError(f"{where}: instance {value!r} must be an upstream instance name or '*'")
    return value


def check_mask_overlaps(masks: Iterable[Mask]) -> None:
    seen: dict[tuple[str, str, str], Mask] = {}
    for m in masks:
        key = (m.subject, m.db, m.table)
        if key in seen:
            raise PolicyError(
                f"{m.subject} has two masks for {m.db}.{m.table} ({seen[key].source} and {m.source}); "
                "merge the entries"
            )
        seen[key] = m


def check_overlaps(grants: Iterable[Grant]) -> None:
    seen: dict[tuple[str, str, str, str], Grant] = {}
    for g in grants:
        key = (g.subject, g.db, g.table, g.instance)
        if key in seen:
            other = seen[key]
            raise PolicyError(
                f"{g.subject} is granted {g.db}.{g.table} twice ({other.source} and {g.source}); "
                "merge the entries"
            )
        seen[key] = g


def load_policy_dir(directory: Path) -> LoadedPolicy:
    """All `*.yaml`/`*.yml` files of a directory → grants, masks and a content digest."""
    if not directory.is_dir():
        raise PolicyError(f"policy directory {directory} does not exist")
    digest = hashlib.sha256()
    grants: list[Grant] = []
    masks: list[Mask] = []
    for path in sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")]):
        text = path.read_text(encoding="utf-8")
        digest.update(path.name.encode() + b"\0" + text.encode() + b"\0")
        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise PolicyError(f"{path}: invalid YAML: {e}") from None
        grants.extend(grants_from_document(doc, str(path)))
        masks.extend(masks_from_document(doc, str(path)))
    check_overlaps(grants)
    check_mask_overlaps(masks)
    return LoadedPolicy(grants, masks, digest.hexdigest()[:16])
