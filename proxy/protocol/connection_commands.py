"""The commands besides statements: COM_INIT_DB and COM_FIELD_LIST (decided like the USE and
SHOW COLUMNS they stand for), COM_PING, COM_RESET_CONNECTION, and the two refused
(COM_CHANGE_USER, COM_SET_OPTION)."""

from __future__ import annotations

import asyncio
import time

from proxy.authz.model import Analysis, DenyCode, Privilege, Requirement, StatementKind, TableRef
from proxy.mysql import wire
from proxy.protocol.core import SessionCore, not_in_charset, use_analysis
from proxy.protocol.errors import ER, ClientError, UpstreamLost
from proxy.upstream.connection import UpstreamError
from proxy.upstream.relay import Expect, ProtocolViolation


class ConnectionCommands(SessionCore):
    async def com_init_db(self, payload: bytes) -> bool:
        started = time.perf_counter()
        db = self._decode(payload)
        if db is None:  # the server could read these bytes as another name: refused, as in COM_QUERY
            return await self._deny(wire.COM_INIT_DB, f"USE `{payload.decode('utf-8', 'replace')}`",
                                    self.decider.decide(not_in_charset("USE", "database name")), started)
        decision = self.decider.decide(use_analysis(db))
        if not decision.allowed:
            return await self._deny(wire.COM_INIT_DB, f"USE `{db}`", decision, started)
        await self._admit(wire.COM_INIT_DB, f"USE `{db}`", decision)
        outcome = await self._upstream(wire.COM_INIT_DB, payload, Expect.OK)
        assert outcome is not None
        if outcome.error is None:
            self.database = db
            assert self.upstream is not None
            self.upstream.database = db
        self._audit_statement(wire.COM_INIT_DB, f"USE `{db}`", decision, started, outcome)
        return True

    async def com_field_list(self, payload: bytes) -> bool:
        started = time.perf_counter()
        raw = payload.split(b"\x00", 1)[0]
        table = self._decode(raw)
        if table is None:
            return await self._deny(wire.COM_FIELD_LIST, f"SHOW COLUMNS FROM `{raw.decode('utf-8', 'replace')}`",
                                    self.decider.decide(not_in_charset("FIELD LIST", "table name")), started)
        if self.database is None:
            analysis = Analysis.denied("FIELD LIST", DenyCode.NO_DATABASE, "no database selected")
        else:
            analysis = Analysis(
                kind=StatementKind.SHOW,
                statement_class="FIELD LIST",
                requirements=frozenset({Requirement(TableRef(self.database, table), Privilege.SELECT)}),
            )
        decision = self.decider.decide(analysis)
        sql = f"SHOW COLUMNS FROM `{table}`"
        if not decision.allowed:
            return await self._deny(wire.COM_FIELD_LIST, sql, decision, started)
        await self._admit(wire.COM_FIELD_LIST, sql, decision)
        outcome = await self._upstream(wire.COM_FIELD_LIST, payload, Expect.FIELDS)
        self._audit_statement(wire.COM_FIELD_LIST, sql, decision, started, outcome)
        return True

    async def com_ping(self, payload: bytes) -> bool:
        await self._upstream(wire.COM_PING, b"", Expect.OK)
        return True

    async def com_reset_connection(self, payload: bytes) -> bool:
        assert self.upstream is not None
        try:
            await self.upstream.reset()
            raw = await self.upstream.query_scalar("SELECT DATABASE()")
        except (OSError, ProtocolViolation, UpstreamError, asyncio.IncompleteReadError):
            raise UpstreamLost() from None
        self.prepared.clear()
        self.last_prepared = None
        self.sql_prepared.clear()
        self.database = raw.decode("utf-8") if raw is not None else None
        self.upstream.database = self.database
        assert self.connection is not None
        if self.connection.client_charset_name != self.upstream.charset:
            await self.upstream.execute(f"SET NAMES {self.connection.client_charset_name}")
            self.upstream.charset = self.connection.client_charset_name
        await self._send(self.connection.ok())
        return True

    async def com_change_user(self, payload: bytes) -> bool:
        # Re-authentication inside a session is refused: a person reconnects instead. (mysql-mimic
        # also reads the auth data with a 1-byte length, which breaks tokens over 255 bytes.)
        raise ClientError(
            ER.NOT_SUPPORTED,
            "jitproxy does not support COM_CHANGE_USER: open a new connection as the other user",
            keep_connection=False,
        )

    async def com_set_option(self, payload: bytes) -> bool:
        raise ClientError(ER.NOT_SUPPORTED, "jitproxy does not support COM_SET_OPTION (multi-statements stay off)")
