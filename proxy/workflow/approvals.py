"""Approval policies: who must approve an access request, by environment and risk.

In the policy files (GitOps, next to the grants):

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
        wildcard_tables: true      # may ask for every table of a database (--table '*')

Every privilege a request asks for must be covered by a policy of its environment (otherwise
it cannot be requested: fail closed); every policy that covers one of them must be satisfied;
the shortest `max_duration` applies. A request is auto-approved only when all of them say so.

Which environment a request is in is not said here: it is its database's on its instance, from
the configuration (proxy.environments), the same answer its statements' audit events give. An
`environments:` map in a policy file is refused with where it belongs now.

`wildcard_tables`: whether a request may name `*` (every table of the database, also the ones
created later) instead of its tables. Default: not in prod (an approver should see which tables
a prod request reaches), allowed elsewhere; a request needs every policy that covers it to
allow it.

Break glass, for on-call people: an entry with `break_glass: true` in the same list lets the
people it names (`who`) ask for access that is granted at once (`jitproxy request create
--break-glass --reason ...`), audited and notified loudly, and reviewed after the fact:

      - environment: prod
        break_glass: true
        who: [group:oncall]          # required: who may break glass there
        privileges: [SELECT, UPDATE] # default [SELECT]; every privilege asked must be covered
        max_duration: 2h             # required
        reviewers: [group:dba]       # who approves (keeps) or denies (revokes) it afterwards;
                                     # default: the approvers of the environment's approval rules

Break-glass entries are no approval rule (`rules`): a request without --break-glass never uses
them. They sit in `approval_policies` because the policy files' top-level keys are fixed by the
grants' loader (proxy.authz.policy).
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
from proxy.environments import NAME_PATTERN, PROD, Environments
from proxy.store.base import ANY_INSTANCE, Approval
from proxy.timespec import format_duration

_PRINCIPAL = re.compile(r"^(user|group):[A-Za-z0-9._@-]{1,80}$")
_ENVIRONMENT = re.compile(NAME_PATTERN)
_KEYS = {"environment", "privileges", "approvals", "approvers", "require", "max_duration", "auto_approve",
         "wildcard_tables"}
_BREAK_GLASS_KEYS = {"environment", "break_glass", "who", "privileges", "max_duration", "reviewers",
                     "wildcard_tables"}


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
    wildcard_tables: bool = False

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

    @property
    def wildcard_tables(self) -> bool:
        """Whether a request may ask for every table of its database (`*`)."""
        return all(r.wildcard_tables for r in self.rules)

    def progress(self, approvals: Sequence[Approval], requester: str) -> str:
        """How far a pending request has got, rule by rule: "1 of 2 approvals, needs one from
        group:dba" (empty when no rule waits for people). For people to read, wherever a
        request is shown (CLI, API, Slack); `satisfied` decides."""
        rules = [r for r in self.rules if not r.auto_approve]
        valid = [a for a in approvals if a.decision == "approve" and a.approver != requester]
        parts = []
        for rule in rules:
            people = {a.approver for a in valid if rule.approvers & _subjects(a)}
            text = f"{min(len(people), rule.approvals)} of {rule.approvals} approval{'s' * (rule.approvals != 1)}"
            if rule.require and not any(rule.require & _subjects(a) for a in valid):
                text += f", needs one from {' or '.join(sorted(rule.require))}"
            if len(rules) > 1:
                text = f"{','.join(sorted(p.value for p in rule.privileges))}: {text}"
            parts.append(text)
        return "; ".join(parts)

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


class NoBreakGlass(ValueError):
    """Why this person cannot break glass for this (the message says it to them)."""


@dataclass(frozen=True)
class BreakGlassRule:
    """Who may break glass in an environment, for which privileges, how long, and who reviews
    it afterwards (empty `reviewers`: the approvers of the environment's approval rules)."""

    environment: str
    who: frozenset[str]  # user:NAME / group:NAME
    privileges: frozenset[Privilege]
    max_duration: timedelta
    reviewers: frozenset[str]
    source: str
    wildcard_tables: bool = False

    def names(self, person: Principal) -> bool:
        return bool(self.who & set(person.subjects))

    def describe(self) -> str:
        privs = ",".join(sorted(p.value for p in self.privileges))
        return (f"break glass in {self.environment} for {', '.join(sorted(self.who))}: {privs} up to "
                f"{format_duration(self.max_duration)}")


@dataclass(frozen=True)
class ApprovalPolicies:
    """What the policy files say to the workflow. `grants`: their grants, read with the same
    files at the same reload as the rules, so the workflow can answer a request for access the
    person already holds and show admins every grant with its source (sessions decide with the
    proxy's own GrantSet of the same files)."""

    rules: tuple[ApprovalRule, ...]
    grants: tuple[Grant, ...] = ()
    break_glass: tuple[BreakGlassRule, ...] = ()

    def break_glass_rule(self, environment: str | None, person: Principal, privileges: Iterable[Privilege],
                         where: str = "this database") -> BreakGlassRule:
        """The break-glass entry that lets `person` have `privileges` at once in `environment`
        (of several, the one allowing the longest); NoBreakGlass saying why not."""
        if environment is None:
            raise NoBreakGlass(f"{where} is in no environment, so nobody can break glass there")
        wanted = frozenset(privileges)
        here = [r for r in self.break_glass if r.environment == environment]
        if not here:
            raise NoBreakGlass(f"nobody can break glass in {environment} (no break_glass entry in the approval "
                               "policies): ask for access without --break-glass")
        mine = [r for r in here if r.names(person)]
        if not mine:
            on_call = ", ".join(sorted(frozenset().union(*(r.who for r in here))))
            raise NoBreakGlass(f"{person.user} is not on call for {environment}: break glass there is for "
                               f"{on_call}; ask for access without --break-glass")
        covering = [r for r in mine if wanted <= r.privileges]
        if not covering:
            allowed = ", ".join(sorted(p.value for p in frozenset().union(*(r.privileges for r in mine))))
            missing = ", ".join(sorted(p.value for p in wanted - frozenset().union(*(r.privileges for r in mine))))
            raise NoBreakGlass(f"break glass in {environment} covers {allowed} for {person.user}, not {missing}" if missing
                               else f"break glass in {environment} covers {allowed} for {person.user}, but no one "
                                    "entry covers all of them: ask for them separately")
        return max(covering, key=lambda r: r.max_duration)

    def reviewers(self, environment: str, privileges: Iterable[Privilege]) -> frozenset[str]:
        """Who reviews a break-glass request for `privileges` in `environment` (besides admins):
        the `reviewers` of every entry there that covers them, or for an entry that names none,
        the approvers of the environment's approval rules for those privileges (of all its
        approval rules when none covers them)."""
        wanted = frozenset(privileges)
        out: set[str] = set()
        for rule in self.break_glass:
            if rule.environment == environment and wanted <= rule.privileges:
                out |= rule.reviewers or self.default_reviewers(environment, wanted)
        return frozenset(out)

    def default_reviewers(self, environment: str, privileges: Iterable[Privilege]) -> frozenset[str]:
        """The approvers of `environment`'s approval rules for `privileges` (of all of them when
        none covers those privileges)."""
        wanted = frozenset(privileges)
        deciding = [r for r in self.rules if r.environment == environment and r.approvers]
        chosen = [r for r in deciding if r.privileges & wanted] or deciding
        return frozenset().union(*(r.approvers for r in chosen)) if chosen else frozenset()

    def plan(self, environment: str | None, privileges: Iterable[Privilege], where: str = "this database") -> Plan:
        """The rules for `privileges` in `environment` (proxy.environments says which; None:
        `where` declares none, so nothing can be requested there)."""
        if environment is None:
            raise NoApprovalPolicy(f"{where} is in no environment, so no approval policy applies (the config "
                                   "declares one: upstream.environment or upstream.environments)")
        wanted = frozenset(privileges)
        rules = tuple(r for r in self.rules if r.environment == environment and r.privileges & wanted)
        uncovered = wanted - frozenset().union(*(r.privileges for r in rules)) if rules else wanted
        if uncovered:
            names = ", ".join(sorted(p.value for p in uncovered))
            raise NoApprovalPolicy(f"no approval policy lets anyone request {names} in environment {environment}")
        return Plan(environment, rules)


def request_plan(policies: ApprovalPolicies, environments: Environments, instance: str, db: str,
                 privileges: Iterable[Privilege]) -> Plan:
    """The rules for requesting `privileges` on `db` on `instance`, in the database's
    environment there: what a request is decided with, and what the deny hint suggests."""
    where = db if instance == ANY_INSTANCE else f"{db} on {instance}"
    return policies.plan(environments.of(instance, db), privileges, where)


def _principals(value: Any, where: str, key: str) -> frozenset[str]:
    if value is None:
        return frozenset()
    if not isinstance(value, list) or not all(isinstance(v, str) and _PRINCIPAL.match(v) for v in value):
        raise PolicyError(f"{where}: {key} must be a list of user:NAME / group:NAME")
    return frozenset(value)


def rules_from_document(doc: Any, source: str) -> list[ApprovalRule]:
    if not isinstance(doc, dict):
        return []
    if "environments" in doc:
        raise PolicyError(f"{source}: environments: a database's environment is set in the config now, per "
                          "instance: upstream.environment (its databases) and upstream.environments (a database "
                          "in another one; upstreams[] alike). Move this map there (see `jitproxy config check`)")
    rules: list[ApprovalRule] = []
    for i, entry in enumerate(doc.get("approval_policies") or []):
        where = f"{source}: approval_policies[{i}]"
        if isinstance(entry, dict) and "break_glass" in entry:
            _break_glass_entry(entry, where, source)  # checked here too: a broken file fails as a whole
            continue
        if not isinstance(entry, dict) or set(entry) - _KEYS:
            raise PolicyError(f"{where}: a mapping with keys {sorted(_KEYS)}")
        env = entry.get("environment")
        if not isinstance(env, str) or not _ENVIRONMENT.match(env):
            raise PolicyError(f"{where}: environment must be a lower-case name")
        auto = entry.get("auto_approve", False)
        wildcards = entry.get("wildcard_tables", env != PROD)
        if not isinstance(auto, bool) or not isinstance(wildcards, bool):
            raise PolicyError(f"{where}: auto_approve and wildcard_tables must be true or false")
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
            max_duration, auto, source, wildcards,
        ))
    return rules


def break_glass_from_document(doc: Any, source: str) -> list[BreakGlassRule]:
    """The break-glass entries (`break_glass: true`) of a policy file's approval_policies."""
    if not isinstance(doc, dict):
        return []
    return [_break_glass_entry(entry, f"{source}: approval_policies[{i}]", source)
            for i, entry in enumerate(doc.get("approval_policies") or [])
            if isinstance(entry, dict) and "break_glass" in entry]


def _break_glass_entry(entry: dict[str, Any], where: str, source: str) -> BreakGlassRule:
    if set(entry) - _BREAK_GLASS_KEYS:
        raise PolicyError(f"{where}: a break_glass entry has the keys {sorted(_BREAK_GLASS_KEYS)} "
                          f"(unknown: {sorted(set(entry) - _BREAK_GLASS_KEYS)})")
    if entry["break_glass"] is not True:
        raise PolicyError(f"{where}: break_glass must be true (leave the entry out to allow no break glass)")
    env = entry.get("environment")
    if not isinstance(env, str) or not _ENVIRONMENT.match(env):
        raise PolicyError(f"{where}: environment must be a lower-case name")
    who = _principals(entry.get("who"), where, "who")
    if not who:
        raise PolicyError(f"{where}: who is required: the people or groups on call (e.g. [group:oncall])")
    if "max_duration" not in entry:
        raise PolicyError(f"{where}: max_duration is required for break glass (e.g. 2h)")
    try:
        max_duration = parse_duration(entry["max_duration"])
    except ValueError as e:
        raise PolicyError(f"{where}: max_duration: {e}") from None
    if max_duration <= timedelta(0):
        raise PolicyError(f"{where}: max_duration must be positive")
    wildcards = entry.get("wildcard_tables", env != PROD)
    if not isinstance(wildcards, bool):
        raise PolicyError(f"{where}: wildcard_tables must be true or false")
    privileges = parse_privileges(entry.get("privileges", ["SELECT"]), where)
    return BreakGlassRule(env, who, privileges, max_duration, _principals(entry.get("reviewers"), where, "reviewers"),
                          source, wildcards)


def check_break_glass(policies: ApprovalPolicies) -> None:
    """PolicyError for a break-glass entry nobody could review: no `reviewers`, and no approval
    rule of its environment names approvers."""
    for rule in policies.break_glass:
        if not rule.reviewers and not policies.default_reviewers(rule.environment, rule.privileges):
            raise PolicyError(f"{rule.source}: the break_glass entry for {rule.environment} names no reviewers and "
                              f"no approval policy of {rule.environment} names approvers: add reviewers: [group:...]")


def load_approval_policies(dirs: Iterable[Path]) -> ApprovalPolicies:
    rules: list[ApprovalRule] = []
    grants: list[Grant] = []
    break_glass: list[BreakGlassRule] = []
    for d in dirs:
        for path in sorted([*Path(d).glob("*.yaml"), *Path(d).glob("*.yml")]):
            try:
                doc = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError as e:
                raise PolicyError(f"{path}: invalid YAML: {e}") from None
            rules.extend(rules_from_document(doc, str(path)))
            grants.extend(grants_from_document(doc, str(path)))
            break_glass.extend(break_glass_from_document(doc, str(path)))
    policies = ApprovalPolicies(tuple(rules), tuple(grants), tuple(break_glass))
    check_break_glass(policies)
    return policies

