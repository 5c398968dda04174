"""Decide an analyzed statement against a grants snapshot at a given instant. Pure."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime

from proxy.authz.model import (
    Analysis,
    Decision,
    DenyCode,
    Grant,
    Principal,
    Requirement,
    StatementKind,
)


class GrantSet:
    """An immutable snapshot of every grant in effect (policies ∪ store), indexed by subject.

    `version` changes whenever the content changes; caches key on it.
    """

    __slots__ = ("_by_subject", "version", "grants")

    def __init__(self, grants: Iterable[Grant], version: str = "0") -> None:
        self.grants: tuple[Grant, ...] = tuple(grants)
        by_subject: dict[str, list[Grant]] = defaultdict(list)
        for g in self.grants:
            by_subject[g.subject].append(g)
        self._by_subject = {k: tuple(v) for k, v in by_subject.items()}
        self.version = version

    def for_principal(self, principal: Principal, now: datetime) -> list[Grant]:
        out: list[Grant] = []
        for subject in principal.subjects:
            out.extend(g for g in self._by_subject.get(subject, ()) if g.active(now))
        return out


def decide(analysis: Analysis, principal: Principal, grants: GrantSet, now: datetime) -> Decision:
    if analysis.kind is StatementKind.DENIED:
        assert analysis.deny is not None
        return Decision(False, analysis, analysis.deny.code, analysis.deny.detail)

    held = grants.for_principal(principal, now)

    for db in sorted(analysis.database_access):
        if not any(g.db in ("*", db) for g in held):
            return Decision(
                False,
                analysis,
                DenyCode.DATABASE_ACCESS,
                f"no access to database '{db}'",
            )

    used: list[Grant] = []
    missing: list[Requirement] = []
    for req in sorted(analysis.requirements):
        grant = next((g for g in held if g.covers(req)), None)
        if grant is None:
            missing.append(req)
        else:
            used.append(grant)
    if missing:
        what = ", ".join(str(r) for r in missing)
        return Decision(
            False, analysis, DenyCode.MISSING_GRANT, f"missing {what}", tuple(missing), tuple(used)
        )
    return Decision(True, analysis, used_grants=tuple(used))


def databases_visible(principal: Principal, grants: GrantSet, now: datetime) -> frozenset[str] | None:
    """Databases the person holds any grant in; None means every database (a `*` grant)."""
    dbs: set[str] = set()
    for g in grants.for_principal(principal, now):
        if g.db == "*":
            return None
        dbs.add(g.db)
    return frozenset(dbs)


def tables_visible(
    principal: Principal, grants: GrantSet, now: datetime, db: str
) -> frozenset[str] | None:
    """Tables of `db` the person holds any grant on; None means all of them."""
    tables: set[str] = set()
    for g in grants.for_principal(principal, now):
        if g.db not in ("*", db):
            continue
        if g.table == "*":
            return None
        tables.add(g.table)
    return frozenset(tables)
