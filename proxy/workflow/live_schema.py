"""What the instances' databases hold, read live for the workflow (requests are checked against
it)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from proxy.upstream.instance import Instance
from proxy.upstream.schema import sql_literal
from proxy.workflow.service import SchemaUnavailable


class LiveSchema:
    """What the instances' databases hold, read live for the workflow (requests are checked
    against it: proxy.workflow.service.Schema). The workflow runs in worker threads; each lookup
    runs on the proxy's event loop, on a side connection (Instance.side_rows, bounded). Nothing
    is cached: a request is rare, and one for a table created a second ago must be accepted."""

    def __init__(self, instances: Mapping[str, Instance], loop: asyncio.AbstractEventLoop) -> None:
        self._instances = instances
        self._loop = loop

    def databases(self, instance: str) -> frozenset[str]:
        return self._names(instance, "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA")

    def tables(self, instance: str, db: str) -> frozenset[str]:
        return self._names(instance, f"SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = {sql_literal(db)}")

    def _names(self, name: str, sql: str) -> frozenset[str]:
        """The first column of `sql` on the instance ("*", every instance: on each of them)."""
        found: set[str] = set()
        for instance in [self._instances[name]] if name in self._instances else list(self._instances.values()):
            lookup = asyncio.run_coroutine_threadsafe(instance.side_rows(sql), self._loop)
            try:  # side_rows is bounded; this bound is for a loop that stopped meanwhile
                rows = lookup.result(timeout=max(instance.health_timeout_s, 1.0) * 2 + 1)
            except Exception as e:  # noqa: BLE001 - whatever kept the database from answering
                why = getattr(e, "public", None) or type(e).__name__
                raise SchemaUnavailable(f"the database of instance {instance.name} did not answer: {why}") from None
            found.update(row[0] for row in rows if row and row[0] is not None)
        return frozenset(found)
