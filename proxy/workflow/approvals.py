"""Approval policies: who must approve an access request, by environment and risk.

In the policy files (GitOps, next to the grants):

    environments:                  # database -> environment; "*" for every other database
      hr_prod: prod
      hr_test: test
      "*": prod
    approval_policies:
      - environment: prod
        privileges: [SELECT]
        approvals: 1               # distinct approvers, never the requester
        approvers: [group:project-owner, group:dba]
        max_duration: 8h
      - environment: prod
        privileges: [INSERT, UPDATE, DELETE]
        approvals: 2
        approvers: [group:project-owner, group:dba]
        require: [group:dba]       # at least one of the approvals from these
        max_duration: 2h
      - environment: test
        privileges: ALL
        auto_approve: true
        max_duration: 24h

Every privilege a request asks for must be covered by a policy of its environment (otherwise
it cannot be requested: fail closed); every policy that covers one of them must be satisfied;
the shortest `max_duration` applies. A request is auto-approved only when all of them say so.
A database with no environment and no "*" entry is `prod`. A request for an upstream instance
whose configuration names an `environment` is in that environment, whatever its database.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from proxy.authz.model import Grant, Principal, Privilege
from proxy.authz.policy import PolicyError, grants_from_document, parse_privileges
from proxy.config import parse_duration
from proxy.store.base import Approval

DEFAULT_ENVIRONMENT = "prod"
_PRINCIPAL = re.compile(r"^(user|group):[A-Za-z0-9._@-]{1,80}$")
_ENVIRONMENT = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_KEYS = {"environment", "privileges", "approvals", "approvers", "require", "max_duration", "auto_approve"}
@dataclass(frozen=True)
class ApprovalRule:
    environment: str
    privileges: frozenset[Privilege]
    approvals: int
    approvers: frozenset[str]  # user:NAME / group:NAME
    require: frozenset[str]
    max_duration: timedelta
    auto_approve: bool
    source: str

    def counts(self, approver: Principal) -> bool:
        return bool(self.approvers & set(approver.subjects))

    def satisfied(self, approvals: Sequence[Approval], requester: str) -> bool:
        valid = [a for a in approvals if a.decision == "approve" and a.approver != requester]
        people = {a.approver for a in valid if self.approvers & _subjects(a)}
        if len(people) < self.approvals:
            return False
        return not self.require or any(self.require & _subjects(a) for a in valid)


def _subjects(a: Approval) -> set[str]:
    return {f"user:{a.approver}"} | {f"group:{g}" for g in a.roles}


@dataclass(frozen=True)
class Plan:
    """What a request needs, from the rules that apply to it."""

    environment: str
    rules: tuple[ApprovalRule, ...]

    @property
    def auto_approve(self) -> bool:
        return all(r.auto_approve for r in self.rules)

    @property
    def max_duration(self) -> timedelta:
        return min(r.max_duration for r in self.rules)

    def may_decide(self, approver: Principal) -> bool:
        return any(r.counts(approver) for r in self.rules)

    def satisfied(self, approvals: Sequence[Approval], requester: str) -> bool:
        return all(r.satisfied(approvals, requester) for r in self.rules)

    def describe(self) -> str:
        parts = []
        for r in self.rules:
            privs = ",".join(sorted(p.value for p in r.privileges))
            if r.auto_approve:
                parts.append(f"{privs}: auto-approved")
                continue
            text = f"{privs}: {r.approvals} approval(s) from {', '.join(sorted(r.approvers))}"
            if r.require:
                text += f" (one of them {', '.join(sorted(r.require))})"
            parts.append(text)
        return "; ".join(parts)


class NoApprovalPolicy(ValueError):
    pass


@dataclass(frozen=True)
class ApprovalPolicies:
    """What the policy files say to the workflow. `grants`: their grants, read with the same
    files at the same reload as the rules, so the workflow can answer a request for access the
    person already holds and show admins every grant with its source (sessions decide with the
    proxy's own GrantSet of the same files)."""

    environments: dict[str, str]
    rules: tuple[ApprovalRule, ...]
    grants: tuple[Grant, ...] = ()

    def environment_of(self, db: str) -> str:
        return self.environments.get(db) or self.environments.get("*") or DEFAULT_ENVIRONMENT

    def plan(self, db: str, privileges: Iterable[Privilege], environment: str | None = None) -> Plan:
        """The rules for `privileges` on `db` in `environment` (the upstream instance's, when it
        has one), else in the database's environment."""
        env = environment or self.environment_of(db)
        wanted = frozenset(privileges)
        rules = tuple(r for r in self.rules if r.environment == env and r.privileges & wanted)
        uncovered = wanted - frozenset().union(*(r.privileges for r in rules)) if rules else wanted
        if uncovered:
            names = ", ".join(sorted(p.value for p in uncovered))
            raise NoApprovalPolicy(f"no approval policy lets anyone request {names} in environment {env}")
        return Plan(env, rules)


def _principals(value: Any, where: str, key: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) and _PRINCIPAL.match(v) for v in value):
        raise PolicyError(f"{where}: {key} must be a list of user:NAME / group:NAME")
    return frozenset(value)


def rules_from_document(doc: Any, source: str) -> tuple[dict[str, str], list[ApprovalRule]]:
    if not isinstance(doc, dict):
        return {}, []
    envs = doc.get("environments") or {}
    if not isinstance(envs, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _ENVIRONMENT.match(v) for k, v in envs.items()
    ):
        raise PolicyError(f"{source}: environments must map database names (or \"*\") to environment names")
    rules: list[ApprovalRule] = []
    for i, entry in enumerate(doc.get("approval_policies") or []):
        where = f"{source}: approval_policies[{i}]"
        if not isinstance(entry, dict) or set(entry) - _KEYS:
            raise PolicyError(f"{where}: a mapping with keys {sorted(_KEYS)}")
        env = entry.get("environment")
        if not isinstance(env, str) or not _ENVIRONMENT.match(env):
            raise PolicyError(f"{where}: environment must be a lower-case name")
        auto = entry.get("auto_approve", False)
        if not isinstance(auto, bool):
            raise PolicyError(f"{where}: auto_approve must be true or false")
        approvals = entry.get("approvals", 0 if auto else 1)
        if isinstance(approvals, bool) or not isinstance(approvals, int) or approvals < (0 if auto else 1):
            raise PolicyError(f"{where}: approvals must be a positive integer")
        approvers = _principals(entry.get("approvers"), where, "approvers")
        if not auto and not approvers:
            raise PolicyError(f"{where}: approvers are needed unless auto_approve is true")
        try:
            max_duration = parse_duration(entry.get("max_duration", "8h"))
        except ValueError as e:
            raise PolicyError(f"{where}: max_duration: {e}") from None
        if max_duration <= timedelta(0):
            raise PolicyError(f"{where}: max_duration must be positive")
        privileges = parse_privileges(entry.get("privileges", "ALL"), where)
        rules.append(ApprovalRule(
            env, privileges, approvals, approvers, _principals(entry.get("require"), where, "require"),
            max_duration, auto, source,
        ))
    return dict(envs), rules


def load_approval_policies(dirs: Iterable[Path]) -> ApprovalPolicies:
    environments: dict[str, str] = {}
    rules: list[ApprovalRule] = []
    grants: list[Grant] = []
    for d in dirs:
        for path in sorted([*Path(d).glob("*.yaml"), *Path(d).glob("*.yml")]):
            try:
                doc = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as e:
                raise PolicyError(f"{path}: invalid YAML: {e}") from None
            envs, found = rules_from_document(doc, str(path))
            for db, env in envs.items():
                if environments.get(db, env) != env:
                    raise PolicyError(f"{path}: database {db} is given two environments")
                environments[db] = env
            rules.extend(found)
            grants.extend(grants_from_document(doc, str(path)))
    return ApprovalPolicies(environments, tuple(rules), tuple(grants))


