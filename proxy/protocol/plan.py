"""The statement plan: what the session does with one statement, decided once, executed by either
of two executors.

`SessionCore.plan(analysis)` (core.py) turns an analysis into a `Plan` without waiting for
anything: the views it names expanded from what is known, the decision when it needs nothing from
the database, and the effects the statement has beyond a forward (`effects_of`, read from the
analysis and the decision, both made in proxy/authz). The command loop (`com_query`,
`com_stmt_execute`) completes a plan that still needs the database (`_completed_plan`: view
definitions, a table's columns), then carries out its decision and effects; the fast path
(fastpath.py) runs a plan only when it is complete and is a plain forward (`Plan.forwards_as_is`).
So the two can differ in how they wait, never in what they allow: a new effect is added here, and
both executors see it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from proxy.authz.model import Analysis, Decision, StatementKind


class Effect(str, enum.Enum):
    """Something the session does for a statement besides forwarding its bytes."""

    USE = "use"  # the current database changes (on success)
    CHARSET = "charset"  # the connection's character set may change: read it again (on success)
    SQL_PREPARED = "sql_prepared"  # PREPARE / DEALLOCATE: the session's map of authorized names
    SCHEMA = "schema"  # DDL: the schema caches are cleared (on success)
    KILL = "kill"  # answered by the session itself
    FILTERED_SHOW = "filtered_show"  # rows filtered to what the person holds grants on
    LISTED_COLUMNS = "listed_columns"  # DESCRIBE of a table granted by column: rows filtered
    METADATA = "metadata"  # information_schema rewritten to granted objects
    MASKS = "masks"  # the select list rewritten to masked columns (needs the table's columns)
    REWRITTEN = "rewritten"  # sent as the analysis's `rewritten` text (CREATE VIEW)


_KIND_EFFECTS = {
    StatementKind.USE: Effect.USE,
    StatementKind.KILL: Effect.KILL,
    StatementKind.SQL_PREPARE: Effect.SQL_PREPARED,
    StatementKind.SQL_DEALLOCATE: Effect.SQL_PREPARED,
}


def effects_of(analysis: Analysis, decision: Decision | None) -> frozenset[Effect]:
    """Every effect of a statement with this analysis and decision (pure)."""
    out: set[Effect] = set()
    kind_effect = _KIND_EFFECTS.get(analysis.kind)
    if kind_effect is not None:
        out.add(kind_effect)
    if analysis.changes_charset:
        out.add(Effect.CHARSET)
    if analysis.changes_schema:
        out.add(Effect.SCHEMA)
    if analysis.filtered_show:
        out.add(Effect.FILTERED_SHOW)
    if analysis.metadata_tables:
        out.add(Effect.METADATA)
    if analysis.rewritten is not None:
        out.add(Effect.REWRITTEN)
    if decision is not None:
        if decision.masks:
            out.add(Effect.MASKS)
        if decision.listed_columns is not None:
            out.add(Effect.LISTED_COLUMNS)
    return frozenset(out)


@dataclass(frozen=True, slots=True)
class Plan:
    """`analysis`: the statement as run (for EXECUTE name: the statement PREPARE authorized);
    `decision`: None while the database must be asked first (views, a table's columns)."""

    analysis: Analysis
    decision: Decision | None
    effects: frozenset[Effect]

    @property
    def forwards_as_is(self) -> bool:
        """Allowed, complete, and nothing to do but forward the bytes as received."""
        return self.decision is not None and self.decision.allowed and not self.effects
