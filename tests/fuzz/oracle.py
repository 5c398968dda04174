"""What must hold after every fuzzed input sent to a live proxy.

1. It still serves: a normal client (pymysql over TLS, a fresh token) connects and gets SELECT 1
   answered, each step bounded, so a wedged event loop fails here instead of hanging.
2. No parser failed in a way it did not declare: no `ERR 1105 ... (incident ...)` answer (the
   command loop's net for unexpected exceptions), no `session.rejected` whose reason is a bare
   exception class (the handshake's net: `malformed handshake (IndexError)`), and no error logged
   by the proxy (`log.exception` in the command loop and the fast path)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pymysql
from structlog.testing import capture_logs

from tests.fuzz.wire_client import is_internal_error
from tests.integration.conftest import client_ssl

CONNECT_TIMEOUT_S = 5
_BARE_EXCEPTION = re.compile(r"^malformed handshake \([A-Za-z_][A-Za-z0-9_.]*\)$")


def still_serving(proxy, tls_files) -> None:
    conn = pymysql.connect(host="127.0.0.1", port=proxy.port, user="dev", password=proxy.token("dev"),
                           ssl=client_ssl(tls_files), connect_timeout=CONNECT_TIMEOUT_S, read_timeout=10,
                           write_timeout=10)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()


def assert_no_internal_errors(packets: list[bytes]) -> None:
    bad = [p for p in packets if is_internal_error(p)]
    assert not bad, f"the proxy hit an unexpected exception: {bad!r}"


def unexpected_rejections(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Handshakes that failed on an exception no parser declared (see module docstring)."""
    return [e for e in events if e.get("type") == "session.rejected" and _BARE_EXCEPTION.match(e.get("reason", ""))]


@contextmanager
def no_errors_logged() -> Iterator[list[dict[str, Any]]]:
    """Fails when the proxy (running in this process) logs at error level inside the block."""
    with capture_logs() as logs:
        yield logs
    errors = [e for e in logs if e.get("log_level") in ("error", "critical", "exception")]
    assert not errors, f"the proxy logged errors: {errors!r}"


class Watch:
    """The oracle around one example: `with Watch(proxy, tls_files): ...send garbage...`."""

    def __init__(self, proxy, tls_files) -> None:
        self.proxy = proxy
        self.tls_files = tls_files

    def __enter__(self) -> Watch:
        self._events_before = len(self.proxy.events)
        self._logs = no_errors_logged()
        self._logs.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                still_serving(self.proxy, self.tls_files)
        finally:
            self._logs.__exit__(exc_type, exc, tb)
        if exc_type is None:
            new = self.proxy.events[self._events_before :]
            assert not unexpected_rejections(new), unexpected_rejections(new)
