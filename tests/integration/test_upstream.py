"""The upstream side: the TLS guard, and no session state crossing between pooled sessions."""

from __future__ import annotations

import asyncio
import ssl

import pymysql
import pytest

from proxy.upstream.connection import ClientProfile, UpstreamError, UpstreamTarget, open_connection
from tests.integration.conftest import client_ssl
from tests.no_tls_server import server_without_tls

PROFILE = ClientProfile(deprecate_eof=False, found_rows=False, multi_results=True, ps_multi_results=True)


def test_upstream_without_tls_never_receives_the_credential(tls_files):
    """aiomysql silently continues in plaintext when the server offers no TLS (libraries.md §8)."""
    received: list[bytes] = []

    async def scenario() -> None:
        server = await server_without_tls(received)
        port = server.sockets[0].getsockname()[1]
        ctx = ssl.create_default_context(cafile=str(tls_files.ca_cert))
        target = UpstreamTarget("127.0.0.1", port, "jitproxy", ctx, connect_timeout_s=5)
        with pytest.raises(UpstreamError):
            await open_connection(target, "SECRET-CREDENTIAL", PROFILE)
        await asyncio.sleep(0.1)
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    assert all(b"SECRET-CREDENTIAL" not in r for r in received)


def test_pooled_connections_carry_no_state_between_sessions(proxy, tls_files):
    def connect(database=None):
        return pymysql.connect(host="127.0.0.1", port=proxy.port, user="admin", password=proxy.token("admin"),
                               database=database, ssl=client_ssl(tls_files))

    first = connect("hr_test")
    with first.cursor() as cur:
        cur.execute("SET @secret = 'from-first'")
        cur.execute("SET time_zone = '+07:00'")
        cur.execute("BEGIN")
        cur.execute("SELECT CONNECTION_ID()")
        first_thread = cur.fetchone()[0]
    first.close()
    proxy.call(_settle(proxy))
    for database in ("hr_test", None):
        second = connect(database)
        with second.cursor() as cur:
            cur.execute("SELECT @secret, DATABASE(), @@in_transaction, @@time_zone = '+07:00'")
            assert cur.fetchone() == (None, database, 0, 0)
            cur.execute("SELECT CONNECTION_ID()")
            if database == "hr_test":  # the reset connection was really reused: the check means something
                assert cur.fetchone()[0] == first_thread
        second.close()
        proxy.call(_settle(proxy))


async def _settle(proxy) -> None:
    """Wait (bounded) until the pool has finished resetting returned connections."""
    for _ in range(200):
        if not proxy.ctx.pool._background:
            return
        await asyncio.sleep(0.01)
