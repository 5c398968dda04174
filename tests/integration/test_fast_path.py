"""The fast path (proxy/protocol/fastpath.py): statements whose decision is known handled in the
socket callbacks. Same answers, same audit events, same denials as the command loop; revocation
still bites on the next statement; pipelined commands, a client leaving mid-result, max_rows and
prepared EXECUTEs; `listen.fast_path: false` and fail_closed keep every statement on the loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path

import pymysql
import pytest
import uvloop

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.inprocess import RunningProxy
from jitproxy_demo.mariadb import Credentials, LocalMariaDB
from tests.helpers import eventually
from tests.integration.conftest import ConnectorClient, client_ssl, local_proxy_config
from tests.integration.rawclient import RawClient

GRANTS = """grants:
  - {subject: user:fast, grant: hr_prod.title, privileges: [SELECT]}
  - {subject: user:fast, grant: hr_prod.salary, privileges: [SELECT], max_rows: 20}
"""
REVOCABLE = "grants:\n  - {subject: user:fast, grant: hr_prod.employee, privileges: [SELECT]}\n"


def _proxy(tmp_path_factory, mariadb, tls_files, credentials, name: str, authz: dict | None = None,
           loop_factory=asyncio.new_event_loop, **listen) -> tuple[RunningProxy, Path]:
    listen.setdefault("fast_path", True)  # (also when the suite runs with JITPROXY_TEST_FAST_PATH=off)
    policies = tmp_path_factory.mktemp(f"{name}-policies")
    (policies / "grants.yaml").write_text(GRANTS)
    directory = tmp_path_factory.mktemp(name)
    cfg = local_proxy_config(directory, mariadb, tls_files, credentials, policies, extra={
        "audit": {"mode": "best_effort", "sinks": [{"type": "file", "path": str(directory / "audit.jsonl")}]},
        "listen": listen, **({"authz": authz} if authz else {}),
    })
    return RunningProxy(cfg, loop_factory=loop_factory), policies


@pytest.fixture(scope="module", params=["asyncio", "uvloop"])
def fast(request, tmp_path_factory, mariadb: LocalMariaDB, tls_files: TlsFiles,
         upstream_credentials: Credentials) -> Iterator[tuple[RunningProxy, Path]]:
    """On the standard loop and on uvloop (what `jitproxy serve` runs on): their TLS transports
    hand data to the protocol differently."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else asyncio.new_event_loop
    running, policies = _proxy(tmp_path_factory, mariadb, tls_files, upstream_credentials, f"fast-{request.param}",
                               loop_factory=factory)
    yield running, policies
    running.stop()


@pytest.fixture(scope="module")
def loop_only(tmp_path_factory, mariadb: LocalMariaDB, tls_files: TlsFiles,
              upstream_credentials: Credentials) -> Iterator[RunningProxy]:
    running, _ = _proxy(tmp_path_factory, mariadb, tls_files, upstream_credentials, "loop-only", fast_path=False)
    yield running
    running.stop()


def _connect(proxy: RunningProxy, tls_files: TlsFiles) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=proxy.port, user="fast", password=proxy.token("fast"),
                           database="hr_prod", ssl=client_ssl(tls_files), autocommit=True)


def _titles(proxy: RunningProxy, tls_files: TlsFiles, ids: list[int], fast: list[int] | None = None) -> list[tuple]:
    """The titles of `ids`, one statement each; `fast` gets how many took the fast path (counted
    after PyMySQL's connection set-up, whose SET NAMES the command loop handles: a statement
    arriving while it finishes goes to the loop too; and after a first read of hr_prod, which
    the command loop takes to read what hr_prod holds)."""
    conn = _connect(proxy, tls_files)
    out = []
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM title")  # (and what hr_prod holds is known: see views.py)
        before = proxy.ctx.fast_statements
        for i in ids:
            cur.execute(f"SELECT employee_id, title FROM title WHERE employee_id = {i} ORDER BY title")
            out.append(tuple(cur.fetchall()))
    if fast is not None:
        fast.append(proxy.ctx.fast_statements - before)
    conn.close()
    return out


def _statement_events(proxy: RunningProxy, marker: str) -> list[dict]:
    return [e for e in proxy.events if e["type"].startswith("statement.") and marker in (e.get("statement") or "")]


def test_same_answers_and_events_as_the_command_loop(fast, loop_only, tls_files):
    proxy, _ = fast
    ids = [3, 7, 11, 13, 400, 9999]
    fast_count: list[int] = []
    got = _titles(proxy, tls_files, ids, fast_count)
    assert fast_count == [len(ids)]  # decided without waiting, then remembered
    assert got == _titles(loop_only, tls_files, ids)
    assert loop_only.ctx.fast_statements == 0
    assert any(got) and got[-1] == ()  # rows, and an empty result
    fast_events = _statement_events(proxy, "FROM title WHERE employee_id")
    loop_events = _statement_events(loop_only, "FROM title WHERE employee_id")[-len(ids):]  # (shared by both loops)
    assert [e["type"] for e in fast_events] == ["statement.completed"] * len(ids)
    assert [sorted(e) for e in fast_events] == [sorted(e) for e in loop_events]
    for event, rows in zip(fast_events, got):
        assert event["rows"] == len(rows) and event["user"] == "fast" and event["tables"] == ["hr_prod.title"]
        assert event["fingerprint"] == fast_events[0]["fingerprint"]
    assert len({e["statement_id"] for e in fast_events}) == len(ids)


def test_revocation_bites_on_the_next_statement(fast, tls_files):
    proxy, policies = fast
    (policies / "revocable.yaml").write_text(REVOCABLE)
    proxy.ctx.grants.reload()
    conn = _connect(proxy, tls_files)
    try:
        with conn.cursor() as cur:
            for i in range(3):
                cur.execute(f"SELECT COUNT(*) FROM employee WHERE id > {i}")
            before = proxy.ctx.fast_statements
            cur.execute("SELECT COUNT(*) FROM employee WHERE id > 5")
            assert proxy.ctx.fast_statements == before + 1
            (policies / "revocable.yaml").unlink()
            proxy.ctx.grants.reload()
            with pytest.raises(pymysql.MySQLError) as e:
                cur.execute("SELECT COUNT(*) FROM employee WHERE id > 6")
            assert e.value.args[0] == 1142 and "missing_grant" in e.value.args[1]
            assert proxy.ctx.fast_statements == before + 1
            cur.execute("SELECT COUNT(*) FROM title WHERE employee_id > 6")  # the session goes on
    finally:
        conn.close()
    denied = _statement_events(proxy, "FROM employee WHERE id > 6")
    assert [e["type"] for e in denied] == ["statement.denied"]


def test_max_rows_cuts_on_the_fast_path_too(fast, tls_files):
    proxy, _ = fast
    conn = _connect(proxy, tls_files)
    with conn.cursor() as cur:
        cur.execute("SELECT employee_id FROM salary WHERE employee_id < 10")
        for bound in (0, 1):
            before = proxy.ctx.fast_statements
            with pytest.raises(pymysql.MySQLError) as e:
                cur.execute(f"SELECT employee_id, amount FROM salary WHERE amount > {bound}")
            assert e.value.args[0] == 1104
        assert proxy.ctx.fast_statements == before + 1
        cur.execute("SELECT employee_id FROM salary WHERE employee_id < 11")  # still usable
    conn.close()
    failed = _statement_events(proxy, "FROM salary WHERE amount >")
    assert [(e["type"], e["error_code"], e["rows_sent"]) for e in failed] == [("statement.failed", 1104, 20)] * 2


def _read_result(raw: RawClient) -> list[bytes]:
    """A text result set without CLIENT_DEPRECATE_EOF: rows until the second EOF."""
    first = raw.read()
    assert first[:1] not in (b"\xff", b"\x00"), first
    for _ in range(first[0]):
        raw.read()
    assert raw.read()[:1] == b"\xfe"
    rows = []
    while (pkt := raw.read())[:1] != b"\xfe":
        rows.append(pkt)
    return rows


def _query(raw: RawClient, payload: bytes) -> list[bytes]:
    raw.seq = 0
    raw.write(payload)
    return _read_result(raw)


def test_pipelined_commands_are_answered_in_order(fast, tls_files):
    """Three commands in one write (no driver does it, a hand-made client may): each waits for
    the answer before it, on the fast path or the command loop."""
    proxy, _ = fast
    expected = [len(rows) for rows in _titles(proxy, tls_files, [3, 4])]
    raw = RawClient(proxy.port)
    raw.start_tls()
    assert raw.login("fast", proxy.token("fast").encode())[:1] == b"\x00"
    assert raw.command(b"\x02hr_prod")[:1] == b"\x00"
    query = b"\x03SELECT title FROM title WHERE employee_id = %d"
    for warm in (1, 2):
        _query(raw, query % warm)
    before = proxy.ctx.fast_statements
    packets = b"".join(len(p).to_bytes(3, "little") + b"\x00" + p for p in (query % 3, query % 4, b"\x03SELECT 42"))
    raw.sock.sendall(packets)
    answers = [_read_result(raw), _read_result(raw), _read_result(raw)]
    assert [len(a) for a in answers[:2]] == expected
    assert answers[2] == [b"\x0242"]
    assert proxy.ctx.fast_statements >= before + 2
    assert _query(raw, query % 3) == answers[0]  # and the session goes on
    raw.close()


def test_a_client_leaving_mid_result_ends_its_statement(fast, tls_files):
    """A result far bigger than the socket buffers, never read: the fast path stops reading the
    database while the client's buffer is full; when the client leaves, the statement ends as
    statement.failed, its database connection is not reused and the proxy serves the next one."""
    proxy, _ = fast
    raw = RawClient(proxy.port)
    raw.start_tls()
    assert raw.login("fast", proxy.token("fast").encode())[:1] == b"\x00"
    assert raw.command(b"\x02hr_prod")[:1] == b"\x00"
    big = b"\x03SELECT a.title, b.title, c.title FROM title a JOIN title b JOIN title c WHERE a.employee_id > %d"
    raw.command(big % 0)  # decided on the command loop; gone mid-result
    raw.close()
    eventually(lambda: proxy.ctx.sessions == {} or all(s.principal.user != "fast" for s in proxy.ctx.sessions.values()))
    raw = RawClient(proxy.port)
    raw.start_tls()
    assert raw.login("fast", proxy.token("fast").encode())[:1] == b"\x00"
    assert raw.command(b"\x02hr_prod")[:1] == b"\x00"
    before = proxy.ctx.fast_statements
    raw.seq = 0
    raw.write(big % 1)
    assert raw.read()[:1] == b"\x03"  # three columns: the answer has started
    assert proxy.ctx.fast_statements == before + 1
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    raw.close()
    eventually(lambda: [e["type"] for e in _statement_events(proxy, "WHERE a.employee_id > 1")] == ["statement.failed"])
    event = _statement_events(proxy, "WHERE a.employee_id > 1")[0]
    assert "interrupted" in event["error"]
    assert [t for t in _titles(proxy, tls_files, [5])]  # and the proxy goes on


def test_prepared_executes_take_the_fast_path(fast, tls_files):
    proxy, _ = fast
    client = ConnectorClient(proxy.port, "fast", proxy.token("fast"), tls_files, "hr_prod")
    try:
        before = proxy.ctx.fast_statements
        results = [client.query("SELECT title FROM title WHERE employee_id = %s", (i,))[1] for i in (3, 7, 11)]
    finally:
        client.close()
    assert proxy.ctx.fast_statements == before + 3  # every EXECUTE (the PREPARE is the loop's)
    executes = [e for e in _statement_events(proxy, "SELECT title FROM title WHERE employee_id = ?")
                if e.get("command") == "COM_STMT_EXECUTE"]
    assert [e["params"] for e in executes] == [[3], [7], [11]]
    assert [e["rows"] for e in executes] == [len(r) for r in results]


def test_fail_closed_keeps_every_statement_on_the_command_loop(tmp_path_factory, mariadb, tls_files,
                                                                upstream_credentials):
    policies = tmp_path_factory.mktemp("fc-policies")
    (policies / "grants.yaml").write_text(GRANTS)
    directory = tmp_path_factory.mktemp("fc")
    proxy = RunningProxy(local_proxy_config(directory, mariadb, tls_files, upstream_credentials, policies, extra={
        "audit": {"mode": "fail_closed", "sinks": [{"type": "file", "path": str(directory / "audit.jsonl")}]}}))
    try:
        assert len(_titles(proxy, tls_files, [3, 7, 11])) == 3
        assert proxy.ctx.fast_statements == 0
        allowed = [e for e in _statement_events(proxy, "FROM title WHERE") if e["type"] == "statement.allowed"]
        assert len(allowed) == 3  # written before each statement was forwarded
    finally:
        proxy.stop()


def test_the_statement_size_limit_holds_on_the_fast_path(tmp_path_factory, mariadb, tls_files, upstream_credentials):
    """authz.max_statement_bytes below thread_offload_bytes: a statement over the limit is
    refused every time, never analyzed in the callback."""
    proxy, _ = _proxy(tmp_path_factory, mariadb, tls_files, upstream_credentials, "size",
                      authz={"max_statement_bytes": 2048, "thread_offload_bytes": 16384})
    try:
        conn = _connect(proxy, tls_files)
        padding = "x" * 2100
        with conn.cursor() as cur:
            # PyMySQL's SET NAMES has been answered and what hr_prod holds is known (views.py):
            # the next can be fast
            cur.execute("SELECT COUNT(*) FROM title")
            before = proxy.ctx.fast_statements
            cur.execute("SELECT COUNT(*) FROM title WHERE title <> 'short'")
            for i in range(3):
                with pytest.raises(pymysql.MySQLError) as e:
                    cur.execute(f"SELECT COUNT(*) FROM title WHERE title <> '{padding}{i}'")
                assert e.value.args[0] == 1142 and "statement_too_long" in e.value.args[1]
        conn.close()
        assert proxy.ctx.fast_statements - before == 1
    finally:
        proxy.stop()


def test_masked_and_metadata_statements_never_take_the_fast_path(fast, tls_files, mariadb):
    """Statements whose text the command loop rewrites (column masks, information_schema
    restricted to granted objects) are declined by the fast path, however often they repeat."""
    proxy, policies = fast
    (policies / "masks.yaml").write_text(
        "masks:\n  - {subject: user:fast, table: hr_prod.salary, columns: {amount: redact}}\n")
    proxy.ctx.grants.reload()
    try:
        with mariadb.root_connection("hr_prod") as root, root.cursor() as cur:
            cur.execute("SELECT employee_id, amount FROM salary ORDER BY employee_id LIMIT 3")
            real = dict(cur.fetchall())
        conn = _connect(proxy, tls_files)
        before = proxy.ctx.fast_statements
        with conn.cursor() as cur:
            for employee_id, amount in real.items():
                cur.execute(f"SELECT amount FROM salary WHERE employee_id = {employee_id} LIMIT 1")
                assert cur.fetchall()[0][0] != amount  # masked every time
            for _ in range(3):
                cur.execute("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'hr_prod' "
                            "ORDER BY TABLE_NAME")
                assert [r[0] for r in cur.fetchall()] == ["salary", "title"]  # only what is granted
        conn.close()
        assert proxy.ctx.fast_statements == before
    finally:
        (policies / "masks.yaml").unlink()
        proxy.ctx.grants.reload()


# What differs between two runs of the same statements whatever the executor: times, ids, the chain.
_PER_RUN = {"ts", "time", "event_id", "seq", "hash", "prev_hash", "session_id", "statement_id", "duration_ms", "connection_id",
            "upstream_thread_id", "proxy_instance", "client_addr", "token_id", "token_expires_at"}
PARITY_SCRIPT = [
    "SELECT employee_id, title FROM title WHERE employee_id = 3 ORDER BY title",
    "SELECT COUNT(*) FROM title",
    "SELECT 1",
    "SELECT employee_id FROM title WHERE title = 'nobody' LIMIT 0",
    "SELECT employee_id, amount FROM salary ORDER BY employee_id",  # past max_rows: cut with an error
    "SELECT employee_id, amount FROM salary ORDER BY employee_id LIMIT 5",
    "SELECT * FROM employee",  # denied: not granted
    "SELECT no_such_column FROM title",  # the database's error
    "UPDATE title SET title = title WHERE employee_id = -1",  # denied: no UPDATE
    "DELETE FROM salary",  # denied
    "BEGIN",
    "SELECT COUNT(*) FROM title WHERE employee_id < 10",
    "ROLLBACK",
    "SET @parity = 7",
    "SELECT @parity",
    "SHOW TABLES",
    "SELECT employee_id, title FROM title WHERE employee_id = 11 ORDER BY title",
]


def _run_script(proxy: RunningProxy, tls_files: TlsFiles, marker: str) -> list[object]:
    """Each statement of PARITY_SCRIPT tagged with `marker` in a comment-free way (a string
    literal), twice: the first pass teaches the proxy the decisions, the second is compared."""
    answers: list[object] = []
    conn = _connect(proxy, tls_files)
    with conn.cursor() as cur:
        for rounds in range(2):
            for sql in PARITY_SCRIPT:
                tagged = sql if not sql.startswith("SELECT") else sql.replace("SELECT ", f"SELECT '{marker}{rounds}' AS m, ", 1)
                try:
                    cur.execute(tagged)
                    answers.append((rounds, tuple(cur.fetchall())))
                except pymysql.MySQLError as e:
                    answers.append((rounds, e.args[0]))
    conn.close()
    return answers


def _comparable(proxy: RunningProxy, first_event: int) -> list[dict]:
    events = [e for e in proxy.events[first_event:] if e["type"].startswith(("statement.", "session."))]
    # (each proxy reads its policy files from a directory of its own: compare the files' names)
    return [{k: [Path(g).name for g in v] if k == "grants" else v for k, v in e.items() if k not in _PER_RUN}
            for e in events]


def test_the_same_statements_give_identical_audit_events_on_both_executors(fast, loop_only, tls_files):
    """The whole audit record of a script of allowed, denied, cut, failed and transactional
    statements is the same whichever executor ran each statement, field for field."""
    proxy, _ = fast
    fast_from, loop_from, fast_before = len(proxy.events), len(loop_only.events), proxy.ctx.fast_statements
    fast_answers = _run_script(proxy, tls_files, "parity")
    loop_answers = _run_script(loop_only, tls_files, "parity")
    assert proxy.ctx.fast_statements - fast_before >= 8  # the second pass mostly ran on the fast path
    assert fast_answers == loop_answers
    assert any(isinstance(a, int) for _, a in fast_answers)  # errors are part of the script
    eventually(lambda: _comparable(proxy, fast_from)[-1]["type"] == "session.end")
    eventually(lambda: _comparable(loop_only, loop_from)[-1]["type"] == "session.end")
    fast_events, loop_events = _comparable(proxy, fast_from), _comparable(loop_only, loop_from)
    assert len(fast_events) == len(loop_events) > 2 * len(PARITY_SCRIPT)
    for got, expected in zip(fast_events, loop_events):
        assert got == expected
