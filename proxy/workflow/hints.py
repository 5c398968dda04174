"""The deny hint: the exact command that asks for what a person was missing."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from datetime import timedelta


from proxy.workflow.approvals import NoApprovalPolicy, Plan
from proxy.authz.model import Decision, DenyCode, Privilege
from proxy.timespec import format_duration


# The command runs only with these set, and a person denied in a MySQL client has no other
# place to learn it from: the proxy cannot know their token's file or their API's name.
_RUN_WITH = ("To request access, with JITPROXY_API, JITPROXY_CA and JITPROXY_TOKEN set (the admin API's URL, "
             "its CA file, your token), run: ")


_HINT_SPAN = timedelta(hours=1)  # what the deny hint asks for, within the environment's maximum


PlanOf = Callable[[str, frozenset[Privilege]], Plan]  # (db, privileges) -> the approval rules, or NoApprovalPolicy


def request_hint(user: str, decision: Decision, instance: str | None = None, plan_of: PlanOf | None = None) -> str:
    """The exact command that asks for what the person was missing (one per database), for an
    hour or the most the database's environment allows; where no request can give it (`plan_of`,
    approvals.request_plan for the instance, raises NoApprovalPolicy), why instead of a command
    that would be refused. `instance`: named when the proxy has several (the request must say
    which)."""
    where = f" --instance {_shell_word(instance)}" if instance else ""
    wanted: dict[str, tuple[set[str], set[Privilege]]] = {}
    if decision.code is DenyCode.MISSING_GRANT and decision.missing:
        for r in decision.missing:
            tables, privileges = wanted.setdefault(r.target.db, (set(), set()))
            tables.add(r.target.table if r.target.table is not None else "*")
            privileges.add(r.privilege)
    elif decision.code is DenyCode.DATABASE_ACCESS:
        wanted[sorted(decision.analysis.database_access)[0]] = ({"<table>"}, set())
    commands, refusals = [], []
    for db, (tables, privileges) in sorted(wanted.items()):
        try:
            plan = plan_of(db, frozenset(privileges or {Privilege.SELECT})) if plan_of else None
        except NoApprovalPolicy as e:
            refusals.append(f"No request can give {', '.join(sorted(p.value for p in privileges)) or 'access'} on "
                            f"{db}: {e}; an admin can grant it (jitproxy grant add)")
            continue
        span = format_duration(min(_HINT_SPAN, plan.max_duration) if plan else _HINT_SPAN)
        args = " ".join(f"--table {t if t == '<table>' else _shell_word(t)}" for t in sorted(tables))
        args += "".join(f" --privilege {p}" for p in sorted(p.value for p in privileges))
        commands.append(f"jitproxy request create{where} --db {_shell_word(db)} {args} --for {span} --reason '...'")
    hint = _RUN_WITH + " ; ".join(commands) if commands else ""
    return " ".join([hint, *refusals]).strip()


def _shell_word(text: str) -> str:
    """Names are quoted for a POSIX shell only when they need it."""
    return text if re.fullmatch(r"[A-Za-z0-9_.$-]+", text) else shlex.quote(text)
