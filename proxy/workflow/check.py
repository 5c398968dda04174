"""The dry run (`jitproxy check`, POST /v1/check): what the proxy would decide for a person's
statement at a given moment, with the grants in effect then, and which grant decides.

The grants are those sessions decide with (proxy.workflow.runtime.EffectiveGrants): the policy
files' and the state store's (approved requests, direct grants). A store grant counts when it is
in effect at that moment: made by then, not yet at its end, not revoked or given back by then.
The policy files are read as they are now, also for a moment in the past.

What a dry run cannot see unless it asks the database: the proxy reads a view as what its
definition reads (proxy.authz.views, from the instance's information_schema). The API's dry run
does that through the proxy's own view catalog; one run from the config files alone decides with
the statement as written, and says so (`views`). A `*` over a masked table is expanded from the
live schema only when the statement runs.

`run` makes the report (JSON-able: what the API answers); `lines` is how the CLI shows it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from proxy.authz.analyze import analyze
from proxy.authz.decide import GrantSet, decide, visibility
from proxy.authz.masking import Masker, MaskingError, by_table, mask_select
from proxy.authz.metadata import MetadataError, restrict_metadata
from proxy.authz.model import Analysis, Decision, DenyCode, Principal
from proxy.store.base import Store, StoredGrant
from proxy.workflow.grants import to_grant

# What a dry run without the database says of views (the API's says which it read).
VIEWS_NOT_READ = ("not read here: a view is decided as a table (the proxy also needs grants on what its "
                  "definition reads: `jitproxy check --api` asks it)")


def in_effect(grant: StoredGrant, at: datetime) -> bool:
    """Whether a store grant gives access at `at` (in the past or the future)."""
    return grant.created_at <= at < grant.expires_at and (grant.revoked_at is None or at < grant.revoked_at)


def stored_for(store: Store, principal: Principal) -> list[StoredGrant]:
    """The store's grants for the person or one of their groups, whenever in effect (one query
    per subject: a person's history, never the whole table)."""
    return [g for subject in principal.subjects for g in store.grants(subject=subject)]


def grants_at(policy: GrantSet, stored: Iterable[StoredGrant], at: datetime) -> GrantSet:
    """The policy files' grants and masks with the store grants in effect at `at`."""
    live = [to_grant(g) for g in stored if in_effect(g, at)]
    return GrantSet((*policy.grants, *live), version=f"{policy.version}+check", masks=policy.masks)


def run(sql: str, db: str | None, principal: Principal, analysis: Analysis, grants: GrantSet, at: datetime, *,
        instance: str, environment: str | None, views: str, hint: Callable[[Decision], str]) -> dict[str, Any]:
    """Decide `analysis` (of `sql`, its views expanded or not: `views` says) as a session of
    `principal` on `instance` would at `at`, with `grants` (already those of the instance)."""
    decision = decide(analysis, principal, grants, at)
    held = grants.for_principal(principal, at)
    report: dict[str, Any] = {
        "user": principal.user, "groups": list(principal.groups), "instance": instance, "db": db,
        "at": at.isoformat(), "environment": environment,
        "statement_class": analysis.statement_class, "kind": analysis.kind.value,
        "requires": [str(r) for r in sorted(analysis.requirements)],
        "databases": sorted(analysis.database_access),
        "views": views,
        "grants_held": {"policy": sum(not _stored(g.source) for g in held), "store": sum(_stored(g.source) for g in held)},
        "masked": [f"{t}.{c} ({m.value})" for t, c, m in decision.masks],
        "forwarded": None,
    }
    if decision.masks:
        report["forwarded"], decision = _masked(sql, db, analysis, decision)
    if decision.allowed and analysis.metadata_tables:
        report["metadata"] = sorted(f"information_schema.{t}" for t in analysis.metadata_tables)
        try:
            report["forwarded"], _ = restrict_metadata(sql, db, visibility(principal, grants, at))
        except MetadataError as e:
            decision = Decision(False, analysis, DenyCode.METADATA, str(e))
    report.update(
        decision="allow" if decision.allowed else "deny",
        granted_by=[{"subject": g.subject, "object": f"{g.db}.{g.table}",
                     "expires_at": g.expires_at.isoformat() if g.expires_at else None, "source": g.source}
                    for g in decision.used_grants] if decision.allowed else [],
        max_rows=decision.max_rows if decision.allowed else None,
        reason_code=None if decision.allowed else (decision.code.value if decision.code else None),
        reason=None if decision.allowed else decision.reason,
        missing=[str(r) for r in decision.missing],
        hint=None if decision.allowed else (hint(decision) or None),
    )
    return report


def lines(report: dict[str, Any]) -> list[str]:
    """The report as `jitproxy check` prints it."""
    out = [f"masked:     {', '.join(report['masked'])}"] if report["masked"] else []
    out.append(f"decision:   {'ALLOW' if report['decision'] == 'allow' else 'DENY'}")
    who = report["user"] + (f" (groups: {', '.join(report['groups'])})" if report["groups"] else "")
    held = report["grants_held"]
    out.append(f"as:         {who} on {report['instance']} at {report['at']}, with {held['policy']} policy-file "
               f"and {held['store']} store grant(s) of theirs in effect then")
    out.append(f"statement:  {report['statement_class']} ({report['kind']})"
               + (f" in {report['environment']}" if report.get("environment") else ""))
    if report["requires"]:
        out.append("requires:   " + "; ".join(report["requires"]))
    if report["databases"]:
        out.append("databases:  " + ", ".join(report["databases"]))
    out.append(f"views:      {report['views']}")
    if report["decision"] == "allow":
        for g in report["granted_by"]:
            out.append(f"granted by: {g['subject']} {g['object']} ({g['expires_at'] or 'no expiry'}) in {g['source']}")
        if report["max_rows"] is not None:
            out.append(f"max rows:   {report['max_rows']} (a longer result is cut with error 1104)")
        if report.get("metadata"):
            out.append(f"metadata:   {', '.join(report['metadata'])} restricted to granted objects")
        if report["forwarded"] is not None:
            out.append(f"forwarded:  {report['forwarded']}")
        return out
    out.append(f"reason:     {report['reason_code'] or '?'}: {report['reason']}")
    if report["missing"]:
        out.append("missing:    " + "; ".join(report["missing"]))
    if report["hint"]:
        out.append(report["hint"])
    return out


def _stored(source: str) -> bool:
    return source.startswith("store:")


def _masked(sql: str, db: str | None, analysis: Analysis, decision: Decision) -> tuple[str | None, Decision]:
    """(the text that would be forwarded, the decision), or the denial when the masks refuse it."""
    try:
        # No upstream here: a * over a masked table is expanded at run time from the live schema.
        return mask_select(sql, db, analysis, by_table(decision.masks), {}, analyze, Masker("<salt>")), decision
    except MaskingError as e:
        if "are not known" in str(e):
            return "the * expanded from the live schema, masked columns masked", decision
        return None, Decision(False, analysis, DenyCode.MASKED_COLUMN, str(e), used_grants=decision.used_grants)
