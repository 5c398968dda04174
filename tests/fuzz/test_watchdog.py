"""The watchdog: while connections send garbage continuously (before login, after login, and
stalled on packets that never complete), the proxy's event loop keeps answering. A probe
measures it from outside: a new connection gets its greeting, a client logged in before the
flood gets SELECT 1 answered, each within BOUND_S.

BOUND_S is a failure detector, not a wait: the probes run back to back and typically take
milliseconds. A parser that loops forever (as mysql-mimic's did on a user name without its NUL)
blocks the whole loop, and then the first probe after it times out and this test fails.
Checked once by hand: with `while True: pass` in prepared.parse_stmt_id for an empty payload,
the test failed on its first probe (timeout after BOUND_S), not after the suite's timeout."""

from __future__ import annotations

import socket
import time

import pymysql

from tests.fuzz.garbage import Garbage
from tests.fuzz.oracle import no_errors_logged, unexpected_rejections
from tests.helpers import eventually
from tests.integration.conftest import client_ssl

BOUND_S = 5.0
PROBES = 60


def _greeting_latency(port: int) -> float:
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=BOUND_S) as s:
        head = s.recv(5)
    assert head[4:5] == b"\x0a", f"no greeting: {head!r}"
    return time.monotonic() - start


def _select_latency(conn: pymysql.Connection) -> float:
    start = time.monotonic()
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        assert cur.fetchone() == (1,)
    return time.monotonic() - start


def test_the_event_loop_keeps_answering_under_garbage(proxy, tls_files):
    events_before = len(proxy.events)
    probe = pymysql.connect(host="127.0.0.1", port=proxy.port, user="dev", password=proxy.token("dev"),
                            ssl=client_ssl(tls_files), connect_timeout=BOUND_S, read_timeout=BOUND_S,
                            write_timeout=BOUND_S)
    garbage = Garbage(proxy)
    with no_errors_logged():
        try:
            garbage.start()
            assert eventually(lambda: garbage.sent["prelogin"] and garbage.sent["postlogin"] and garbage.sent["stall"],
                              timeout_s=30), f"the garbage never flowed: {garbage.sent}"
            sent_before = garbage.sent.copy()
            greetings, selects = [], []
            for _ in range(PROBES):
                greetings.append(_greeting_latency(proxy.port))
                selects.append(_select_latency(probe))
            sent_during = garbage.sent - sent_before
        finally:
            garbage.join()
            probe.close()
    print(f"watchdog: {PROBES} probes; greeting max {max(greetings) * 1000:.1f} ms, SELECT 1 max "
          f"{max(selects) * 1000:.1f} ms; garbage sent meanwhile: {dict(sent_during)}")
    assert max(greetings) < BOUND_S and max(selects) < BOUND_S
    assert sent_during["prelogin"] and sent_during["postlogin"], f"no garbage during the probes: {sent_during}"
    assert not garbage.internal_errors, garbage.internal_errors
    assert not unexpected_rejections(proxy.events[events_before:])
