"""One connection to the database as the shared DB identity.

aiomysql performs the handshake (TLS, auth plugins, auth switch); after that we speak the
command phase ourselves on its streams so responses can be relayed without decoding."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiomysql.connection import Connection as _AioConnection
from pymysql.constants import CLIENT
from pymysql.err import OperationalError

from proxy.mysql import wire
from proxy.mysql.transport import intercept
from proxy.upstream.relay import Expect, Outcome, ProtocolViolation, ResponseParser, relay_response


class _GuardedConnection(_AioConnection):
    """aiomysql with two fixes (libraries.md §8): it never falls back to plaintext when TLS
    was asked for, and it never asks for multi-statements (aiomysql always adds the flag)."""

    async def _request_authentication(self):  # type: ignore[override]
        if self._ssl_context and not (self.server_capabilities & CLIENT.SSL):
            raise OperationalError(2026, "TLS required but the upstream server does not offer it")
        self.client_flag &= ~CLIENT.MULTI_STATEMENTS
        return await super()._request_authentication()


@dataclass(frozen=True)
class ClientProfile:
    """The capability bits that change the wire format of responses. An upstream connection
    serves a client only if these match, so its bytes can be relayed unchanged."""

    deprecate_eof: bool
    found_rows: bool
    multi_results: bool
    ps_multi_results: bool

    @property
    def flags(self) -> int:
        f = 0
        if self.deprecate_eof:
            f |= CLIENT_DEPRECATE_EOF
        if self.found_rows:
            f |= CLIENT.FOUND_ROWS
        if self.multi_results:
            f |= CLIENT.MULTI_RESULTS
        if self.ps_multi_results:
            f |= CLIENT.PS_MULTI_RESULTS
        return f


CLIENT_DEPRECATE_EOF = 1 << 24


class UpstreamError(Exception):
    """The upstream could not be reached or refused us. `public` is safe to show a client;
    `detail` is for the operator log (never a credential). `kind`: "unreachable", "timeout"
    (both worth retrying), "refused" (authentication), "credentials" (ours are missing), "" ."""

    def __init__(self, public: str, detail: str = "", kind: str = "") -> None:
        super().__init__(public)
        self.public = public
        self.detail = detail
        self.kind = kind


class UpstreamConnection:
    def __init__(self, aio: _AioConnection, profile: ClientProfile) -> None:
        self._aio = aio
        self.profile = profile
        self.reader: asyncio.StreamReader = aio._reader  # noqa: SLF001 - aiomysql connects and logs in; the proxy then owns its streams
        self.writer: asyncio.StreamWriter = aio._writer  # noqa: SLF001
        self.protocol = intercept(self.writer)  # the fast path's view of its bytes (protocol/fastpath.py)
        self.thread_id: int = aio.server_thread_id[0]
        sockname = self.writer.get_extra_info("sockname")
        # Our end's port, as the server's PROCESSLIST shows it (HOST = ip:port): a KILL checks it,
        # so a thread id reused by a restarted server is never killed by mistake.
        self.local_port: int | None = sockname[1] if isinstance(sockname, tuple) else None
        self.server_version: str = aio.get_server_info()
        self.database: str | None = None
        self.charset = "utf8mb4"
        self.created = time.monotonic()
        self.last_used = self.created
        self.broken = False
        # A command was sent and its response has not ended: if the session ends now, the
        # statement may still be running on the server (the proxy kills it there).
        self.busy = False
        # The server status of this session as the server last reported it (autocommit,
        # in transaction, read-only transaction): what the proxy's own OK packets must say.
        self.status: int = aio.server_status if aio.server_status is not None else wire.SERVER_STATUS_AUTOCOMMIT
        self.collation_id: int = aio.server_language or 0  # the server's default, from its greeting
        self.setup_sql: tuple[str, ...] = ()

    @property
    def in_transaction(self) -> bool:
        return bool(self.status & wire.SERVER_STATUS_IN_TRANS)

    def note(self, outcome: Outcome) -> None:
        """A response has ended: remember the session status it reported, and when."""
        if outcome.status_known:
            self.status = outcome.status
        self.busy = False
        self.last_used = time.monotonic()

    @property
    def closed(self) -> bool:
        return self.broken or self.writer is None or self.writer.is_closing() or self.reader.at_eof()

    def send(self, command: int, payload: bytes = b"") -> None:
        self.busy = True
        self.writer.write(wire.frame(bytes((command,)) + payload, 0))

    async def request(
        self,
        command: int,
        payload: bytes,
        expect: Expect | None,
        client: asyncio.StreamWriter | None = None,
        row_limit: int | None = None,
        limit_error: Callable[[int], bytes] | None = None,
        rewrite_error: Callable[[bytes], bytes | None] | None = None,
    ) -> Outcome | None:
        """Send one command; relay (or swallow, when client is None) its response. Any I/O or
        protocol failure marks the connection broken: it is never reused."""
        try:
            self.send(command, payload)
            if expect is None:
                await self.writer.drain()
                self.busy = False  # no response is due (COM_STMT_CLOSE, SEND_LONG_DATA)
                return None
            outcome = await relay_response(
                self.reader, client, expect, self.profile.deprecate_eof, row_limit, limit_error, rewrite_error
            )
        except BaseException:
            self.broken = True
            raise
        self.note(outcome)
        return outcome

    async def execute(self, sql: str) -> Outcome:
        """A statement of the proxy's own (session setup); the response is swallowed."""
        outcome = await self.request(wire.COM_QUERY, sql.encode("utf-8"), Expect.RESULT)
        assert outcome is not None
        if outcome.error:
            raise UpstreamError("upstream setup failed", f"{outcome.error.code}: {outcome.error.message}")
        return outcome

    async def fetch_payloads(self, command: int, payload: bytes) -> tuple[list[bytes], Outcome]:
        """Send a command whose (small) result the proxy itself must read: every payload."""
        try:
            self.send(command, payload)
            payloads, outcome = await _read_all_packets(self.reader, self.profile.deprecate_eof)
        except BaseException:
            self.broken = True
            raise
        self.note(outcome)
        return payloads, outcome

    async def query_scalar(self, sql: str) -> bytes | None:
        """First column of the first row of a small result (proxy's own queries only)."""
        packets, _ = await self.fetch_payloads(wire.COM_QUERY, sql.encode("utf-8"))
        first = packets[0]
        if first[:1] == b"\xff":
            err = wire.parse_err(first)
            raise UpstreamError("upstream query failed", f"{err.code}: {err.message}")
        ncols, _ = wire.read_lenenc(first, 0)
        row_index = 1 + ncols + (0 if self.profile.deprecate_eof else 1)
        if row_index >= len(packets):
            return None
        row = packets[row_index]
        if row[:1] == b"\xfb" or (row[:1] == b"\xfe" and len(row) < 9):  # NULL, or no row at all
            return None
        length, pos = wire.read_lenenc(row, 0)
        return bytes(row[pos : pos + length])

    async def reset(self) -> None:
        """COM_RESET_CONNECTION: rolls back, drops temporary tables, user variables, prepared
        statements and session variables. Then re-applies our own session setup."""
        outcome = await self.request(wire.COM_RESET_CONNECTION, b"", Expect.OK)
        assert outcome is not None
        if outcome.error:
            raise UpstreamError("upstream reset failed", outcome.error.message)
        self.charset = "utf8mb4"
        for sql in self.setup_sql:
            await self.execute(sql)

    async def init_db(self, db: str) -> Outcome:
        outcome = await self.request(wire.COM_INIT_DB, db.encode("utf-8"), Expect.OK)
        assert outcome is not None
        if outcome.error is None:
            self.database = db
        return outcome

    def close(self) -> None:
        self.broken = True
        try:
            self._aio.close()
        except Exception:  # noqa: BLE001 - closing a dead socket may raise anything
            pass


async def _read_all_packets(
    reader: asyncio.StreamReader, deprecate_eof: bool, limit: int = 64 * 1024 * 1024
) -> tuple[list[bytes], Outcome]:
    """A whole small response as payloads (used only for the proxy's own tiny queries)."""
    parser = ResponseParser(Expect.RESULT, deprecate_eof)
    buf = bytearray()
    consumed = 0
    while not parser.done:
        chunk = await reader.read(65536)
        if not chunk:
            raise ConnectionResetError("upstream closed the connection")
        buf += chunk
        consumed = parser.feed(buf, consumed, len(buf))
        if len(buf) > limit:
            raise ProtocolViolation("response too large for the proxy to read whole")
    payloads: list[bytes] = []
    pos = 0
    while pos < len(buf):
        length = int.from_bytes(buf[pos : pos + 3], "little")
        payloads.append(bytes(buf[pos + 4 : pos + 4 + length]))
        pos += 4 + length
    return payloads, parser.outcome


@dataclass(frozen=True)
class UpstreamTarget:
    host: str
    port: int
    user: str
    ssl_context: ssl.SSLContext | None
    connect_timeout_s: float
    program_name: str = "jitproxy"


async def open_connection(
    target: UpstreamTarget, password: str, profile: ClientProfile
) -> UpstreamConnection:
    """A new authenticated upstream connection whose capabilities match `profile`. `password`
    is sent only after TLS is up when `target.ssl_context` is set (the guard above)."""
    aio = _GuardedConnection(
        host=target.host,
        port=target.port,
        user=target.user,
        password=password,
        ssl=target.ssl_context,
        charset="utf8mb4",
        autocommit=None,  # keep the server's default; aiomysql would send SET AUTOCOMMIT=0
        client_flag=profile.flags,
        connect_timeout=target.connect_timeout_s,
        program_name=target.program_name,
        local_infile=False,
    )
    try:
        await asyncio.wait_for(aio._connect(), timeout=target.connect_timeout_s)
    except asyncio.TimeoutError:
        aio.close()
        raise UpstreamError("the database did not answer in time", "connect timeout", "timeout") from None
    except asyncio.CancelledError:  # a caller's own deadline (the health ping's, a KILL's)
        aio.close()
        raise
    except OperationalError as e:
        aio.close()
        code = e.args[0] if e.args else 0
        if isinstance(e.__cause__, ssl.SSLError):  # aiomysql wraps it: not worth retrying
            raise UpstreamError("the database's TLS certificate was not accepted",
                                f"{type(e.__cause__).__name__}: {e.__cause__}", "refused") from None
        if code in (2003, 2013, 2006):  # aiomysql's "can't connect" / "lost connection"
            cause = f" ({type(e.__cause__).__name__}: {e.__cause__})" if e.__cause__ else ""
            raise UpstreamError("the database is unreachable", f"{code}: {e.args[-1]}{cause}", "unreachable") from None
        raise UpstreamError("the database refused the proxy's connection", f"{code}: {e.args[-1]}", "refused") from None
    except ssl.SSLError as e:  # a certificate that does not verify is not worth retrying
        aio.close()
        raise UpstreamError("the database's TLS certificate was not accepted", f"{type(e).__name__}: {e}",
                            "refused") from None
    except OSError as e:
        aio.close()
        raise UpstreamError("the database is unreachable", f"{type(e).__name__}: {e}", "unreachable") from None
    if aio.client_flag & CLIENT.MULTI_STATEMENTS:  # defence in depth: never batch upstream
        aio.close()
        raise UpstreamError("upstream connection setup failed", "multi-statements enabled")
    conn = UpstreamConnection(aio, profile)
    try:
        await _pin_sql_mode(conn)
    except BaseException:
        conn.close()
        raise
    return conn


_FORBIDDEN_MODES = ("ANSI_QUOTES", "NO_BACKSLASH_ESCAPES")


async def _pin_sql_mode(conn: UpstreamConnection) -> None:
    """The analyzer reads SQL with MySQL's default lexing. If the server's sql_mode makes it read
    quotes or backslashes differently, take those modes out for our sessions (decision 6)."""
    raw = await conn.query_scalar("SELECT @@SESSION.sql_mode")
    modes = [m for m in (raw or b"").decode().split(",") if m]
    if any(m in _FORBIDDEN_MODES for m in modes):
        kept = ",".join(m for m in modes if m not in _FORBIDDEN_MODES and m != "ANSI")
        conn.setup_sql = (f"SET SESSION sql_mode = '{kept}'",)
        for sql in conn.setup_sql:
            await conn.execute(sql)


__all__ = [
    "ClientProfile",
    "Expect",
    "Outcome",
    "ProtocolViolation",
    "UpstreamConnection",
    "UpstreamError",
    "UpstreamTarget",
    "open_connection",
]
