"""Metadata visibility in the client session: SHOW DATABASES / TABLES / TABLE STATUS rows filtered,
information_schema statements rewritten (proxy.authz.metadata) and proven to read the same real
tables before they are forwarded."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import structlog

from proxy.authz.analyze import analyze
from proxy.authz.decide import databases_visible, tables_visible, visibility
from proxy.authz.metadata import MetadataError, restrict_metadata
from proxy.authz.model import Analysis, Decision, DenyCode
from proxy.mysql import wire
from proxy.protocol.core import SessionCore
from proxy.protocol.errors import UpstreamLost
from proxy.mysql.rows import filter_rows_by_first_column
from proxy.upstream.relay import Expect, Outcome, ProtocolViolation

log = structlog.get_logger("jitproxy.session")

# SHOW statements whose rows the session filters to what the person is granted.


class MetadataCommands(SessionCore):
    """Statements whose text or answer is rewritten for the metadata a person may see (a part of
    ProxySession over SessionCore)."""

    def _restrict_metadata(self, sql: str, analysis: Analysis) -> tuple[bytes, Decision | None]:
        """information_schema shows only granted objects: rewrite, prove the rewrite reads the
        same real tables, and return the bytes to forward (or the denial)."""
        assert self.principal is not None and self.connection is not None
        vis = visibility(self.principal, self.decider.grants(), self.ctx.now())
        try:
            rewritten, found = restrict_metadata(sql, self.database, vis)
            forward = rewritten.encode(self.connection.client_codec)
        except (MetadataError, UnicodeEncodeError) as e:
            reason = str(e) if isinstance(e, MetadataError) else "cannot re-encode the statement"
            return b"", Decision(False, analysis, DenyCode.METADATA, reason)
        check = analyze(rewritten, self.database)
        if (
            found != analysis.metadata_tables
            or check.kind is not analysis.kind
            or check.requirements != analysis.requirements
            or check.metadata_tables != analysis.metadata_tables
        ):
            log.error("metadata rewrite changed the statement's requirements", session=self.info.session_id)
            return b"", Decision(False, analysis, DenyCode.METADATA, "the statement could not be restricted safely")
        return forward, None

    async def _filtered_show(self, payload: bytes, analysis: Analysis) -> Outcome:
        """SHOW DATABASES / SHOW TABLES: only what the person holds grants on."""
        assert self.principal is not None and self.upstream is not None
        now, grants = self.ctx.now(), self.decider.grants()
        if analysis.statement_class == "SHOW DATABASES":
            visible = databases_visible(self.principal, grants, now)
            if visible is not None:
                visible = visible | {"information_schema"}
        else:
            db = next(iter(analysis.database_access))
            visible = tables_visible(self.principal, grants, now, db)
        if visible is None:
            outcome = await self._upstream(wire.COM_QUERY, payload, Expect.RESULT)
            assert outcome is not None
            return outcome
        return await self._filtered_rows(payload, visible.__contains__)

    async def _listed_columns(self, payload: bytes, decision: Decision) -> Outcome:
        """DESCRIBE / SHOW COLUMNS of a table granted by column: the granted columns' rows only."""
        assert decision.listed_columns is not None
        _, columns = decision.listed_columns
        return await self._filtered_rows(payload, lambda name: name.lower() in columns)

    async def _filtered_rows(self, payload: bytes, keep: Callable[[str], bool]) -> Outcome:
        assert self.upstream is not None and self.connection is not None
        try:
            payloads, outcome = await self.upstream.fetch_payloads(wire.COM_QUERY, payload)
        except (OSError, ProtocolViolation, asyncio.IncompleteReadError):
            raise UpstreamLost() from None
        kept, outcome.rows = filter_rows_by_first_column(payloads, self.upstream.profile.deprecate_eof, keep)
        self.connection.stream.write_many(kept)
        await self.connection.stream.drain()
        return outcome
