"""The analysis cache: analyze() results by statement text and by literal-normalized shape, the
long statements analyzed off the event loop."""

from __future__ import annotations

import asyncio
import dataclasses

import structlog

from proxy.authz.analyze import analyze
from proxy.authz.fingerprint import Key, shape
from proxy.authz.model import Analysis, Deny, DenyCode, StatementKind


log = structlog.get_logger("jitproxy.server")


class AnalysisCache:
    """analyze() results, two levels:
    - by exact statement text and current database (any statement kind);
    - by literal-normalized fingerprint and current database (proxy.authz.fingerprint), for
      QUERY analyses only, so `... WHERE id = 5` and `... WHERE id = 6` share one parse.
    Analyses do not depend on grants, so grant changes need no invalidation: every statement is
    still decided against the grants in effect. Bounded in entries and key size; cleared whole
    when full. `hits`/`fingerprint_hits`/`misses` are reported in the operator log."""

    def __init__(
        self,
        max_entries: int = 20000,
        max_statement_chars: int = 4096,
        max_statement_bytes: int = 1024 * 1024,
        thread_offload_bytes: int = 16 * 1024,
    ) -> None:
        self._entries: dict[tuple[str, str | None], Analysis] = {}
        self._shapes: dict[tuple[Key, str | None], Analysis] = {}
        self.max_entries = max_entries
        self.max_statement_chars = max_statement_chars
        self.max_statement_bytes = max_statement_bytes
        self.thread_offload_bytes = thread_offload_bytes
        self.hits = 0
        self.fingerprint_hits = 0
        self.misses = 0

    def stats(self) -> dict[str, int]:
        return {"hits": self.hits, "fingerprint_hits": self.fingerprint_hits, "misses": self.misses}

    async def analyze_async(self, sql: str, size: int, db: str | None) -> Analysis:
        """Like calling the cache, for a statement of `size` bytes on the wire: too long is
        denied; long is analyzed off the event loop (parsing holds the GIL, but other sessions
        still get turns)."""
        if size > self.max_statement_bytes:
            return Analysis(
                kind=StatementKind.DENIED,
                statement_class="UNKNOWN",
                deny=Deny(
                    DenyCode.STATEMENT_TOO_LONG,
                    f"statement of {size} bytes is over jitproxy's limit of {self.max_statement_bytes}; split it",
                ),
            )
        if size > self.thread_offload_bytes:
            self.misses += 1
            return await asyncio.to_thread(analyze, sql, db)
        return self(sql, db)

    def __call__(self, sql: str, db: str | None) -> Analysis:
        key = (sql, db)
        hit = self._entries.get(key)
        if hit is not None:
            self.hits += 1
            return hit
        if len(sql) > self.max_statement_chars:
            self.misses += 1
            return analyze(sql, db)
        found = shape(sql)
        if found.key is not None:
            hit = self._shapes.get((found.key, db))
            if hit is not None:
                self.fingerprint_hits += 1
                self._remember(self._entries, key, hit)
                return hit
        self.misses += 1
        result = dataclasses.replace(analyze(sql, db, found.tokens), fingerprint=found.fingerprint)
        self._remember(self._entries, key, result)
        if found.key is not None and result.kind is StatementKind.QUERY:
            self._remember(self._shapes, (found.key, db), result)
        return result

    def _remember(self, table: dict, key: object, value: Analysis) -> None:
        if len(table) >= self.max_entries:
            table.clear()
        table[key] = value
