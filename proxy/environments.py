"""Which environment (prod, test, ...) a database is in: one answer for everything that depends on
it, so that a statement, the request that gave access to it and the approval policy that decided
that request never disagree.

An upstream instance names its environment, and a database on it may be in another one, both in
the instance's own configuration section:

    upstream:                      # or each of upstreams[]
      environment: prod            # the instance's databases are prod ...
      environments: {hr_test: test}  # ... except hr_test

Why in the configuration and per instance, not in the policy files: the same database name can be
production on one instance and a copy on another, and the configuration is where instances are.

The answer is used for:
- a statement's audit event (`environment`): the environment of the databases it names, or of the
  current database when it names none; when they differ, the strictest (`strictest`);
- a session's audit mode under `audit.mode: auto`: fail_closed when its instance holds a prod
  database at all (any statement may name any database of its instance, also through a view or
  a routine, so the session is held to the strictest mode among them);
- a request or direct grant: its environment, and so its approval policy and maximum duration;
- the deny hint's suggested request (proxy.workflow.hints.request_hint).

Undeclared (an instance with no `environment` and a database its map does not name): None. Such
statements are audited as the audit mode says of no environment (auto: best_effort), and nobody
can request access there (no approval policy applies to no environment): declare it.

Pure: built once from the configuration.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.authz.model import Analysis
    from proxy.config import Config

PROD = "prod"  # the environment `audit.mode: auto` audits fail_closed, and outranks every other
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"  # an environment's name, in the config and the policy files


def strictest(environments: Iterable[str | None]) -> str | None:
    """The one environment to say of several: prod when one of them is (its audit mode and its
    approvals are the strictest), else the first by name (so the answer never depends on order),
    None only when none is declared."""
    found = set(environments)
    if PROD in found:
        return PROD
    named = sorted(e for e in found if e is not None)
    return named[0] if named else None


@dataclass(frozen=True)
class InstanceEnvironments:
    """One instance's environment (`default`) and the databases in another one."""

    default: str | None = None
    databases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def of(self, db: str | None) -> str | None:
        """The environment of database `db` (None: no database, the instance's own)."""
        if db is not None:
            found = self.databases.get(db)
            if found is not None:
                return found
        return self.default

    def of_statement(self, analysis: Analysis, current_db: str | None) -> str | None:
        """The environment of the databases a statement names (its current database's when it
        names none). Called for every statement: an instance without overrides answers at once."""
        if not self.databases:
            return self.default
        named = {t.db for t in analysis.tables} | analysis.database_access
        return strictest(self.of(db) for db in named) if named else self.of(current_db)

    @property
    def possible(self) -> frozenset[str | None]:
        """Every environment a statement on this instance can be in."""
        return frozenset({self.default, *self.databases.values()})


@dataclass(frozen=True)
class Environments:
    """Every configured instance's environments, by instance name (configuration order)."""

    instances: Mapping[str, InstanceEnvironments] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_config(cls, cfg: Config) -> Environments:
        return cls(MappingProxyType({
            u.name: InstanceEnvironments(u.environment, MappingProxyType(dict(u.environments))) for u in cfg.instances
        }))

    def of(self, instance: str, db: str | None) -> str | None:
        """The environment of `db` on `instance`. For ANY_INSTANCE (what one `upstream:` keeps its
        requests for, "*"), the strictest of its environments on every instance."""
        known = self.instances.get(instance)
        if known is not None:
            return known.of(db)
        return strictest(each.of(db) for each in self.instances.values())
