"""The state store as an audit sink: events land in `audit_events` (SQLite or PostgreSQL), where
`jitproxy audit search` and GET /v1/audit find them and `audit verify` re-checks the chain.

Each batch is one transaction (`Store.append_audit`), idempotent on event_id, so the writer
thread may retry a failed batch as often as it likes: nothing is stored twice. Failures are
raised, not handled: the emitter decides what they mean (fail_closed or best_effort).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from proxy.store.base import Store


class StoreSink:
    """A `Sink` writing to `store`. Takes the emitter's `Record`s (their sealed JSON line is
    what is stored, so the body is exactly what was hashed) or plain event dicts.

    Give it a store object of its own (another `open_store` on the same URL): the proxy's grant
    poll and the audit batches then do not queue behind each other on one connection. Closing
    the sink does not close the store: whoever opened it does."""

    synchronous = False

    def __init__(self, store: Store, *, name: str = "store", required: bool = True) -> None:
        self.store = store
        self.name = name
        self.required = required

    def write_batch(self, events: list[Any]) -> None:
        self.store.append_audit([_event(item) for item in events])

    def close(self) -> None:
        pass


def _event(item: Any) -> Mapping[str, Any]:
    if isinstance(item, Mapping):
        return item
    line = getattr(item, "line", None)
    if isinstance(line, str):  # a sinks.Record: its line, not its dict (which the emitter's caller holds)
        parsed = json.loads(line)
        if isinstance(parsed, dict):
            return parsed
    raise TypeError(f"an audit sink takes events (dicts) or records, not {type(item).__name__}")
