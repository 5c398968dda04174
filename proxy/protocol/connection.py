"""A client connection: handshake, TLS, token authentication and the command loop.

Every phase is ours: mysql-mimic 3.0.5's `Connection` continues after a failed login, never
requires TLS, races the TLS upgrade and has no handshake timeout. Of mysql-mimic this module
uses the capability flags and two auth packet builders (docs/architecture.md). Every command is handed to
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
from mysql_mimic.types import Capabilities
from pymysql.charset import charset_by_id
from pymysql.constants import CLIENT

from proxy.protocol import auth, client_hints, errors
from proxy.mysql import wire
from proxy.protocol.errors import ClientError, ER
from proxy.protocol.handshake import HandshakeError, HandshakeResponse, make_greeting, parse_handshake_response
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
DEFAULT_COLLATION = 45  # utf8mb4_general_ci, MariaDB's default: the greeting's until the upstream is known
SAFE_CHARSETS = {"utf8mb4": "utf-8", "utf8mb3": "utf-8", "utf8": "utf-8", "latin1": "cp1252", "ascii": "ascii"}


class ProxyConnection:

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
        max_handshake_packet_bytes: int = 64 * 1024,
    ) -> None:
        self.stream = stream
        self.session = session
        self.ssl = tls
        self.server_capabilities = SERVER_CAPABILITIES
        self.capabilities = Capabilities(0)  # the client's, from its handshake response
        self.client_plugin_name: str | None = None
        self.client_connect_attrs: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self.connection_id = connection_id
        self.peer = peer
        self.handshake_timeout_s = handshake_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.server_version = server_version
        self.max_handshake_packet_bytes = max_handshake_packet_bytes
        self.client_charset_name = "utf8mb4"
        self.client_codec = "utf-8"
        self.killed = False
        self._killed_idle = True
        self.kill_error: ClientError | None = ClientError(ER.CONNECTION_KILLED, "Connection was killed")
        self.idle = False  # waiting for the client's next command: safe to close at shutdown
        self.idle_since = time.monotonic()  # when it began waiting (the server's housekeeping
        # closes it after idle_timeout_s: cheaper than a timer per command)
        self.timed_out = False
        self.stopping = False  # the server is shutting down: finish the current command, then close

    async def start(self) -> None:
        self._task = asyncio.current_task()
        try:
            max_packet_bytes = self.stream.max_packet_bytes
            self.stream.max_packet_bytes = min(max_packet_bytes, self.max_handshake_packet_bytes)
            try:
                async with asyncio.timeout(self.handshake_timeout_s):
                    ok = await self._connection_phase()
            except TimeoutError:
                await self.session.rejected("handshake_timeout", "handshake not completed in time")
                return
            except HandshakeError as e:  # a handshake no MySQL client sends: 1043, closed
                log.info("malformed handshake", peer=self.peer, detail=e.detail)
                await self.session.rejected("bad_handshake", f"malformed handshake ({e.detail})")
                await self._send_error_quietly(e)
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
            self.stream.max_packet_bytes = max_packet_bytes
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
                # mid-command, the client waits for the command's answer (sequence 1)
                await self._send_error_quietly(self.kill_error, seq=0 if self._killed_idle else 1)
        except (ConnectionClosed, ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            await self.session.close()

    def ok(self) -> bytes:
        """An OK the proxy answers itself, with the upstream session's real status (autocommit,
        in transaction): drivers decide whether to send SET autocommit and COMMIT from it."""
        return wire.make_ok(self.session.server_status())

    def kill(self) -> None:
        if self._task is not None and not self._task.done():
            self._killed_idle = self.idle
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
        pool = self.session.instance.pool
        await self.stream.write(
            make_greeting(
                server_version=self.server_version,
                connection_id=self.connection_id,
                nonce=nonce,
                capabilities=int(self.server_capabilities),
                collation_id=pool.collation_id or DEFAULT_COLLATION,
                status=pool.session_status,
                auth_plugin=auth.SHA2,
            )
        )
        response = await self._read_handshake_response()
        if response is None:
            return False
        if not response.ssl_request:
            # The client did not ask for TLS: refuse before it could send its token, naming the
            # option of the client that connected (its connect attributes: client_hints).
            await self._refuse(
                "tls_required",
                ClientError(ER.SECURE_TRANSPORT_REQUIRED, client_hints.plaintext_refusal(response.connect_attrs)),
            )
            return False
        await self.stream.start_tls(self.ssl, timeout_s=self.handshake_timeout_s)
        response = await self._read_handshake_response()
        if response is None:
            return False
        if response.ssl_request:
            await self._refuse("bad_handshake", ClientError(ER.HANDSHAKE_ERROR, "Bad handshake"))
            return False
        collation_id = response.collation_id

        self.capabilities = Capabilities(response.capabilities)
        self.client_connect_attrs = response.connect_attrs
        self.client_plugin_name = response.client_plugin
        self.session.set_client_info(response.username, response.connect_attrs)

        if response.client_capabilities & CLIENT.COMPRESS:
            # Not offered, set anyway (mysql-connector-python's compress=True): the client would
            # compress from the OK on and both sides would wait forever. Refused, clearly.
            await self._refuse("compression_unsupported", ClientError(
                ER.NOT_SUPPORTED,
                "jitproxy does not support the compressed protocol: connect without compression "
                "(mariadb/mysql CLI: drop --compress; drivers: compress=False)",
            ))
            return False
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
        # The OK is sent by the command phase once it waits for commands, the fast path already
        # on: the client's first statement, however quick, finds the session ready for it.
        self.stream.write_many([self.ok()])
        self.session.enable_fast_path()
        return True

    async def _read_handshake_response(self) -> HandshakeResponse | None:
        """The client's SSLRequest or HandshakeResponse41 (our own total parse: handshake.py)."""
        data = await self.stream.read()
        if len(data) < 32:
            await self._refuse("bad_handshake", ClientError(ER.HANDSHAKE_ERROR, "Bad handshake"))
            return None
        try:
            codec = SAFE_CHARSETS.get(charset_by_id(data[8]).name, "utf-8")
        except KeyError:
            codec = "utf-8"
        return parse_handshake_response(data, int(self.server_capabilities), codec)

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
                await self.stream.drain()  # the OK after login, the first time round
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
        await self.stream.write(errors.packet(error))

    async def _send_error_quietly(self, error: ClientError, seq: int = 0) -> None:
        try:
            self.stream.reset_seq()
            self.stream._seq = seq  # noqa: SLF001
            await asyncio.wait_for(self._send_error(error), timeout=1)
        except Exception:  # noqa: BLE001 - the peer may be gone already
            pass
