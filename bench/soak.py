"""A bounded soak test of `jitproxy serve` under load and chaos, with checks at the end.

    .venv/bin/python bench/soak.py [--minutes 5] [--clients 16] [--pace-ms 100] [--seed N] [--keep]
    .venv/bin/python bench/soak.py --minutes 0.5          # a quick run

What it starts (everything on loopback, in a temporary directory):

* its own MariaDB (jitproxy_demo.mariadb.LocalMariaDB: TLS, general log ON) with the sample data, the
  proxy's upstream account and three tables of its own in hr_test: `soak` (the writes), and
  `soak_secret` (never granted);
* a real `jitproxy serve` process (`python -m proxy.cli serve --config <file>`) with a config file
  written here: audit to a file sink in mode **best_effort** (statements never wait for the
  sink; the seal at SIGTERM still makes the file verifiable), upstream.statement_timeout_s 5,
  health pings every second, explicit limits, log level info;
* policies in a directory of their own: users `soak` and `soak_rev` get SELECT+INSERT on
  hr_test.soak and SELECT on hr_test.employee; `probe` gets SELECT on hr_test.employee. The
  grants of `soak_rev` live in their own file, rewritten (revoked, then granted again) + SIGHUP.

The load: --clients threads (PyMySQL over verified TLS, tokens signed with the config's signing
key; every 4th client is `soak_rev`, the others `soak`), each for --minutes doing a random mix:
allowed SELECTs; transactions on hr_test.soak (BEGIN, 1-3 INSERTs each with a unique marker,
then COMMIT or ROLLBACK); denied statements (hr_prod.salary, hr_test.soak_secret, a DELETE
without the privilege); failing ones (a syntax error, a duplicate key, an unknown column); and
now and then a SELECT SLEEP past the statement timeout. Every statement starts with a comment
`/* soak:<client>:<n> */`, unique in the run, found again in MariaDB's general log and in the
audit trail. A client reconnects after any connection error (counted).

Meanwhile (all bounded in time and count):
* chaos: SIGHUP with an invalid config (then the good one again), revoke + re-grant `soak_rev`
  (policy file + SIGHUP, twice), pause MariaDB (SIGSTOP 4 s, SIGCONT), restart MariaDB (stop,
  start), and every 2-4 s a client socket shut down in the middle of a statement;
* garbage clients from 127.0.0.2: random bytes before the greeting, random packets after it, a
  TLS request followed by junk, and a batch of silent sockets;
* a probe from 127.0.0.3 that logs in and runs one SELECT every second;
* a sampler of the proxy's RSS (/proc/<pid>/status, every second).

At the end: the clients stop, the proxy gets SIGTERM, and each check prints PASS or FAIL with its
numbers; the script exits 1 if any check failed. How markers are judged (match_markers):

  in the general log, one statement.completed / statement.failed  ok
  statement.failed, not in the general log                         ok: cut before it reached the
                                                                    database (database down or
                                                                    paused, client socket killed)
  statement.denied, not in the general log                         ok
  no audit event, not in the log, the client saw its connection    ok: lost before the proxy
    drop                                                            read or decided it
  in the general log without a closing audit event                 FAIL
  statement.denied but in the general log                          FAIL (a denied statement
                                                                    reached MariaDB)
  more than one closing/denied event for one marker                FAIL
  statement.completed but not in the general log                   FAIL
  in the general log more than once                                FAIL (executed twice)
  the client got an answer (a result or an error) but no event     FAIL
  the client got a result but the event is not statement.completed FAIL
  statement.allowed without a closing event                        FAIL

Transactions (check_atomicity), from what each client saw and the soak table's rows: a COMMIT
answered OK must have all its rows; a ROLLBACK, or a transaction whose connection dropped before
COMMIT was sent, must have none; a COMMIT whose answer was lost (an error, the connection gone)
all or none; no row may belong to no known transaction.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# -- the pure checks (tests/unit/test_soak_checks.py) -------------------------------------------

MARKER = re.compile(r"/\* (soak:\d+:\d+) \*/")
CLOSING = frozenset({"statement.completed", "statement.failed"})
DENIED = "statement.denied"


def marker_of(statement: str | None) -> str | None:
    """The soak marker a statement starts with (or carries anywhere), or None."""
    if not statement:
        return None
    m = MARKER.search(statement)
    return m.group(1) if m else None


def markers_in_log(text: str) -> Counter[str]:
    """How often each soak marker appears in a general-log text (one per statement received)."""
    return Counter(MARKER.findall(text))


def audit_outcomes(events: Iterable[Mapping[str, Any]]) -> dict[str, list[str]]:
    """marker → the types of its closing and denial events, in order (statement.allowed, which a
    long statement gets before it ends, is not a closing event and is left out)."""
    out: dict[str, list[str]] = defaultdict(list)
    for e in events:
        kind = e.get("type")
        if kind not in CLOSING and kind != DENIED:
            continue
        m = marker_of(e.get("statement"))
        if m is not None:
            out[m].append(str(kind))
    return dict(out)


@dataclass
class MatchReport:
    """Markers of the general log against the audit trail (and what the clients saw)."""

    in_log: int = 0  # distinct markers in the general log
    audited: int = 0  # distinct markers with a closing or denial event
    ok: Counter[str] = field(default_factory=Counter)  # how each acceptable case was classified
    in_log_without_event: list[str] = field(default_factory=list)
    denied_in_log: list[str] = field(default_factory=list)
    several_events: list[str] = field(default_factory=list)
    completed_not_in_log: list[str] = field(default_factory=list)
    executed_twice: list[str] = field(default_factory=list)
    answered_without_event: list[str] = field(default_factory=list)
    result_without_completed: list[str] = field(default_factory=list)
    allowed_without_closing: list[str] = field(default_factory=list)  # statement.allowed, never closed

    def failures(self) -> dict[str, list[str]]:
        names = ("in_log_without_event", "denied_in_log", "several_events", "completed_not_in_log",
                 "executed_twice", "answered_without_event", "result_without_completed", "allowed_without_closing")
        return {n: getattr(self, n) for n in names if getattr(self, n)}

    @property
    def passed(self) -> bool:
        return not self.failures()


def match_markers(general_log: str, events: Iterable[Mapping[str, Any]],
                  client: Mapping[str, str] | None = None) -> MatchReport:
    """`client`: marker → what the client saw: "ok" (a result), "error" (an error answer) or
    "conn" (its connection dropped: no answer). Markers only the client knows are judged by it."""
    events = list(events)
    logged = markers_in_log(general_log)
    audit = audit_outcomes(events)
    opened = {m for e in events if e.get("type") == "statement.allowed" and (m := marker_of(e.get("statement")))}
    client = client or {}
    r = MatchReport(in_log=len(logged), audited=len(audit))
    for m in sorted(set(logged) | set(audit) | set(client) | opened):
        kinds = audit.get(m, [])
        n_log = logged.get(m, 0)
        seen = client.get(m)
        if n_log > 1:
            r.executed_twice.append(m)
        if len(kinds) > 1:
            r.several_events.append(m)
        if DENIED in kinds and n_log:
            r.denied_in_log.append(m)
        if n_log and not any(k in CLOSING for k in kinds):
            if DENIED not in kinds:
                r.in_log_without_event.append(m)
        if m in opened and not any(k in CLOSING for k in kinds):
            r.allowed_without_closing.append(m)
        if not n_log and "statement.completed" in kinds:
            r.completed_not_in_log.append(m)
        if seen in ("ok", "error") and not kinds:
            r.answered_without_event.append(m)
        if seen == "ok" and kinds and kinds != ["statement.completed"]:
            r.result_without_completed.append(m)
        if len(kinds) == 1 and n_log <= 1:
            kind = kinds[0]
            if kind == DENIED and not n_log:
                r.ok["denied, not in the log"] += 1
            elif kind == "statement.completed" and n_log:
                r.ok["completed, in the log"] += 1
            elif kind == "statement.failed":
                r.ok["failed, in the log" if n_log else "failed, not in the log (cut before the database)"] += 1
        elif not kinds and not n_log and seen not in ("ok", "error"):
            r.ok["no event, not in the log (connection lost before the proxy decided)"] += 1
    return r


@dataclass
class Txn:
    """One transaction as its client saw it. `markers`: its INSERTs that were sent. `outcome`:
    committed (COMMIT answered OK), rolled_back (ROLLBACK sent), abandoned (the connection dropped
    or was closed before COMMIT was sent), commit_unknown (COMMIT sent, no OK: error or no answer)."""

    id: str
    markers: list[str] = field(default_factory=list)
    outcome: str = "abandoned"


@dataclass
class AtomicityReport:
    ok: Counter[str] = field(default_factory=Counter)
    partial: list[str] = field(default_factory=list)  # some rows of a transaction, not all
    committed_missing: list[str] = field(default_factory=list)  # COMMIT OK, rows absent
    uncommitted_present: list[str] = field(default_factory=list)  # never committed, rows present
    stray_rows: list[str] = field(default_factory=list)  # rows of no known transaction

    def failures(self) -> dict[str, list[str]]:
        names = ("partial", "committed_missing", "uncommitted_present", "stray_rows")
        return {n: getattr(self, n) for n in names if getattr(self, n)}

    @property
    def passed(self) -> bool:
        return not self.failures()


def check_atomicity(txns: Iterable[Txn], rows: Iterable[tuple[str, str]]) -> AtomicityReport:
    """`rows`: (marker, txn id) of the soak table's rows written by transactions."""
    r = AtomicityReport()
    present: dict[str, set[str]] = defaultdict(set)  # txn id → its markers found
    known: dict[str, str] = {}  # marker → its txn id
    txns = list(txns)
    for t in txns:
        for m in t.markers:
            known[m] = t.id
    for marker, txn in rows:
        if known.get(marker) != txn:
            r.stray_rows.append(f"{marker} ({txn})")
        else:
            present[txn].add(marker)
    for t in txns:
        if not t.markers:
            r.ok["no rows written"] += 1
            continue
        found = present.get(t.id, set())
        if 0 < len(found) < len(t.markers):
            r.partial.append(f"{t.id} ({t.outcome}: {len(found)} of {len(t.markers)} rows)")
        elif t.outcome == "committed":
            if found:
                r.ok["committed: all rows"] += 1
            else:
                r.committed_missing.append(t.id)
        elif t.outcome == "commit_unknown":
            r.ok["commit answer lost: all rows" if found else "commit answer lost: no rows"] += 1
        elif found:
            r.uncommitted_present.append(f"{t.id} ({t.outcome})")
        else:
            r.ok[f"{t.outcome}: no rows"] += 1
    return r


def windows_hit(t0: float, t1: float, windows: Iterable[tuple[float, float]]) -> bool:
    """Does [t0, t1] overlap one of the (start, end) windows?"""
    return any(t0 <= end and t1 >= start for start, end in windows)


def rss_bounded(start_mb: float, peak_mb: float, factor: float = 2.0, slack_mb: float = 100.0) -> bool:
    return peak_mb <= factor * start_mb + slack_mb


# -- the run ------------------------------------------------------------------------------------

DATABASE = "hr_test"
STATEMENT_TIMEOUT_S = 5.0
LONG_SLEEP_S = STATEMENT_TIMEOUT_S + 3  # past the limit: the proxy must cancel it
WINDOW_GRACE_S = 10.0  # after a database pause/restart ends, failures are still expected this long
CONN_ERRORS = frozenset({2003, 2006, 2013, 2014, 2055, 0})
KINDS_NEEDING_GRANT = frozenset({"select", "insert", "dup_key", "bad_column"})

GRANTS = """grants:
  - {subject: user:soak, grant: hr_test.soak, privileges: [SELECT, INSERT]}
  - {subject: user:soak, grant: hr_test.employee, privileges: [SELECT]}
  - {subject: user:probe, grant: hr_test.employee, privileges: [SELECT]}
"""
REVOCABLE = """grants:
  - {subject: user:soak_rev, grant: hr_test.soak, privileges: [SELECT, INSERT]}
  - {subject: user:soak_rev, grant: hr_test.employee, privileges: [SELECT]}
"""
REVOKED = "grants: []\n"

SETUP_SQL = [
    "CREATE TABLE hr_test.soak (id BIGINT AUTO_INCREMENT PRIMARY KEY, marker VARCHAR(40) NOT NULL UNIQUE, "
    "txn VARCHAR(40) NULL, client INT NULL, at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
    "INSERT INTO hr_test.soak (marker) VALUES ('dup-seed')",
    "CREATE TABLE hr_test.soak_secret (id INT PRIMARY KEY, v VARCHAR(20))",
    "INSERT INTO hr_test.soak_secret VALUES (1, 'secret')",
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def rss_mb(pid: int) -> float | None:
    with contextlib.suppress(OSError, ValueError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return None


@dataclass
class Sent:
    kind: str
    user: str
    seen: str  # ok / error / conn
    code: int | None
    t0: float
    t1: float
    killed: bool = False  # chaos shut its socket down while it ran


@dataclass
class ChaosLog:
    actions: list[tuple[float, str, str]] = field(default_factory=list)  # (time, action, result)
    windows: list[tuple[float, float, str]] = field(default_factory=list)  # database disruptions
    revoked: list[tuple[float, float]] = field(default_factory=list)  # (revocation applied, re-grant sent)
    regranted: list[float] = field(default_factory=list)  # re-grant applied
    kills: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, action: str, result: str) -> None:
        with self.lock:
            self.actions.append((time.time(), action, result))
        log(f"chaos: {action}: {result}")


class Rig:
    """MariaDB + `jitproxy serve` + the files they use."""

    def __init__(self, base: Path, seed: int) -> None:
        from jitproxy_demo.certs import make_ca_and_server_cert
        from jitproxy_demo.inprocess import write_keys
        from jitproxy_demo.mariadb import LocalMariaDB
        from jitproxy_demo.sample import create_proxy_upstream_user, load_sample_data
        from proxy.identity.personal_tokens import TokenIssuer

        self.base = base
        self.tls = make_ca_and_server_cert(base / "tls")
        self.db = LocalMariaDB(base / "db", tls=self.tls, general_log=True, extra_args=("--max-connections=400",))
        log("starting MariaDB (TLS, general log on)")
        self.db.start()
        load_sample_data(self.db)
        self.creds = create_proxy_upstream_user(self.db, password="soak-upstream-" + str(seed))
        for sql in SETUP_SQL:
            self.db.execute_root(sql)
        private, public = write_keys(base / "keys")
        self.policies = base / "policies"
        self.policies.mkdir()
        (self.policies / "soak.yaml").write_text(GRANTS)
        self.revocable = self.policies / "soak_rev.yaml"
        self.revocable.write_text(REVOCABLE)
        self.port = free_port()
        self.audit_file = base / "audit.jsonl"
        self.config_file = base / "jitproxy.yaml"
        raw = {
            "listen": {"host": "127.0.0.1", "port": self.port, "handshake_timeout_s": 5,
                       "tls": {"cert_file": str(self.tls.server_cert), "key_file": str(self.tls.server_key)}},
            "identity": {"issuers": [{"issuer": "jitproxy", "audience": "jitproxy", "public_key_file": str(public)}],
                         "signing": {"private_key_file": str(private)}},
            "limits": {"max_handshakes": 100, "max_handshakes_per_address": 30, "max_connections_per_address": 100,
                       "max_connections_per_user": 40},
            "upstream": {"host": "127.0.0.1", "port": self.db.port, "user": self.creds.user,
                         "password": self.creds.password, "tls": {"ca_file": str(self.tls.ca_cert)},
                         "statement_timeout_s": STATEMENT_TIMEOUT_S, "health_interval_s": 1, "health_timeout_s": 2,
                         "connect_timeout_s": 2, "pool": {"connect_deadline_s": 3, "max_size": 100}},
            "policies": {"dirs": [str(self.policies)]},
            "store": {"path": str(base / "state" / "jitproxy.db")},
            "api": {"enabled": False},
            "audit": {"mode": "best_effort", "sinks": [{"type": "file", "path": str(self.audit_file)}]},
            "log": {"level": "info", "format": "console"},
        }
        import yaml

        self.config_text = yaml.safe_dump(raw)
        self.config_file.write_text(self.config_text)
        self.issuer = TokenIssuer(private.read_bytes(), "jitproxy", "jitproxy", timedelta(hours=12))
        self.proxy_log = base / "jitproxy.log"
        self.proxy: subprocess.Popen[bytes] | None = None

    def token(self, user: str) -> str:
        return self.issuer.issue(user, (), ttl=timedelta(hours=2))

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.tls.ca_cert))

    def start_proxy(self) -> None:
        out = self.proxy_log.open("wb")
        self.proxy = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(self.config_file)],
                                      stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        out.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proxy.poll() is not None:
                raise SystemExit(f"jitproxy serve exited at start:\n{self.proxy_log.read_text()[-3000:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.2)
        raise SystemExit("jitproxy serve did not listen within 60 s")

    def log_count(self, text: str) -> int:
        try:
            return self.proxy_log.read_text(errors="replace").count(text)
        except OSError:
            return 0

    def wait_log(self, text: str, before: int, timeout_s: float = 10) -> float | None:
        """Wait until `text` appears more often than `before` in the proxy log: its time, or None."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.log_count(text) > before:
                return time.time()
            time.sleep(0.1)
        return None

    def sighup(self) -> None:
        assert self.proxy is not None
        self.proxy.send_signal(signal.SIGHUP)

    def mariadbd_pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError):
            return int(self.db.pid_file.read_text().strip())
        return None

    def close(self) -> None:
        if self.proxy is not None and self.proxy.poll() is None:
            self.proxy.kill()
            self.proxy.wait(10)
        pid = self.mariadbd_pid()
        if pid is not None and self.db.running:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
        self.db.stop()


class Client(threading.Thread):
    """One soak client: a random mix of statements until `end`."""

    def __init__(self, idx: int, user: str, rig: Rig, end: float, pace_s: float, seed: int) -> None:
        super().__init__(name=f"soak-{idx}", daemon=True)
        self.idx, self.user, self.rig, self.end, self.pace_s = idx, user, rig, end, pace_s
        self.rand = random.Random(seed * 1000 + idx)
        self.n = 0
        self.txn_n = 0
        self.conn: Any = None
        self.kill_handle: socket.socket | None = None
        self.lock = threading.Lock()
        self.busy = False
        self.killed = False
        self.sent: dict[str, Sent] = {}
        self.txns: list[Txn] = []
        self.connects = 0
        self.reconnects = 0
        self.connect_failures = 0
        self.conn_errors = 0
        self.killed_errors = 0
        self.read_timeouts = 0
        self.next_long = time.time() + self.rand.uniform(10, 40)
        self.crash: str | None = None

    # connection handling
    def connect(self) -> bool:
        import pymysql

        backoff = 0.2
        while time.time() < self.end:
            try:
                conn = pymysql.connect(host="127.0.0.1", port=self.rig.port, user=self.user,
                                       password=self.rig.token(self.user), database=DATABASE,
                                       ssl=self.rig.ssl_context(), autocommit=True, connect_timeout=5,
                                       read_timeout=20, write_timeout=20, program_name="soak")
            except Exception:  # noqa: BLE001 - counted; the run goes on
                self.connect_failures += 1
                time.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            with self.lock:
                self.conn = conn
                self.kill_handle = socket.socket(fileno=os.dup(conn._sock.fileno()))  # noqa: SLF001
                self.killed = False
            self.connects += 1
            if self.connects > 1:
                self.reconnects += 1
            return True
        return False

    def drop(self) -> None:
        with self.lock:
            conn, handle, self.conn, self.kill_handle = self.conn, self.kill_handle, None, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()
        if handle is not None:
            with contextlib.suppress(OSError):
                handle.close()

    def kill_socket(self) -> bool:
        """Chaos: shut the connection's socket down while a statement is running."""
        with self.lock:
            if not self.busy or self.kill_handle is None:
                return False
            self.killed = True
            with contextlib.suppress(OSError):
                self.kill_handle.shutdown(socket.SHUT_RDWR)
            return True

    # statements
    def execute(self, kind: str, body: str | None = None, build: Any = None) -> tuple[str, Any]:
        """Run one marked statement: ("ok", rows), ("error", code) or ("conn", code)."""
        import pymysql

        self.n += 1
        marker = f"soak:{self.idx}:{self.n}"
        sql = f"/* {marker} */ " + (build(marker) if build else body)
        t0 = time.time()
        with self.lock:
            self.busy = True
        try:
            with self.conn.cursor() as cur:
                cur.execute(sql)
                rows = cur.fetchall()
            seen, value = "ok", rows
        except pymysql.MySQLError as e:
            code = e.args[0] if e.args and isinstance(e.args[0], int) else 0
            seen, value = ("conn" if code in CONN_ERRORS or isinstance(e, pymysql.err.InterfaceError) else "error"), code
            if seen == "conn" and "timed out" in str(e):
                self.read_timeouts += 1
        except Exception:  # noqa: BLE001 - an SSL or socket error PyMySQL did not wrap
            seen, value = "conn", 0
        finally:
            with self.lock:
                self.busy = False
        self.sent[marker] = Sent(kind, self.user, seen, value if seen != "ok" else None, t0, time.time(),
                                 killed=self.killed)
        if seen == "conn":
            self.conn_errors += 1
            if self.killed:
                self.killed_errors += 1
            self.drop()
        return seen, value

    def transaction(self) -> None:
        self.txn_n += 1
        txn = Txn(f"{self.idx}:t{self.txn_n}")
        self.txns.append(txn)
        seen, _ = self.execute("begin", self.rand.choice(["BEGIN", "START TRANSACTION"]))
        if seen == "conn":
            return
        failed = seen != "ok"
        for _ in range(self.rand.randint(1, 3)):
            if failed:
                break
            if self.rand.random() < 0.3:
                time.sleep(self.rand.uniform(0, 0.05))  # a gap where chaos can cut in
            seen, _ = self.execute("insert", build=lambda m: (
                f"INSERT INTO soak (marker, txn, client) VALUES ('{m}', '{txn.id}', {self.idx})"))
            txn.markers.append(f"soak:{self.idx}:{self.n}")
            if seen == "conn":
                return  # abandoned: the server rolls it back when the connection ends
            failed = seen != "ok"
        if not failed and self.rand.random() < 0.7:
            seen, _ = self.execute("commit", "COMMIT")
            txn.outcome = "committed" if seen == "ok" else "commit_unknown"
            if seen == "error":
                self.drop()  # a COMMIT without OK: this connection is not trusted any more
        else:
            seen, _ = self.execute("rollback", "ROLLBACK")
            txn.outcome = "rolled_back" if seen == "ok" else "abandoned"
            if seen == "error":
                self.drop()

    def step(self) -> None:
        r = self.rand.random()
        if time.time() >= self.next_long:
            self.next_long = time.time() + self.rand.uniform(20, 40)
            self.execute("long", f"SELECT SLEEP({LONG_SLEEP_S:g})")
        elif r < 0.35:
            if self.rand.random() < 0.5:
                self.execute("select", f"SELECT COUNT(*), MAX(id) FROM employee WHERE id > {self.rand.randint(0, 50)}")
            else:
                self.execute("select", "SELECT id, marker FROM soak ORDER BY id DESC LIMIT 5")
        elif r < 0.72:
            self.transaction()
        elif r < 0.80:
            self.execute("denied_read", self.rand.choice(
                ["SELECT * FROM hr_prod.salary LIMIT 1", "SELECT v FROM soak_secret WHERE id = 1"]))
        elif r < 0.84:
            self.execute("denied_write", "DELETE FROM soak WHERE id = 1")
        elif r < 0.89:
            self.execute("syntax", "SELEC id FRM employee")
        elif r < 0.95:
            self.execute("dup_key", "INSERT INTO soak (marker) VALUES ('dup-seed')")
        else:
            self.execute("bad_column", "SELECT no_such_column FROM employee")

    def run(self) -> None:
        try:
            while time.time() < self.end:
                if self.conn is None and not self.connect():
                    break
                self.step()
                time.sleep(self.rand.uniform(0, 2 * self.pace_s))
        except Exception as e:  # noqa: BLE001 - reported at the end
            self.crash = f"{type(e).__name__}: {e}"
        finally:
            self.drop()


class Probe(threading.Thread):
    """Logs in from 127.0.0.3 and runs one SELECT every second; samples the proxy's RSS."""

    def __init__(self, rig: Rig, stop: threading.Event) -> None:
        super().__init__(name="probe", daemon=True)
        self.rig, self.stop = rig, stop
        self.results: list[tuple[float, float, str, str]] = []  # (t0, t1, ok/answered/no_answer, detail)
        self.rss: list[tuple[float, float]] = []

    def run(self) -> None:
        import pymysql

        assert self.rig.proxy is not None
        while not self.stop.is_set():
            t0 = time.time()
            mb = rss_mb(self.rig.proxy.pid)
            if mb is not None:
                self.rss.append((t0, mb))
            try:
                conn = pymysql.connect(host="127.0.0.1", port=self.rig.port, user="probe",
                                       password=self.rig.token("probe"), database=DATABASE,
                                       ssl=self.rig.ssl_context(), bind_address="127.0.0.3",
                                       connect_timeout=5, read_timeout=10, write_timeout=10)
                try:
                    with conn.cursor() as cur:
                        cur.execute("SELECT COUNT(*) FROM employee")
                        cur.fetchall()
                finally:
                    conn.close()
                status, detail = "ok", ""
            except pymysql.MySQLError as e:
                code = e.args[0] if e.args and isinstance(e.args[0], int) else 0
                msg = str(e.args[-1]) if e.args else ""
                answered = 0 < code < 2000 or "jitproxy" in msg
                status, detail = ("answered" if answered else "no_answer"), f"{code}: {msg[:120]}"
            except Exception as e:  # noqa: BLE001
                status, detail = "no_answer", f"{type(e).__name__}: {str(e)[:120]}"
            self.results.append((t0, time.time(), status, detail))
            self.stop.wait(max(0.0, t0 + 1 - time.time()))


class Garbage(threading.Thread):
    """Hostile or broken clients from 127.0.0.2, one every 3-6 s, and one batch of silent sockets."""

    def __init__(self, rig: Rig, end: float, rand: random.Random) -> None:
        super().__init__(name="garbage", daemon=True)
        self.rig, self.end, self.rand = rig, end, rand
        self.done: Counter[str] = Counter()
        self.silent_closed_by_proxy = 0
        self.silent_total = 0

    def sock(self) -> socket.socket:
        s = socket.socket()
        s.settimeout(3)
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", self.rig.port))
        return s

    def one(self, kind: str) -> None:
        with contextlib.closing(self.sock()) as s:
            if kind == "bytes_before_greeting":
                s.sendall(os.urandom(self.rand.randint(1, 600)))
            else:
                s.recv(4096)  # the greeting
                if kind == "random_packet":
                    body = os.urandom(self.rand.randint(1, 300))
                    s.sendall(len(body).to_bytes(3, "little") + b"\x01" + body)
                elif kind == "huge_length":
                    s.sendall(b"\xff\xff\xff\x01" + os.urandom(200))
                elif kind == "tls_then_junk":  # an SSLRequest (CLIENT_SSL | PROTOCOL_41), then no TLS
                    payload = (0x00000800 | 0x00000200 | 0x00008000).to_bytes(4, "little") + \
                        (1 << 24).to_bytes(4, "little") + b"\x2d" + b"\x00" * 23
                    s.sendall(len(payload).to_bytes(3, "little") + b"\x01" + payload + os.urandom(300))
            with contextlib.suppress(OSError):
                while s.recv(4096):  # until the proxy closes (or 3 s)
                    pass
        self.done[kind] += 1

    def silent_batch(self, n: int, hold_s: float) -> None:
        socks = []
        for _ in range(n):
            with contextlib.suppress(OSError):
                socks.append(self.sock())
        self.silent_total += len(socks)
        deadline = time.time() + hold_s
        for s in socks:
            closed = False
            with contextlib.suppress(OSError):
                s.settimeout(0.2)
                while time.time() < deadline:
                    try:
                        if not s.recv(4096):
                            closed = True
                            break
                    except socket.timeout:
                        continue
            self.silent_closed_by_proxy += closed
            s.close()
        self.done["silent_socket"] += len(socks)

    def run(self) -> None:
        kinds = ["bytes_before_greeting", "random_packet", "huge_length", "tls_then_junk"]
        silent_at = time.time() + (self.end - time.time()) * 0.3
        count = 0
        while time.time() < self.end and count < 400:
            count += 1
            if silent_at and time.time() >= silent_at:
                silent_at = 0
                self.silent_batch(5, hold_s=min(10.0, max(1.0, self.end - time.time())))
                continue
            try:
                self.one(self.rand.choice(kinds))
            except OSError:
                self.done["refused_or_reset"] += 1
            time.sleep(self.rand.uniform(3, 6))


class Chaos(threading.Thread):
    def __init__(self, rig: Rig, start: float, end: float, clients: list[Client], rand: random.Random,
                 chaos: ChaosLog) -> None:
        super().__init__(name="chaos", daemon=True)
        self.rig, self.start_t, self.end, self.clients, self.rand, self.log = rig, start, end, clients, rand, chaos

    def at(self, fraction: float) -> float:
        return self.start_t + (self.end - self.start_t) * fraction

    def reload(self, what: str, write: Any, expect: str) -> float | None:
        before = self.rig.log_count(expect)
        write()
        self.rig.sighup()
        seen = self.rig.wait_log(expect, before)
        self.log.add(what, f"'{expect}' logged" if seen else f"'{expect}' NOT logged within 10 s")
        return seen

    def invalid_config(self) -> None:
        self.reload("SIGHUP with an invalid config", lambda: write_atomic(self.rig.config_file,
                    "listen: [this is not a mapping\n"), "config reload failed")
        alive = self.rig.proxy is not None and self.rig.proxy.poll() is None
        self.log.add("  proxy after the invalid config", "alive" if alive else "EXITED")
        self.reload("SIGHUP with the good config again", lambda: write_atomic(self.rig.config_file,
                    self.rig.config_text), "config reloaded")

    def revoke(self) -> None:
        applied = self.reload("revoke soak_rev (policy file + SIGHUP)", lambda: write_atomic(self.rig.revocable, REVOKED),
                              "config reloaded")
        self.sleep_until(time.time() + max(2.0, (self.end - self.start_t) * 0.06))
        sent = time.time()
        granted = self.reload("re-grant soak_rev (policy file + SIGHUP)",
                              lambda: write_atomic(self.rig.revocable, REVOCABLE), "config reloaded")
        if applied:
            self.log.revoked.append((applied, sent))
        if granted:
            self.log.regranted.append(granted)

    def pause_db(self) -> None:
        pid = self.rig.mariadbd_pid()
        if pid is None:
            self.log.add("pause MariaDB", "no pid")
            return
        t0 = time.time()
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(4)
        finally:
            os.kill(pid, signal.SIGCONT)
        t1 = time.time()
        self.log.windows.append((t0, t1 + WINDOW_GRACE_S, "MariaDB paused"))
        self.log.add("pause MariaDB", f"SIGSTOP for {t1 - t0:.1f} s, then SIGCONT")

    def restart_db(self) -> None:
        t0 = time.time()
        self.rig.db.stop()
        stopped = time.time()
        time.sleep(1)
        self.rig.db.start()
        t1 = time.time()
        self.log.windows.append((t0, t1 + WINDOW_GRACE_S, "MariaDB restarted"))
        self.log.add("restart MariaDB", f"stopped in {stopped - t0:.1f} s, up again after {t1 - t0:.1f} s")

    def sleep_until(self, t: float) -> None:
        """Sleep until `t`, killing a busy client's socket every 2-4 s meanwhile."""
        while time.time() < min(t, self.end):
            if time.time() >= self.next_kill:
                self.next_kill = time.time() + self.rand.uniform(2, 4)
                busy = [c for c in self.clients if c.busy]
                if busy and self.log.kills < 1000 and self.rand.choice(busy).kill_socket():
                    self.log.kills += 1
            time.sleep(min(0.05, max(0.0, t - time.time())))

    def run(self) -> None:
        self.next_kill = time.time() + 2
        plan = [(0.10, self.invalid_config), (0.18, self.revoke), (0.45, self.pause_db), (0.65, self.restart_db),
                (0.80, self.revoke)]
        try:
            for fraction, action in plan:
                self.sleep_until(self.at(fraction))
                if time.time() >= self.end:
                    break
                try:
                    action()
                except Exception as e:  # noqa: BLE001 - reported; the run goes on
                    self.log.add(action.__name__, f"FAILED: {type(e).__name__}: {e}")
            self.sleep_until(self.end)
        finally:
            with contextlib.suppress(Exception):  # never leave the database paused or the config broken
                pid = self.rig.mariadbd_pid()
                if pid is not None:
                    os.kill(pid, signal.SIGCONT)
            if self.rig.config_file.read_text() != self.rig.config_text:
                write_atomic(self.rig.config_file, self.rig.config_text)
            if self.rig.revocable.read_text() != REVOCABLE:
                write_atomic(self.rig.revocable, REVOCABLE)
                self.rig.sighup()


# -- reading the results --------------------------------------------------------------------------


def read_events(path: Path) -> list[dict[str, Any]]:
    events = []
    if not path.exists():
        return events
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
    return events


def processlist_markers(rig: Rig) -> list[str]:
    # The pattern is built in SQL, so this query's own text carries no marker.
    rows = rig.db.execute_root("SELECT INFO FROM information_schema.PROCESSLIST "
                               "WHERE INFO LIKE CONCAT('%/* so', 'ak:%')")
    return [m for (info,) in rows if (m := marker_of(info))]


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """Numbers (and the headers of number columns) to the right, text to the left."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def numeric(v: Any) -> bool:
        return isinstance(v, (int, float)) or str(v).replace(".", "", 1).isdigit()

    right = [i > 0 and bool(rows) and all(numeric(r[i]) for r in rows) for i in range(len(header))]
    print(f"\n{title}")
    for row in [header, *rows]:
        print("  " + "  ".join(str(v).rjust(w) if right[i] or (row is not header and numeric(v) and i)
                               else str(v).ljust(w) for i, (v, w) in enumerate(zip(row, widths))).rstrip())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="how long the clients run (default 5; 0.5: quick)")
    ap.add_argument("--clients", type=int, default=16, help="client threads (default 16)")
    ap.add_argument("--pace-ms", type=float, default=100.0,
                    help="mean pause between a client's actions, ms (default 100)")
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (logs, audit file)")
    opts = ap.parse_args()
    if not 0 < opts.minutes <= 120 or not 1 <= opts.clients <= 64:
        raise SystemExit("--minutes must be in (0, 120] and --clients in [1, 64]")
    seed = opts.seed if opts.seed is not None else random.randrange(1 << 30)
    rand = random.Random(seed)
    base = Path(tempfile.mkdtemp(prefix="jp-soak-"))
    log(f"soak: {opts.minutes:g} min, {opts.clients} clients, pace {opts.pace_ms:g} ms, seed {seed}, dir {base}")
    rig: Rig | None = None
    try:
        rig = Rig(base, seed)
        rig.start_proxy()
        assert rig.proxy is not None
        return run(rig, opts, rand, seed)
    finally:
        if rig is not None:
            rig.close()
        if opts.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def run(rig: Rig, opts: argparse.Namespace, rand: random.Random, seed: int) -> int:
    assert rig.proxy is not None
    stop_probe = threading.Event()
    probe = Probe(rig, stop_probe)
    probe.start()
    time.sleep(1.5)
    rss_start = probe.rss[0][1] if probe.rss else rss_mb(rig.proxy.pid) or 0.0
    start = time.time()
    end = start + opts.minutes * 60
    log(f"jitproxy serve pid {rig.proxy.pid} on 127.0.0.1:{rig.port}, RSS {rss_start:.1f} MB; load until "
        f"{time.strftime('%H:%M:%S', time.localtime(end))}")
    clients = [Client(i, "soak_rev" if i % 4 == 3 else "soak", rig, end, opts.pace_ms / 1000, seed)
               for i in range(opts.clients)]
    chaos_log = ChaosLog()
    chaos = Chaos(rig, start, end, clients, random.Random(rand.random()), chaos_log)
    garbage = Garbage(rig, end, random.Random(rand.random()))
    for t in (*clients, chaos, garbage):
        t.start()
    died_at = None
    last_report = time.time()
    while any(c.is_alive() for c in clients) and time.time() < end + 60:
        time.sleep(1)
        if died_at is None and rig.proxy.poll() is not None:
            died_at = time.time()
            log(f"jitproxy serve EXITED during the run with {rig.proxy.returncode}")
        if time.time() - last_report >= 30:
            last_report = time.time()
            sent = sum(len(c.sent) for c in clients)
            rss = probe.rss[-1][1] if probe.rss else 0
            log(f"progress: {sent} statements sent, {sum(c.reconnects for c in clients)} reconnects, "
                f"{chaos_log.kills} sockets killed, RSS {rss:.1f} MB")
    deadline = time.time() + 30
    for t in (*clients, chaos, garbage):
        t.join(timeout=max(0.1, deadline - time.time()))
    log("clients stopped")
    stop_probe.set()
    probe.join(timeout=20)

    # statements still running upstream: anything past the limit (+ slack) is a leak
    lingering_before: list[str] = []
    deadline = time.time() + STATEMENT_TIMEOUT_S + 5
    while True:
        with contextlib.suppress(Exception):
            lingering_before = processlist_markers(rig)
        if not lingering_before or time.time() > deadline:
            break
        time.sleep(0.5)
    rss_end = rss_mb(rig.proxy.pid) or 0.0

    # SIGTERM, then everything is read
    t_term = time.time()
    exit_code: int | None
    if rig.proxy.poll() is None:
        rig.proxy.send_signal(signal.SIGTERM)
        try:
            exit_code = rig.proxy.wait(60)
        except subprocess.TimeoutExpired:
            exit_code = None
            rig.proxy.kill()
            rig.proxy.wait(10)
    else:
        exit_code = rig.proxy.returncode
    stop_s = time.time() - t_term
    lingering_after = processlist_markers(rig)
    general_log = rig.db.general_log_text()
    events = read_events(rig.audit_file)
    verify = subprocess.run([sys.executable, "-m", "proxy.cli", "audit", "verify", str(rig.audit_file)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    rows = [(str(m), str(t)) for m, t in rig.db.execute_root("SELECT marker, txn FROM hr_test.soak WHERE txn IS NOT NULL")]

    sent: dict[str, Sent] = {}
    txns: list[Txn] = []
    for c in clients:
        sent.update(c.sent)
        txns.extend(c.txns)
    client_view = {m: s.seen for m, s in sent.items()}
    match = match_markers(general_log, events, client_view)
    atom = check_atomicity(txns, rows)
    audit = audit_outcomes(events)
    windows = [(a, b) for a, b, _ in chaos_log.windows]
    checks: list[Check] = []

    # 1. alive throughout
    outside = [r for r in probe.results if r[2] != "ok" and not windows_hit(r[0], r[1], windows)]
    inside = [r for r in probe.results if r[2] != "ok" and windows_hit(r[0], r[1], windows)]
    no_answer = [r for r in probe.results if r[2] == "no_answer"]
    checks.append(Check("proxy alive and answering (probe every 1 s)", died_at is None and not outside,
                        f"{len(probe.results)} probes, {sum(r[2] == 'ok' for r in probe.results)} ok; failed outside "
                        f"chaos windows {len(outside)}, inside {len(inside)} (of which no answer at all: "
                        f"{sum(r in no_answer for r in inside)}); process exited during the run: "
                        f"{'no' if died_at is None else 'YES'}"
                        + "".join(f"\n      outside: {time.strftime('%H:%M:%S', time.localtime(r[0]))} {r[2]} {r[3]}"
                                  for r in outside[:10])))
    checks.append(Check("exit code 0 after SIGTERM", exit_code == 0, f"exit code {exit_code}, stopped in {stop_s:.1f} s"))

    # 2. markers: general log ↔ audit trail
    fails = match.failures()
    checks.append(Check("every marker in the general log has exactly one closing audit event, and vice versa",
                        not {k: v for k, v in fails.items() if k != "denied_in_log"},
                        f"{match.in_log} markers in the general log, {match.audited} with an audit event; "
                        + ", ".join(f"{k}: {v}" for k, v in sorted(match.ok.items()))
                        + "".join(f"\n      FAIL {k}: {len(v)} e.g. {v[:5]}" for k, v in fails.items()
                                  if k != "denied_in_log")))
    denied_markers = [m for m, kinds in audit.items() if DENIED in kinds]
    checks.append(Check("no denied statement reached MariaDB", not match.denied_in_log,
                        f"{len(denied_markers)} denied markers, {len(match.denied_in_log)} of them in the general log"
                        + (f": {match.denied_in_log[:5]}" if match.denied_in_log else "")))
    leaked = [m for m, s in sent.items() if s.kind in ("denied_read", "denied_write", "syntax")
              and any(k in CLOSING for k in audit.get(m, []))]
    checks.append(Check("statements outside the grants were never allowed", not leaked,
                        f"{sum(s.kind in ('denied_read', 'denied_write', 'syntax') for s in sent.values())} sent, "
                        f"{len(leaked)} allowed" + (f": {leaked[:5]}" if leaked else "")))

    # 3. transactions
    checks.append(Check("no half-applied transaction", atom.passed,
                        f"{len(txns)} transactions, {len(rows)} rows; " + ", ".join(
                            f"{k}: {v}" for k, v in sorted(atom.ok.items()))
                        + "".join(f"\n      FAIL {k}: {len(v)} e.g. {v[:5]}" for k, v in atom.failures().items())))

    # 4. nothing left running upstream
    checks.append(Check("no soak statement left running upstream (PROCESSLIST)", not lingering_after and
                        not lingering_before, f"{len(lingering_before)} still running {STATEMENT_TIMEOUT_S + 5:g} s "
                        f"after the clients stopped, {len(lingering_after)} after the proxy exited"
                        + (f": {(lingering_before + lingering_after)[:5]}" if lingering_before + lingering_after else "")))

    # 5. the statement time limit
    longs = [s for s in sent.values() if s.kind == "long"]
    ran_out = [s for s in longs if s.seen == "ok" and not windows_hit(s.t0, s.t1, windows)]
    timed_out = [s for s in longs if s.seen == "error" and s.code in (1969, 3024)]
    other = Counter(f"{s.seen} {s.code}" + (" killed" if s.killed else " in a window" if windows_hit(s.t0, s.t1, windows)
                                             else " NO CAUSE") for s in longs if s not in timed_out and s not in ran_out)
    checks.append(Check(f"statement timeout enforced (SELECT SLEEP({LONG_SLEEP_S:g}), limit {STATEMENT_TIMEOUT_S:g} s)",
                        not ran_out, f"{len(longs)} long statements: {len(timed_out)} cancelled by the limit "
                        f"(durations {min((s.t1 - s.t0 for s in timed_out), default=0):.1f}-"
                        f"{max((s.t1 - s.t0 for s in timed_out), default=0):.1f} s), {len(ran_out)} ran to the end "
                        f"outside chaos windows, {sum(other.values())} other (cut by chaos: "
                        f"{', '.join(f'{k} x{v}' for k, v in sorted(other.items())) or '-'})"))

    # 5b. connections lost without a cause (no killed socket, no database pause or restart)
    uncaused = [(m, s) for m, s in sent.items() if s.seen == "conn" and not s.killed
                and not windows_hit(s.t0, s.t1, windows)]
    checks.append(Check("no client connection lost without a cause (killed socket, database pause/restart)",
                        not uncaused, f"{sum(s.seen == 'conn' for s in sent.values())} statements cut by a lost "
                        f"connection: {sum(s.seen == 'conn' and s.killed for s in sent.values())} killed by chaos, "
                        f"{sum(s.seen == 'conn' and not s.killed and windows_hit(s.t0, s.t1, windows) for s in sent.values())}"
                        f" in a database pause/restart window, {len(uncaused)} without a cause"
                        + "".join(f"\n      {m} {s.kind} code {s.code} at {time.strftime('%H:%M:%S', time.localtime(s.t0))}"
                                  f" ({s.t1 - s.t0:.1f} s)" for m, s in uncaused[:10])))

    # 6. revocation bites and is lifted
    rev_allowed = rev_denied = after = 0
    regrants = sorted(chaos_log.regranted)
    for m, kinds in audit.items():
        s = sent.get(m)
        if s is None or s.user != "soak_rev" or s.kind not in KINDS_NEEDING_GRANT:
            continue
        for r0, r1 in chaos_log.revoked:
            if r0 + 0.5 <= s.t0 and s.t1 <= r1:
                rev_denied += DENIED in kinds
                rev_allowed += any(k in CLOSING for k in kinds)
        if any(g + 1 <= s.t0 for g in regrants) and "statement.completed" in kinds:
            after += 1
    checks.append(Check("revocation (policy file + SIGHUP) bites at once and re-granting restores access",
                        rev_allowed == 0 and rev_denied > 0 and after > 0 and len(chaos_log.revoked) >= 1,
                        f"{len(chaos_log.revoked)} revocations; soak_rev statements needing the grant while revoked: "
                        f"{rev_denied} denied, {rev_allowed} allowed; completed after a re-grant: {after}"))

    # 7. the audit chain
    checks.append(Check("jitproxy audit verify", verify.returncode == 0 and "all sealed" in verify.stdout,
                        f"exit {verify.returncode}: {verify.stdout.strip().splitlines()[-1] if verify.stdout.strip() else verify.stderr[-300:]}"))

    # 8. memory
    rss_values = [mb for _, mb in probe.rss] or [rss_start]
    peak = max(rss_values)
    checks.append(Check("proxy RSS bounded (peak <= 2 x start + 100 MB)", rss_bounded(rss_start, peak),
                        f"start {rss_start:.1f} MB, peak {peak:.1f} MB, end {rss_end:.1f} MB ({len(rss_values)} samples)"))

    # 9. SIGHUP handling (from the chaos log)
    hup = [a for a in chaos_log.actions if "SIGHUP" in a[1]]
    checks.append(Check("SIGHUP reloads logged (invalid config refused, good config and policies applied)",
                        bool(hup) and all("NOT" not in r and "EXITED" not in r for _, a, r in chaos_log.actions
                                          if "SIGHUP" in a or "proxy after" in a),
                        "; ".join(f"{a}: {r}" for _, a, r in chaos_log.actions if "SIGHUP" in a or "proxy after" in a)))
    # 10. sessions: each one that started ended once (none left open at SIGTERM, none ended twice)
    starts = Counter(e.get("session_id") for e in events if e.get("type") == "session.start")
    ends = Counter(e.get("session_id") for e in events if e.get("type") == "session.end")
    unended = [sid for sid in starts if ends[sid] != 1 or starts[sid] != 1]
    orphan_ends = [sid for sid in ends if sid not in starts]
    checks.append(Check("every session.start has exactly one session.end", not unended and not orphan_ends,
                        f"{len(starts)} sessions started, {sum(ends.values())} ended; not ended once: {len(unended)}, "
                        f"ended without a start: {len(orphan_ends)}; rejected logins/handshakes: "
                        + ", ".join(f"{k} {v}" for k, v in Counter(e.get("reason_code") for e in events
                                                                    if e.get("type") == "session.rejected").most_common())))
    crashed = [f"{c.name}: {c.crash}" for c in clients if c.crash]
    if crashed:
        checks.append(Check("soak clients ran to the end", False, "; ".join(crashed[:5])))

    # ---- the report ---------------------------------------------------------------------------
    print("\n" + "=" * 100)
    print(f"SOAK RESULTS  ({opts.minutes:g} min, {opts.clients} clients, seed {seed}; audit mode best_effort, "
          f"statement_timeout_s {STATEMENT_TIMEOUT_S:g})")
    print("=" * 100)
    print("\nHow markers are classified: in the general log + one statement.completed/failed: ok; statement.failed "
          "and not in the log: ok (cut\nbefore the database: it was down or paused, or the client's socket was "
          "killed); statement.denied and not in the log: ok; no event\nand not in the log while the client saw its "
          "connection drop: ok (lost before the proxy decided). FAIL: in the log without a\nclosing event; denied "
          "but in the log; more than one closing/denied event; completed but not in the log; in the log twice;\nthe "
          "client got an answer but there is no event; the client got a result but the event is not completed; "
          "statement.allowed\nwithout a closing event.")

    outcomes = ["statement.completed", "statement.failed", "statement.denied", "(none)"]
    by_kind: dict[str, Counter[str]] = defaultdict(Counter)
    for m, s in sent.items():
        kinds = audit.get(m) or ["(none)"]
        by_kind[s.kind][kinds[-1]] += 1
    order = ["select", "begin", "insert", "commit", "rollback", "denied_read", "denied_write", "syntax", "dup_key",
             "bad_column", "long"]
    table = [[k, sum(by_kind[k].values()), *(by_kind[k][o] for o in outcomes)] for k in order if k in by_kind]
    table.append(["total", len(sent), *(sum(by_kind[k][o] for k in by_kind) for o in outcomes)])
    print_table("Statements by kind and audit outcome", ["kind", "sent", "completed", "failed", "denied", "no event"],
                table)
    seen = Counter(s.seen for s in sent.values())
    print(f"  client view: {seen['ok']} results, {seen['error']} errors, {seen['conn']} connection lost; codes: "
          + ", ".join(f"{k} x{v}" for k, v in Counter(s.code for s in sent.values() if s.seen != "ok").most_common()))
    print_table("Clients", ["", "value"], [
        ["connections opened", sum(c.connects for c in clients)],
        ["reconnects", sum(c.reconnects for c in clients)],
        ["failed connection attempts (retried)", sum(c.connect_failures for c in clients)],
        ["statements cut by a lost connection", sum(c.conn_errors for c in clients)],
        ["  of which by a killed socket", sum(c.killed_errors for c in clients)],
        ["  of which client read timeouts (20 s)", sum(c.read_timeouts for c in clients)],
        ["transactions", len(txns)],
        *[[f"  {k}", v] for k, v in sorted(Counter(t.outcome for t in txns).items())],
    ])
    chaos_rows = [[time.strftime("%H:%M:%S", time.localtime(t)), a, r] for t, a, r in chaos_log.actions]
    chaos_rows.append(["", "client sockets shut down mid-statement", str(chaos_log.kills)])
    chaos_rows.append(["", "garbage clients (127.0.0.2)", ", ".join(f"{k} {v}" for k, v in sorted(garbage.done.items()))])
    chaos_rows.append(["", "silent sockets closed by the proxy (handshake_timeout_s 5)",
                       f"{garbage.silent_closed_by_proxy} of {garbage.silent_total}"])
    print_table("Chaos actions", ["time", "action", "result"], chaos_rows)
    print_table("Proxy RSS (MB)", ["start", "peak", "end"], [[f"{rss_start:.1f}", f"{peak:.1f}", f"{rss_end:.1f}"]])
    text = rig.proxy_log.read_text(errors="replace")
    errs: dict[str, list[str]] = defaultdict(list)  # line (shortened) → its times (UTC)
    for line in text.splitlines():
        if "[error" in line or "Traceback" in line:
            errs[re.sub(r"\s+", " ", line.split("]", 1)[-1].strip())[:90]].append(line[11:19])
    if errs:
        print_table("Proxy log: error lines (informational; times UTC)", ["line", "n", "times"],
                    [[k, len(v), " ".join(v[:6])] for k, v in sorted(errs.items(), key=lambda kv: -len(kv[1]))[:12]])
    print("\nChecks")
    for c in checks:
        print(f"  {'PASS' if c.passed else 'FAIL'}  {c.name}\n        {c.detail}")
    failed = [c for c in checks if not c.passed]
    print(f"\n{'ALL CHECKS PASSED' if not failed else f'{len(failed)} CHECK(S) FAILED'} "
          f"({len(checks)} checks, {len(sent)} statements)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
