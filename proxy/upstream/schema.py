"""Real column names of tables, read from the upstream's information_schema, for `SELECT *`
through column-restricted grants and over masked columns. Cached per table for `ttl_s`, and cleared whole after any DDL
that went through the proxy (changes made elsewhere are seen within the TTL)."""

from __future__ import annotations

import time
from collections.abc import Callable

from proxy.authz.model import TableRef
from proxy.protocol import wire
from proxy.protocol.filtering import first_column_values
from proxy.upstream.connection import UpstreamConnection


def _literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class SchemaCache:
    def __init__(self, ttl_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._columns: dict[TableRef, tuple[float, tuple[str, ...]]] = {}

    def invalidate(self) -> None:
        self._columns.clear()

    async def columns(self, upstream: UpstreamConnection, table: TableRef) -> frozenset[str]:
        """Lower-case column names of `table` (empty if it does not exist or is not visible)."""
        return frozenset(c.lower() for c in await self.ordered(upstream, table))

    async def ordered(self, upstream: UpstreamConnection, table: TableRef) -> tuple[str, ...]:
        """Column names of `table` as defined, in order (what `SELECT *` returns)."""
        now = self._clock()
        hit = self._columns.get(table)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        sql = (
            "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE "
            f"CAST(TABLE_SCHEMA AS BINARY) = {_literal(table.db)} AND "
            f"CAST(TABLE_NAME AS BINARY) = {_literal(table.table or '')} ORDER BY ORDINAL_POSITION"
        )
        payloads, outcome = await upstream.fetch_payloads(wire.COM_QUERY, sql.encode("utf-8"))
        if outcome.error is not None:
            raise RuntimeError(f"schema lookup failed: {outcome.error.code}")
        columns = tuple(v for v in first_column_values(payloads, upstream.profile.deprecate_eof) if v)
        self._columns[table] = (now, columns)
        return columns
