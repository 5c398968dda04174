"""The grants in effect, from every source: the policy files' (kept in git), those a request's
approval made, and admins' direct grants. `EffectiveGrants` is what sessions decide against
(the policy files' `GrantSet` with the store's active grants); the rest is how people are
shown them: `jitproxy access`, `jitproxy grant list` and the workflow's "you already hold
this" answer all read them through here, so a grant reads the same wherever it is shown: what,
until when, its status and where it comes from.
"""

from __future__ import annotations

import asyncio

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from proxy.authz.decide import GrantSet
from proxy.authz.model import Grant, Principal, Privilege
from proxy.store.base import ANY_INSTANCE, Store, StoredGrant
from proxy.workflow.status import ACTIVE, grant_status

POLICY, REQUEST, DIRECT = "policy", "request", "grant"  # a row's `kind`


def to_grant(g: StoredGrant) -> Grant:
    """A store grant as sessions decide with it."""
    return Grant(
        subject=g.subject,
        db=g.db,
        table=g.table,
        privileges=frozenset(Privilege.parse(p) for p in g.privileges),
        expires_at=g.expires_at,
        source=f"store:{g.id}" + (f" (request {g.request_id})" if g.request_id else ""),
        instance=g.instance,
    )


def grant_fields(g: StoredGrant) -> dict[str, Any]:
    """A store grant as recorded (the API's and the audit events' shape)."""
    return {
        "grant_id": g.id,
        "subject": g.subject,
        "instance": g.instance,
        "object": f"{g.db}.{g.table}",
        "privileges": list(g.privileges),
        "expires_at": g.expires_at.isoformat(),
        "created_by": g.created_by,
        "reason": g.reason,
        "request_id": g.request_id,
        "revoked_at": g.revoked_at.isoformat() if g.revoked_at else None,
        "revoked_by": g.revoked_by,
        "revoke_reason": g.revoke_reason,
        "released": g.released,
        "break_glass": g.break_glass,
    }


def stored_row(g: StoredGrant, now: datetime) -> dict[str, Any]:
    """A store grant with its status at `now` and where it comes from."""
    if g.request_id:
        kind, source = REQUEST, f"request {g.request_id}" + (" (break glass)" if g.break_glass else "")
    else:
        kind, source = DIRECT, f"grant {g.id} by {g.created_by}" + (" (break glass)" if g.break_glass else "")
    return {**grant_fields(g), **grant_status(g, now).fields(), "kind": kind, "source": source, "columns": None}


def policy_row(g: Grant) -> dict[str, Any]:
    """A policy-file grant, in the same shape as a store grant's row (no id: it is changed in
    the files, not through the API)."""
    return {
        "grant_id": None,
        "subject": g.subject,
        "instance": g.instance,
        "object": f"{g.db}.{g.table}",
        "privileges": sorted(p.value for p in g.privileges),
        "expires_at": g.expires_at.isoformat() if g.expires_at else None,
        "created_by": None,
        "reason": "",
        "request_id": None,
        "status": ACTIVE,
        "kind": POLICY,
        "source": f"policy file {g.source}",
        "columns": sorted(g.columns) if g.columns is not None else None,
    }


def covering(grants: Iterable[Grant], instance: str, db: str, tables: Sequence[str],
             privileges: Iterable[Privilege], until: datetime) -> list[Grant] | None:
    """Grants that together give every privilege on every table (table "*": the whole
    database) on `instance` until at least `until`; None when some of it is not held. A
    column-restricted grant never covers a whole table."""
    grants = list(grants)
    used: list[Grant] = []
    for table in tables:
        for privilege in privileges:
            found = next((g for g in grants if _covers(g, instance, db, table, privilege, until)), None)
            if found is None:
                return None
            if found not in used:
                used.append(found)
    return used


def _covers(g: Grant, instance: str, db: str, table: str, privilege: Privilege, until: datetime) -> bool:
    return (
        privilege in g.privileges
        and g.columns is None
        and g.instance in (ANY_INSTANCE, instance)
        and g.db in ("*", db)
        and (g.table == "*" or g.table == table)
        and (g.expires_at is None or g.expires_at >= until)
    )


class EffectiveGrants:
    """What sessions decide against: `GrantSet` of the policy files (reloaded on change) and
    the store's active grants (refreshed by `refresh()`). Callable like the policy store."""

    def __init__(self, policies: Callable[[], GrantSet], store: Store | None, clock: Callable[[], datetime]) -> None:
        self.policies = policies
        self.store = store
        self.clock = clock
        self.revision = -1
        self._rows: tuple[StoredGrant, ...] = ()  # the store's active grants, as read
        self._stored: tuple[Grant, ...] = ()  # the same, as sessions decide with them
        # The snapshot it was built from (held, not its id(): a freed object's id is reused).
        self._built_from: tuple[GrantSet, int] | None = None
        self._combined = GrantSet(())

    def __call__(self) -> GrantSet:
        base = self.policies()
        built = self._built_from
        if built is None or built[0] is not base or built[1] != self.revision:
            self._combined = GrantSet(
                (*base.grants, *self._stored), version=f"{base.version}+{self.revision}", masks=base.masks
            )
            self._built_from = (base, self.revision)
        return self._combined

    def reload(self) -> None:
        """Re-read the policy files now (tests and `jitproxy` admin actions)."""
        reload = getattr(self.policies, "reload", None)
        if reload is not None:
            reload()

    async def refresh(self, force: bool = False) -> bool:
        """Fetch the store's active grants if its revision moved. True when something changed."""
        if self.store is None:
            return False
        revision = await asyncio.to_thread(self.store.revision)
        if revision == self.revision and not force:
            return False
        stored = await asyncio.to_thread(self.store.grants, active_at=self.clock())
        self._rows = tuple(stored)
        self._stored = tuple(to_grant(g) for g in stored)
        self.revision = revision
        return True

    def forget_store(self) -> None:
        """The store has been unreachable too long: its grants stop counting (fail closed: a
        revocation made meanwhile cannot have reached us)."""
        self._rows = ()
        self._stored = ()
        self.revision = -1

    def held_by(self, who: Principal) -> list[dict[str, Any]]:
        """Every grant in effect for the person now, as sessions see them (a store the proxy
        stopped trusting counts for nothing here either), each with its source and end: the
        policy files' first, then the store's, for `jitproxy access`."""
        now = self.clock()
        subjects = set(who.subjects)
        return [*(policy_row(g) for g in self.policies().for_principal(who, now)),
                *(stored_row(g, now) for g in self._rows if g.subject in subjects and g.active(now))]
