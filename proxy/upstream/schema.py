"""What the proxy reads of the upstream's schema, from its information_schema: the real column
names of tables (`SchemaCache`: `SELECT *` through column-restricted grants and over masked
columns) and the definitions of views (`ViewCatalog`: a view is read as what its definition
reads, proxy.authz.views). Both are cached for `ttl_s` (upstream.schema_cache_ttl_s) and cleared
whole after any DDL that went through the proxy; changes made elsewhere (another replica, a DBA
on the server) are seen within the TTL."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable

from proxy.authz import views
from proxy.authz.analyze import analyze
from proxy.authz.model import Analysis, TableRef
from proxy.mysql import wire
from proxy.mysql.rows import first_column_values
from proxy.upstream.connection import UpstreamConnection

DEFAULT_TTL_S = 10.0
# A LIMIT of its own: the session's sql_select_limit must never cut the proxy's lookups short
_ALL_ROWS = " LIMIT 18446744073709551615"


def sql_literal(text: str) -> str:
    """`text` as a MySQL string literal (the proxy's own lookups)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class SchemaCache:
    def __init__(self, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
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
            f"CAST(TABLE_SCHEMA AS BINARY) = {sql_literal(table.db)} AND "
            f"CAST(TABLE_NAME AS BINARY) = {sql_literal(table.table or '')} ORDER BY ORDINAL_POSITION" + _ALL_ROWS
        )
        payloads, outcome = await upstream.fetch_payloads(wire.COM_QUERY, sql.encode("utf-8"))
        if outcome.error is not None:
            raise RuntimeError(f"schema lookup failed: {outcome.error.code}")
        columns = tuple(v for v in first_column_values(payloads, upstream.profile.deprecate_eof) if v)
        self._columns[table] = (now, columns)
        return columns


Rows = list[tuple[str | None, ...]]
_MAX_MEMO = 4096
# A name a database did not hold when it was read makes the proxy read it again (a table or view
# made elsewhere since), at most this often: a statement naming a table that does not exist (or a
# temporary table, which information_schema does not list) costs one lookup per interval.
RECHECK_S = 1.0


class _Database:
    __slots__ = ("read_at", "names", "views")

    def __init__(self, read_at: float, names: frozenset[str], views: dict[str, Analysis]) -> None:
        self.read_at = read_at
        self.names = names  # every table, view and sequence
        self.views = views  # view name → the analysis of its definition


class ViewCatalog:
    """The views of each database of one instance (name → the analysis of its definition) and the
    names of everything else in it, read when a statement first names a table there, again after
    `ttl_s`, and again when a statement names something it did not hold (at most every
    RECHECK_S): a view made outside the proxy is taken for a view by the first statement that
    names it. What stays open for up to `ttl_s` is a table dropped elsewhere and replaced by a
    view of the same name. The expansion of each analysis (proxy.authz.views.expand) is
    remembered while all of that stays the same.

    `expand` is what the fast path calls (no I/O: it answers the databases still to `load` when
    it cannot expand); `load` reads them on a connection of the proxy's own (`fetch`), never the
    person's, whose session variables could change the answer. A load that overlapped an
    invalidation is not kept: a view created meanwhile is never taken for a table."""

    def __init__(self, ttl_s: float = DEFAULT_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._databases: dict[str, _Database] = {}
        self._memo: dict[int, tuple[Analysis, int, float, Analysis]] = {}
        self._epoch = 0  # changes whenever what is known changes
        self._invalidations = 0
        self._loading: dict[str, asyncio.Future[None]] = {}
        self.loads = 0  # databases read (stats, tests)

    def invalidate(self) -> None:
        self._databases.clear()
        self._memo.clear()
        self._epoch += 1
        self._invalidations += 1

    def expand(self, analysis: Analysis) -> Analysis | frozenset[str]:
        now = self._clock()
        hit = self._memo.get(id(analysis))
        if hit is not None and hit[0] is analysis and hit[1] == self._epoch and now < hit[2]:
            return hit[3]
        good_until = math.inf  # the memo's: until a database read or a name must be read again

        def view_of(table: TableRef) -> Analysis | None:
            nonlocal good_until
            found = self._databases.get(table.db)
            if found is None or now - found.read_at >= self.ttl_s:
                raise views.NotKnown(table.db)
            if table.table not in found.names:
                if now - found.read_at >= RECHECK_S:
                    raise views.NotKnown(table.db)
                good_until = min(good_until, found.read_at + RECHECK_S)
            good_until = min(good_until, found.read_at + self.ttl_s)
            return found.views.get(table.table or "")

        expanded = views.expand(analysis, view_of)
        if isinstance(expanded, frozenset):
            return expanded
        if len(self._memo) >= _MAX_MEMO:
            self._memo.clear()
        self._memo[id(analysis)] = (analysis, self._epoch, good_until, expanded)
        return expanded

    async def load(self, databases: frozenset[str], fetch: Callable[[str], Awaitable[Rows]]) -> None:
        """Read what `databases` hold (two queries each; a database another session is already
        reading is waited for). Raises what `fetch` raises."""
        for db in sorted(databases):
            running = self._loading.get(db)
            if running is not None:
                await asyncio.shield(running)
                continue
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._loading[db] = done
            try:
                invalidations = self._invalidations
                where = f" WHERE TABLE_SCHEMA = {sql_literal(db)}" + _ALL_ROWS
                names = await fetch("SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES" + where)
                rows = await fetch("SELECT TABLE_SCHEMA, TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS" + where)
                self.loads += 1
                found = {name: views.definition_analysis(analyze, db, text)
                         for schema, name, text in rows if schema == db and name is not None}
                if invalidations == self._invalidations:  # else: invalidated meanwhile, read again when asked
                    known = frozenset(n for schema, n in names if schema == db and n is not None) | found.keys()
                    self._databases[db] = _Database(self._clock(), known, found)
                    self._epoch += 1
                done.set_result(None)
            except BaseException as e:
                done.set_exception(e)
                done.exception()  # retrieved: the waiters see it, nobody else must
                raise
            finally:
                del self._loading[db]
