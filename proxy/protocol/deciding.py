"""A session's decisions: an analysis decided against the grants in effect on the session's
instance, for the person signed in, now. What needs the database first (the definitions of the
views a statement names, the columns a `*` reads through column-restricted grants) is read in
`with_schema`; `now` decides without waiting when it can (the fast path's and the plan's).

Allowed decisions are remembered per analysis (the view-expanded one: the same object while the
views stay the same) while the grants snapshot is the same object and none of the person's grants
has ended: revocation and expiry still bite on the next statement."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import TYPE_CHECKING

import structlog

from proxy.authz.decide import GrantSet, decide, stars_needing_schema
from proxy.authz.model import Analysis, Decision, DenyCode, Principal, TableRef
from proxy.protocol.errors import UpstreamLost
from proxy.upstream.connection import UpstreamConnection, UpstreamError
from proxy.upstream.relay import ProtocolViolation

if TYPE_CHECKING:
    from proxy.context import ProxyContext
    from proxy.upstream.instance import Instance

log = structlog.get_logger("jitproxy.session")

_MAX_DECISIONS = 512  # remembered allowed decisions per session


class Decider:
    def __init__(self, ctx: ProxyContext, instance: Instance, session_id: str) -> None:
        self._ctx = ctx
        self._instance = instance
        self._session_id = session_id
        self.principal: Principal | None = None  # set at login
        # id(analysis) -> (analysis, grants snapshot, valid until, allowed decision)
        self._decisions: dict[int, tuple[Analysis, GrantSet, datetime | None, Decision]] = {}

    def grants(self) -> GrantSet:
        """The grants in effect now on this session's instance."""
        return self._ctx.grants().for_instance(self._instance.name)

    def decide(self, analysis: Analysis) -> Decision:
        """As written (no views expanded): statements that name no table (USE, COM_FIELD_LIST's
        own analysis)."""
        assert self.principal is not None
        return decide(analysis, self.principal, self.grants(), self._ctx.now())

    def now(self, analysis: Analysis) -> tuple[Decision | None, frozenset[TableRef]]:
        """The decision, when it can be made without the database: (decision, ()); otherwise
        (None, the tables whose columns a `*` read through column-restricted grants needs), or
        (None, ()) while the views of a database it names are not known (`with_schema` reads
        them)."""
        expanded = self._instance.views.expand(analysis)
        if isinstance(expanded, frozenset):
            return None, frozenset()
        return self._expanded(expanded)

    def _expanded(self, analysis: Analysis) -> tuple[Decision | None, frozenset[TableRef]]:
        assert self.principal is not None
        grants = self.grants()
        known = self._decisions.get(id(analysis))
        if (known is not None and known[0] is analysis and known[1] is grants
                and (known[2] is None or self._ctx.now() < known[2])):
            return known[3], frozenset()
        now = self._ctx.now()
        tables = stars_needing_schema(analysis, self.principal, grants, now)
        if tables:
            return None, frozenset(tables)
        decision = decide(analysis, self.principal, grants, now)
        if decision.allowed:
            self._remember(analysis, grants, now, decision)
        return decision, frozenset()

    async def with_schema(self, analysis: Analysis, upstream: UpstreamConnection | None) -> Decision:
        """The decision with what the database must say first: the views the statement names
        read as their definitions, a `*` read through column-restricted grants expanded to the
        table's real columns (read on `upstream`, the session's connection; both cached)."""
        assert self.principal is not None and upstream is not None
        expanded = await self._views(analysis)
        if isinstance(expanded, Decision):
            return expanded
        decision, tables = self._expanded(expanded)
        if decision is not None:
            return decision
        try:
            columns = {t: await self._instance.schema.columns(upstream, t) for t in sorted(tables)}
        except (OSError, ProtocolViolation, asyncio.IncompleteReadError):
            raise UpstreamLost() from None
        except RuntimeError:
            columns = {}  # unknown columns: the star stays refused
        return decide(expanded, self.principal, self.grants(), self._ctx.now(), table_columns=columns)

    async def _views(self, analysis: Analysis) -> Analysis | Decision:
        """The analysis with its views expanded (Instance.expanded_views reads what is not known
        yet); refused if they cannot be read: fail closed."""
        try:
            expanded = await self._instance.expanded_views(analysis)
        except (OSError, ProtocolViolation, asyncio.IncompleteReadError, UpstreamError, TimeoutError) as e:
            log.warning("view definitions unreadable", instance=self._instance.name, error=type(e).__name__,
                        session=self._session_id)
            expanded = None
        if expanded is not None:
            return expanded
        return Decision(False, analysis, DenyCode.UNACCOUNTED_TABLE,
                        "the definitions of the views this statement may read could not be read from the "
                        "database; nothing was sent to it. Try again shortly")

    def _remember(self, analysis: Analysis, grants: GrantSet, now: datetime, decision: Decision) -> None:
        """Keyed by the analysis object (held in the entry, so its id stays its own): the
        analysis cache hands the same object to every statement of one shape."""
        assert self.principal is not None
        if len(self._decisions) >= _MAX_DECISIONS:
            self._decisions.clear()
        self._decisions[id(analysis)] = (analysis, grants, grants.next_expiry(self.principal, now), decision)
