"""Column masking in the client session: a SELECT reading masked columns is rewritten
(proxy.authz.masking) and the rewritten text is what goes upstream; anything the rewrite cannot
prove safe is denied."""

from __future__ import annotations

import asyncio

from proxy.authz.analyze import analyze
from proxy.authz.masking import MaskingError, by_table, mask_select
from proxy.authz.model import Decision, DenyCode, StatementKind, TableRef
from proxy.protocol.core import SessionCore
from proxy.protocol.errors import UpstreamLost
from proxy.upstream.relay import ProtocolViolation


class MaskingCommands(SessionCore):
    """Statements rewritten for column masks (a part of ProxySession over SessionCore)."""

    async def _masked_payload(self, sql: str, kind: StatementKind, decision: Decision) -> tuple[bytes, Decision | None]:
        """`decision` carries masks: the bytes to forward instead of the statement, or a denial."""
        assert self.connection is not None and self.upstream is not None
        analysis = decision.analysis

        def refuse(reason: str) -> tuple[bytes, Decision]:
            return b"", Decision(False, analysis, DenyCode.MASKED_COLUMN, reason, used_grants=decision.used_grants)

        if kind is not StatementKind.QUERY:
            return refuse("a statement prepared with PREPARE ... FROM cannot read masked columns; "
                          "send it as a plain query")
        if analysis.metadata_tables:
            return refuse("a statement reading both information_schema and masked columns is not supported")
        masks = by_table(decision.masks)
        columns: dict[TableRef, tuple[str, ...]] = {}
        if "*" in sql:  # only a star needs the tables' real columns
            try:
                for table in sorted(masks):
                    columns[table] = await self.instance.schema.ordered(self.upstream, table)
            except (OSError, ProtocolViolation, asyncio.IncompleteReadError):
                raise UpstreamLost() from None
            except RuntimeError:
                columns = {}  # unknown: a * over a masked table is refused
        try:
            text = mask_select(sql, self.database, analysis, masks, columns, analyze, self.ctx.masker)
            return text.encode(self.connection.client_codec), None
        except MaskingError as e:
            return refuse(str(e))
        except UnicodeEncodeError:
            return refuse("the masked statement cannot be encoded in the connection's character set")
