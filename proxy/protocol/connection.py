"""A client connection: handshake, TLS, token authentication and the command loop.

Built on mysql-mimic's `Connection` for its packet builders and parsers; the phases themselves
are ours because mysql-mimic 3.0.5 continues after a failed login, never requires TLS, races
the TLS upgrade and has no handshake timeout (ARCHITECTURE.md §3). Every command is handed to
the `ProxySession`; errors cross to the client in one place (`_send_error`)."""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from typing import TYPE_CHECKING

import structlog
from mysql_mimic import packets
from mysql_mimic.charset import CharacterSet
from mysql_mimic.connection import Connection
from mysql_mimic.packets import HandshakeResponse41, SSLRequest
from mysql_mimic.types import Capabilities
from pymysql.charset import charset_by_id

from proxy.protocol import auth, wire
from proxy.protocol.errors import ClientError, ER
from proxy.protocol.stream import ClientStream, ConnectionClosed

if TYPE_CHECKING:
    from proxy.protocol.session import ProxySession

log = structlog.get_logger("jitproxy.connection")

# What we offer clients. Deliberately absent: MULTI_STATEMENTS, LOCAL_FILES, COMPRESS,
# QUERY_ATTRIBUTES (MariaDB lacks it and it changes COM_STMT_EXECUTE's layout), SESSION_TRACK,
# IGNORE_SPACE (changes how the server parses function names).
SERVER_CAPABILITIES = (
    Capabilities.CLIENT_LONG_PASSWORD
    | Capabilities.CLIENT_FOUND_ROWS
    | Capabilities.CLIENT_LONG_FLAG
    | Capabilities.CLIENT_CONNECT_WITH_DB
    | Capabilities.CLIENT_PROTOCOL_41
    | Capabilities.CLIENT_SSL
    | Capabilities.CLIENT_TRANSACTIONS
    | Capabilities.CLIENT_SECURE_CONNECTION
    | Capabilities.CLIENT_MULTI_RESULTS
    | Capabilities.CLIENT_PS_MULTI_RESULTS
    | Capabilities.CLIENT_PLUGIN_AUTH
    | Capabilities.CLIENT_CONNECT_ATTRS
    | Capabilities.CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Capabilities.CLIENT_DEPRECATE_EOF
)

# Charsets whose bytes the analyzer decodes exactly as the server does. Multibyte charsets
# whose trailing bytes can be 0x5C (gbk, big5, sjis, cp932...) are an injection differential.
SAFE_CHARSETS = {"utf8mb4": "utf-8", "utf8mb3": "utf-8", "utf8": "utf-8", "latin1": "cp1252", "ascii": "ascii"}
_NEUTRAL_COLLATION = 45  # utf8mb4_general_ci: handed to mysql-mimic's parser, whose table is partial


class ProxyConnection(Connection):
    session: ProxySession
    stream: ClientStream  # type: ignore[assignment]

    def __init__(
        self,
        stream: ClientStream,
        session: ProxySession,
        tls: ssl.SSLContext,
        connection_id: int,
        peer: str,
        handshake_timeout_s: float,
        idle_timeout_s: float,
        server_version: str,
    ) -> None:
        super().__init__(
            stream=stream,  # type: ignore[arg-type]
            session=session,
            control=None,  # type: ignore[arg-type]  # KILL is the session's, not mysql-mimic's
            identity_provider=None,  # type: ignore[arg-type]
            server_capabilities=SERVER_CAPABILITIES,
            ssl=tls,
        )
        self.connection_id = connection_id
        self.peer = peer
        self.handshake_timeout_s = handshake_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.server_version = server_version
        self.client_charset_name = "utf8mb4"
        self.client_codec = "utf-8"
        self.killed = False
        self.kill_error: ClientError | None = ClientError(ER.CONNECTION_KILLED, "Connection was killed")
        self.idle = False  # waiting for the client's next command: safe to close at shutdown
        self.idle_since = time.monotonic()  # when it began waiting (the server's housekeeping
        # closes it after idle_timeout_s: cheaper than a timer per command)
        self.timed_out = False
        self.stopping = False  # the server is shutting down: finish the current command, then close

    # mysql-mimic reads these from its variables; ours come from the handshake.
    @property
    def server_charset(self) -> CharacterSet:
        return CharacterSet.utf8mb4

    @property
    def client_charset(self) -> CharacterSet:
        return CharacterSet.utf8mb4

    async def start(self) -> None:
        self._task = asyncio.current_task()
        try:
            try:
                async with asyncio.timeout(self.handshake_timeout_s):
                    ok = await self._connection_phase()
            except TimeoutError:
                await self.session.rejected("handshake_timeout", "handshake not completed in time")
                return
            except ClientError as e:  # framing error or oversized packet before login
                await self.session.rejected("bad_handshake", e.message)
                await self._send_error_quietly(e)
                return
            except (ConnectionClosed, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
                await self.session.rejected("disconnected", "client left during the handshake")
                return
            except Exception as e:  # noqa: BLE001 - a malformed handshake: never echo its details
                log.info("malformed handshake", peer=self.peer, error=type(e).__name__)
                await self.session.rejected("bad_handshake", f"malformed handshake ({type(e).__name__})")
                await self._send_error_quietly(ClientError(ER.HANDSHAKE_ERROR, "Bad handshake"))
                return
            if not ok:
                return
            await self._command_phase()
        except asyncio.CancelledError:
            self.session.abort_fast()  # nothing more of a fast-path response reaches the client
            if self.timed_out:
                self.session.end_reason = self.session.end_reason or "idle_timeout"
                await self._send_error_quietly(ClientError(
                    ER.CLIENT_INTERACTION_TIMEOUT,
                    f"The client was disconnected by jitproxy because of inactivity "
                    f"(listen.idle_timeout_s = {self.idle_timeout_s:g})"))
            elif not self.killed:
                raise
            elif self.kill_error is not None:
                await self._send_error_quietly(self.kill_error)
        except (ConnectionClosed, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            await self.session.close()

    def kill(self) -> None:  # type: ignore[override]
        if self._task is not None and not self._task.done():
            self.killed = True
            self._task.cancel()

    def abort(self) -> None:
        """Close without a word more to the client (the fast path has told it already, or it
        finished the statement the server was waiting for)."""
        self.kill_error = None
        self.kill()

    def time_out(self) -> None:
        """Idle past idle_timeout_s (checked by the server's housekeeping): close, telling why."""
        if self.idle and self._task is not None and not self._task.done():
            self.timed_out = True
            self._task.cancel()

    def end(self, error: ClientError) -> None:
        """Close the session on the proxy's own initiative: at once when it waits for the
        client (which is told why), after the current command otherwise (never mid-response)."""
        self.kill_error = error
        if self.idle:
            self.kill()
        else:
            self.stopping = True

    # -- connection phase ------------------------------------------------------------------

    async def _connection_phase(self) -> bool:
        """Handshake, TLS and authentication. Returns True when the session is ready."""
        nonce = auth.new_nonce()
        await self.stream.write(
            packets.make_handshake_v10(
                capabilities=self.server_capabilities,
                server_charset=CharacterSet.utf8mb4,
                server_version=self.server_version,
                connection_id=self.connection_id,
                auth_data=nonce,
                status_flags=self.status_flags,
                auth_plugin_name=auth.SHA2,
            )
        )
        first = await self._read_handshake_response()
        if first is None:
            return False
        _, response = first
        if not isinstance(response, SSLRequest):
            # The client did not ask for TLS: refuse before it could send its token.
            await self._refuse(
                "tls_required",
                ClientError(
                    ER.SECURE_TRANSPORT_REQUIRED,
                    "Connections using insecure transport are prohibited: jitproxy requires TLS "
                    "(mariadb/mysql CLI: --ssl; drivers: ssl_mode=REQUIRED or an ssl context)",
                ),
            )
            return False
        await self.stream.start_tls(self.ssl, timeout_s=self.handshake_timeout_s)  # type: ignore[arg-type]
        second = await self._read_handshake_response()
        if second is None:
            return False
        collation_id, response = second
        if isinstance(response, SSLRequest):
            await self._refuse("bad_handshake", ClientError(ER.HANDSHAKE_ERROR, "Bad handshake"))
            return False

        self.capabilities = response.capabilities
        self.client_connect_attrs = response.connect_attrs
        self.client_plugin_name = response.client_plugin
        self.session.set_client_info(response.username, response.connect_attrs)

        if Capabilities.CLIENT_PROTOCOL_41 not in self.capabilities:
            await self._refuse("old_protocol", ClientError(ER.HANDSHAKE_ERROR, "Client protocol 4.1 required"))
            return False
        try:
            charset_name = charset_by_id(collation_id).name
        except KeyError:
            charset_name = f"collation {collation_id}"
        if charset_name not in SAFE_CHARSETS:
            await self._refuse(
                "charset",
                ClientError(
                    ER.UNKNOWN_CHARACTER_SET,
                    f"Character set '{charset_name}' is not supported by jitproxy "
                    f"(use one of: {', '.join(sorted(SAFE_CHARSETS))})",
                ),
            )
            return False
        self.set_client_charset(charset_name)

        password = await self._authenticate(response.client_plugin, response.auth_response)
        if password is None:
            return False
        try:
            error = await self.session.login(
                username=response.username,
                token=password,
                database=response.database,
                collation_id=collation_id,
            )
        finally:
            del password
        if error is not None:
            await self._send_error(error)
            return False
        await self.stream.write(self.ok())
        self.session.enable_fast_path()
        return True

    async def _read_handshake_response(self) -> tuple[int, HandshakeResponse41 | SSLRequest] | None:
        """The client's SSLRequest or HandshakeResponse41, with its collation id. mysql-mimic's
        collation table is partial, so its parser gets a neutral id and we map the real one."""
        data = await self.stream.read()
        if len(data) < 32:
            await self._refuse("bad_handshake", ClientError(ER.HANDSHAKE_ERROR, "Bad handshake"))
            return None
        collation_id = data[8]
        data = data[:8] + bytes((_NEUTRAL_COLLATION,)) + data[9:]
        return collation_id, packets.parse_handshake_response(self.server_capabilities, data)

    def set_client_charset(self, name: str) -> None:
        self.client_charset_name = name
        self.client_codec = SAFE_CHARSETS[name]

    async def _authenticate(self, client_plugin: str | None, auth_response: bytes) -> bytes | None:
        """Run the auth exchange until the client has sent its token (returned) or is refused."""
        step = auth.first_step(client_plugin, auth_response)
        for _ in range(4):
            if step.refused is not None:
                await self._refuse("auth_protocol", ClientError(ER.ACCESS_DENIED, step.refused))
                return None
            if step.password is not None:
                return step.password
            if step.switch_to is not None:
                await self.stream.write(
                    packets.make_auth_switch_request(
                        server_charset=CharacterSet.utf8mb4,
                        plugin_name=step.switch_to,
                        plugin_provided_data=auth.new_nonce(),
                    )
                )
                step = auth.after_switch(await self.stream.read())
            elif step.more_data is not None:
                await self.stream.write(packets.make_auth_more_data(step.more_data))
                step = auth.after_full_auth_request(await self.stream.read())
        await self._refuse("auth_protocol", ClientError(ER.ACCESS_DENIED, "Authentication exchange failed"))
        return None

    async def _refuse(self, code: str, error: ClientError) -> None:
        await self.session.rejected(code, error.message)
        await self._send_error(error)

    # -- command phase ---------------------------------------------------------------------

    async def _command_phase(self) -> None:
        while not self.stopping:
            self.stream.reset_seq()
            self.idle = True
            self.idle_since = time.monotonic()
            try:
                data = await self.stream.read()
            except ClientError as e:  # malformed framing or an oversized packet: answer, then close
                await self._send_error(e)
                return
            finally:
                self.idle = False
            if not data:
                await self._send_error(ClientError(ER.UNKNOWN_COM, "Empty command"))
                continue
            command = data[0]
            if command == wire.COM_QUIT:
                return
            try:
                keep_going = await self.session.dispatch(command, data[1:])
            except ClientError as e:
                await self._send_error(e)
                keep_going = e.keep_connection
            except (ConnectionClosed, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
                raise
            except Exception:  # noqa: BLE001 - a bug or malformed input: one clear error, no details
                incident = uuid.uuid4().hex[:12]
                log.exception("command failed", incident=incident, command=command, session=self.session.info.session_id)
                upstream = self.session.upstream
                keep_going = upstream is not None and not upstream.broken
                self.stream.reset_seq()
                self.stream._seq = 1  # the response to a one-packet command starts at 1
                await self._send_error(
                    ClientError(ER.INTERNAL, f"jitproxy could not process this command (incident {incident})")
                )
            if not keep_going:
                return

    async def _send_error(self, error: ClientError) -> None:
        await self.stream.write(wire.make_err(error.code, error.sqlstate, error.message))

    async def _send_error_quietly(self, error: ClientError) -> None:
        try:
            self.stream.reset_seq()
            await asyncio.wait_for(self._send_error(error), timeout=1)
        except Exception:  # noqa: BLE001 - the peer may be gone already
            pass
