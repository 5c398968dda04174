"""Prepared statements on the binary protocol (COM_STMT_*), a part of the client session.

Each text is authorized at PREPARE and prepared on the database itself; every EXECUTE and FETCH
is decided again against the grants in effect and relayed as is, so parameters are bound by the
server (never pasted into SQL) and binary rows reach the client exactly."""

from __future__ import annotations

import struct
import time
from typing import Any
from dataclasses import dataclass, field

from proxy.audit.params import decode_execute_params
from proxy.authz.model import Analysis, Decision, DenyCode, MaskMethod, StatementKind, TableRef
from proxy.mysql import wire
from proxy.protocol.core import SessionCore
from proxy.protocol.errors import ER, ClientError
from proxy.protocol.plan import Effect, Plan, effects_of
from proxy.upstream.relay import Expect

_STMT_ID = struct.Struct("<I")

# MariaDB reads statement id 0xFFFFFFFF in every COM_STMT_* as "the statement prepared last" on
# that connection (its drivers pipeline PREPARE and EXECUTE with it). The proxy resolves it to
# the statement its own last COM_STMT_PREPARE prepared, and forwards that statement's real id:
# if that PREPARE was refused (so the server never saw it) the alias names nothing, instead of
# the server's idea of "last", an older statement. It is never recorded as an id of its own.
LAST_STMT_ID = 0xFFFFFFFF

# The fixed part each command has after its command byte (what MySQL's parser requires before
# it answers ER_MALFORMED_PACKET): statement id(4), then for EXECUTE flags(1) and iteration
# count(4), for FETCH the number of rows(4), for SEND_LONG_DATA the parameter number(2).
STMT_HEADER_BYTES = {
    wire.COM_STMT_EXECUTE: 9,
    wire.COM_STMT_FETCH: 8,
    wire.COM_STMT_SEND_LONG_DATA: 6,
    wire.COM_STMT_CLOSE: 4,
    wire.COM_STMT_RESET: 4,
}


def parse_stmt_id(command: int, payload: bytes) -> int:
    """The statement id of a COM_STMT_EXECUTE / FETCH / SEND_LONG_DATA / CLOSE / RESET payload
    (after the command byte). Total: any bytes give an id or ClientError 1835 (a payload shorter
    than the command's fixed part), so a truncated packet is refused here, never relayed. The id
    may name no statement: the caller decides (see LAST_STMT_ID)."""
    need = STMT_HEADER_BYTES[command]
    if len(payload) < need:
        name = wire.COMMAND_NAMES[command]
        raise ClientError(ER.MALFORMED_PACKET,
                          f"Malformed communication packet ({name}: {len(payload)} bytes, at least {need} needed)")
    return _STMT_ID.unpack_from(payload)[0]


@dataclass
class Prepared:
    sql: str
    analysis: Analysis
    rows_sent: int = 0  # through a cursor (COM_STMT_FETCH): counts against the grant's max_rows
    masks: tuple[tuple[TableRef, str, MaskMethod], ...] = ()  # what the prepared text was masked for
    num_params: int = 0
    param_types: tuple[int, ...] | None = None  # bound by the last execute that sent them (audit)
    long_data: set[int] = field(default_factory=set)  # parameters sent by COM_STMT_SEND_LONG_DATA


class PreparedStatementCommands(SessionCore):
    """COM_STMT_PREPARE / EXECUTE / FETCH / SEND_LONG_DATA / CLOSE / RESET (a part of ProxySession over
    SessionCore)."""

    prepared: dict[int, Prepared]
    last_prepared: int | None  # the id the last COM_STMT_PREPARE got (None: it was refused or failed)

    async def com_stmt_prepare(self, payload: bytes) -> bool:
        started = time.perf_counter()
        self.last_prepared = None
        sql, analysis = await self._analyze_text(payload)
        if analysis.kind is not StatementKind.DENIED and not analysis.preparable:
            analysis = Analysis.denied(
                analysis.statement_class,
                DenyCode.UNSUPPORTED_STATEMENT,
                f"{analysis.statement_class} cannot be prepared through jitproxy; send it as a plain query",
            )
        decision = await self.decider.with_schema(analysis, self.upstream)
        if decision.listed_columns is not None:  # binary rows are not filtered: send it as a query
            decision = Decision(False, analysis, DenyCode.UNSUPPORTED_STATEMENT,
                                f"{analysis.statement_class} of a table granted by column cannot be "
                                "prepared through jitproxy; send it as a plain query")
        if not decision.allowed:
            return await self._deny(wire.COM_STMT_PREPARE, sql, decision, started)
        if decision.masks:
            payload, denied = await self._masked_payload(sql, analysis.kind, decision)
            if denied is not None:
                return await self._deny(wire.COM_STMT_PREPARE, sql, denied, started)
        elif analysis.metadata_tables:
            payload, denied = self._restrict_metadata(sql, analysis)
            if denied is not None:
                return await self._deny(wire.COM_STMT_PREPARE, sql, denied, started)
        await self._admit(wire.COM_STMT_PREPARE, sql, decision)
        outcome = await self._upstream(wire.COM_STMT_PREPARE, payload, Expect.PREPARE)
        assert outcome is not None
        if outcome.error is None and outcome.stmt_id is not None and outcome.stmt_id != LAST_STMT_ID:
            self.prepared[outcome.stmt_id] = Prepared(sql, analysis, masks=decision.masks, num_params=outcome.num_params)
            self.last_prepared = outcome.stmt_id
        self._audit_statement(wire.COM_STMT_PREPARE, sql, decision, started, outcome, stmt_id=outcome.stmt_id)
        return True

    def _params(self, payload: bytes, stmt: Prepared) -> dict[str, Any]:
        """The execute's parameters for its audit event (decoded from the packet that is relayed
        unchanged; the types of the last execute that bound them are remembered)."""
        if not stmt.num_params or self.audit_mode == "off":
            return {}
        if stmt.long_data:  # their values are not in this packet: the rest cannot be told apart
            sent, stmt.long_data = sorted(stmt.long_data), set()
            return {"params": None, "params_long_data": sent}
        values, stmt.param_types = decode_execute_params(payload, stmt.num_params, stmt.param_types)
        return {"params": values}

    @staticmethod
    def _same_masks(decision: Decision, stmt: Prepared) -> Decision:
        """The upstream holds the text rewritten for the masks in effect at PREPARE: if they
        changed since, that text is no longer what the person may run."""
        if not decision.allowed or decision.masks == stmt.masks:
            return decision
        return Decision(
            False, decision.analysis, DenyCode.MASKED_COLUMN,
            "the column masks for this statement changed since it was prepared; prepare it again",
            used_grants=decision.used_grants,
        )

    def _stmt(self, command: int, payload: bytes) -> tuple[int, Prepared | None, bytes]:
        """(statement id, the statement prepared through the proxy under it or None, the payload
        to forward). The alias LAST_STMT_ID is resolved to the real id, in the payload too."""
        stmt_id = parse_stmt_id(command, payload)
        if stmt_id == LAST_STMT_ID:
            if self.last_prepared is None:
                return stmt_id, None, payload
            stmt_id = self.last_prepared
            payload = _STMT_ID.pack(stmt_id) + payload[4:]
        return stmt_id, self.prepared.get(stmt_id), payload

    def _unknown_stmt(self, stmt_id: int, command: str) -> ClientError:
        return ClientError(ER.UNKNOWN_STMT_HANDLER, f"Unknown prepared statement handler ({stmt_id}) given to {command}")

    def execute_plan(self, stmt: Prepared) -> Plan:
        """An execute of a statement prepared through the proxy, decided again now (grants end;
        the masks must be those it was prepared with). Its effects are its analysis's but the
        masks, which the text prepared upstream already carries."""
        decision, _ = self.decider.now(stmt.analysis)
        if decision is not None:
            decision = self._same_masks(decision, stmt)
        return Plan(stmt.analysis, decision, effects_of(stmt.analysis, decision) - {Effect.MASKS})

    async def com_stmt_execute(self, payload: bytes) -> bool:
        """The command loop's executor of an execute's plan."""
        started = time.perf_counter()
        stmt_id, stmt, payload = self._stmt(wire.COM_STMT_EXECUTE, payload)
        if stmt is None:
            raise self._unknown_stmt(stmt_id, "mysqld_stmt_execute")
        plan = self.execute_plan(stmt)
        decision = plan.decision
        if decision is None:
            decision = self._same_masks(await self.decider.with_schema(stmt.analysis, self.upstream), stmt)
        if not decision.allowed:
            return await self._deny(wire.COM_STMT_EXECUTE, stmt.sql, decision, started, stmt_id=stmt_id)
        await self._admit(wire.COM_STMT_EXECUTE, stmt.sql, decision, stmt_id=stmt_id, **self._params(payload, stmt))
        outcome = await self._upstream(wire.COM_STMT_EXECUTE, payload, Expect.RESULT, max_rows=decision.max_rows)
        assert outcome is not None
        stmt.rows_sent = outcome.rows
        await self._after(stmt.analysis, plan.effects, outcome)
        self._audit_statement(wire.COM_STMT_EXECUTE, stmt.sql, decision, started, outcome, stmt_id=stmt_id)
        return True

    async def com_stmt_fetch(self, payload: bytes) -> bool:
        stmt_id, stmt, payload = self._stmt(wire.COM_STMT_FETCH, payload)
        if stmt is None:
            raise self._unknown_stmt(stmt_id, "mysqld_stmt_fetch")
        decision = self._same_masks(self.decider.decide(stmt.analysis), stmt)
        if not decision.allowed:
            return await self._deny(wire.COM_STMT_FETCH, stmt.sql, decision, time.perf_counter(), stmt_id=stmt_id)
        left = None if decision.max_rows is None else max(decision.max_rows - stmt.rows_sent, 0)
        outcome = await self._upstream(wire.COM_STMT_FETCH, payload, Expect.ROWS, max_rows=left)
        assert outcome is not None
        stmt.rows_sent += outcome.rows
        return True

    async def com_stmt_send_long_data(self, payload: bytes) -> bool:
        stmt_id, stmt, payload = self._stmt(wire.COM_STMT_SEND_LONG_DATA, payload)
        if stmt is not None:  # no response is ever sent for this command
            param = int.from_bytes(payload[4:6], "little")
            if param < stmt.num_params:  # another number: the server fails the next EXECUTE
                stmt.long_data.add(param)
            await self._upstream(wire.COM_STMT_SEND_LONG_DATA, payload, None)
        return True

    async def com_stmt_close(self, payload: bytes) -> bool:
        stmt_id, stmt, payload = self._stmt(wire.COM_STMT_CLOSE, payload)
        if stmt is not None:
            del self.prepared[stmt_id]
            await self._upstream(wire.COM_STMT_CLOSE, payload, None)
        return True

    async def com_stmt_reset(self, payload: bytes) -> bool:
        stmt_id, stmt, payload = self._stmt(wire.COM_STMT_RESET, payload)
        if stmt is None:
            raise self._unknown_stmt(stmt_id, "mysqld_stmt_reset")
        outcome = await self._upstream(wire.COM_STMT_RESET, payload, Expect.OK)
        if outcome is not None and outcome.error is None:
            # The server dropped the long data sent so far: the next EXECUTE's values are all in
            # its packet again, and go to the audit trail (else a client could hide them).
            stmt.long_data.clear()
        return True
