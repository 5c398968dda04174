"""Speed, measured side by side with sysbench (issue 7): direct, a raw relay, jitproxy.

Starts its own MariaDB (TLS), loads one sysbench table, and measures in ONE alternating run
(path order rotated every repetition; medians of --reps):

  direct       sysbench → MariaDB
  relay        sysbench → bench/relay.py (raw asyncio byte relay, uvloop; TLS end to end) → MariaDB
  jitproxy     sysbench → `jitproxy serve` (token as password, TLS) → MariaDB; YAML grant on the
               sysbench table; audit on (file sink, mode best_effort)
  jitproxy-w2  the same with `serve --workers 2` (when `serve --help` offers --workers)

Workloads: oltp_point_select at 1, 4 and 16 threads, each with --db-ps-mode=disable (text
protocol) and auto (server-side prepared statements), and oltp_read_only at 4 threads (disable).
Then a 1,000,000-row SELECT * with the mariadb CLI --quick (direct, relay, jitproxy: wall time,
bytes, proxy CPU and peak RSS) and N new authenticated connections with PyMySQL (connect + close:
wall time and proxy CPU per connection). Prints a table of medians and the issue's targets with
PASS/FAIL marks (informational, not asserted).

    .venv/bin/python bench/sysbench.py [--time 10] [--reps 3] [--table-size 10000]
                                       [--rows 1000000] [--connections 1000] [--workers 2]
    .venv/bin/python bench/sysbench.py --quick      # 3 s runs, 1 rep, 100k rows, 100 connections

Needs sysbench 1.0.x and the mariadb client on PATH (scripts/setup.sh installs both).

What had to be solved (checked on this machine: sysbench 1.0.20, Debian build linked to
libmariadb 3.3 / MariaDB 10.11):

* TLS. sysbench 1.0.20 has only `--mysql-ssl=on|off` (the --mysql-ssl-ca/-cert/-key options came
  in 1.1). With `on` it calls mysql_ssl_set() with the RELATIVE names "client-key.pem",
  "client-cert.pem" and "cacert.pem", so they are opened from the current directory (strace:
  openat(AT_FDCWD, "cacert.pem"), then "client-cert.pem"). Missing client certificate/key files
  are NOT tolerated: with only cacert.pem present every connection fails with `error 2026:
  TLS/SSL error: No such file or directory`. So this script writes a directory of its own with
  cacert.pem = the bench CA and a client certificate + key signed by that CA (clientAuth; neither
  MariaDB nor jitproxy asks for a client certificate, libmariadb just insists on loading one),
  and runs every sysbench with that directory as cwd. libmariadb then verifies the server's
  chain against cacert.pem: with another CA there, it fails with "self-signed certificate in
  certificate chain". Through the relay, the certificate checked is MariaDB's (end to end).
* Logging in to jitproxy. jitproxy advertises caching_sha2_password and asks for full
  authentication; libmariadb's caching_sha2_password plugin then sends the token in clear text
  inside TLS. No LIBMYSQL_ENABLE_CLEARTEXT_PLUGIN or other option is needed.
* Prepared statements. With --db-ps-mode=auto sysbench prepares every statement, BEGIN and
  COMMIT included; jitproxy authorizes COM_STMT_PREPARE and audits each COM_STMT_EXECUTE.
* Denials and errors. After each jitproxy run the audit file is scanned for statement.denied,
  statement.failed and session.rejected events; each distinct one is printed with its statement
  and reason, and a failing sysbench run is shown as FAILED (nothing is relaxed to make it pass).
* Measurement. CPU = utime+stime from /proc/<pid>/stat, for --workers summed over the supervisor
  and its children (/proc/<pid>/task/*/children). Peak RSS = VmHWM, reset before every run by
  writing 5 to /proc/<pid>/clear_refs (for workers: the sum over the processes). jitproxy's audit
  writer works behind the statements (best_effort), so after each jitproxy run the script waits
  until the audit file stops growing before it reads the CPU time: the drain is charged to the
  run that caused it, not to the next one. The audit file is then truncated (the sink appends
  with O_APPEND, as under logrotate's copytruncate), so a long run does not fill the disk.
  Each path gets a sysbench warm-up before measuring.
  Ports are fixed (picked free at start), as `--workers` requires.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import pymysql

from harness import (ROOT, LocalMariaDB, TokenIssuer, create_proxy_upstream_user, make_ca_and_server_cert,
                     write_keys)
from large_result import stream

DATABASE = "hr_prod"  # the proxy's upstream account has ALL on it (jitproxy_demo.sample)
GRANTS = (
    "grants:\n"
    f"  - {{subject: user:bench, grant: {DATABASE}.sbtest1, privileges: [SELECT]}}\n"
    f"  - {{subject: user:bench, grant: {DATABASE}.big, privileges: [SELECT]}}\n"
)
WORKLOADS = [  # (sysbench test, threads, --db-ps-mode)
    ("oltp_point_select", 1, "disable"),
    ("oltp_point_select", 1, "auto"),
    ("oltp_point_select", 4, "disable"),
    ("oltp_point_select", 4, "auto"),
    ("oltp_point_select", 16, "disable"),
    ("oltp_point_select", 16, "auto"),
    ("oltp_read_only", 4, "disable"),
]
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- processes and /proc ------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (threads' children included)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for children in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in children.read_text().split()]
    return out


def cpu_s(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def _status_kb(pid: int, key: str) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def peak_mb(pids: list[int]) -> float:
    return sum(_status_kb(p, "VmHWM") for p in pids) / 1024


def rss_mb(pids: list[int]) -> float:
    return sum(_status_kb(p, "VmRSS") for p in pids) / 1024


def reset_peak(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux ≥ 4.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listeners(port: int) -> int:
    """How many sockets listen on 127.0.0.1:`port` (SO_REUSEPORT: one per worker)."""
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        cols = line.split()
        if cols[3] == "0A" and int(cols[1].split(":")[1], 16) == port:
            n += 1
    return n


@dataclass
class Route:
    """One path from the client to MariaDB."""

    name: str
    port: int
    user: str
    password: str
    proc: subprocess.Popen[bytes] | None = None  # the process in between (None: direct)
    audit: Path | None = None  # jitproxy's audit file
    log: Path | None = None
    problems: Counter[tuple[str, str, str]] = field(default_factory=Counter)

    def pids(self) -> list[int]:
        return process_tree(self.proc.pid) if self.proc else []

    def alive(self) -> bool:
        return self.proc is None or self.proc.poll() is None


def start_process(cmd: list[str], port: int, listening: int, log: Path,
                  env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    out = open(log, "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, **env} if env else None)
    out.close()
    deadline = time.monotonic() + 60
    while listeners(port) < listening:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"{' '.join(cmd[:6])} did not start:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return proc


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve_has_workers() -> bool:
    out = subprocess.run([sys.executable, "-m", "proxy.cli", "serve", "--help"], cwd=ROOT, capture_output=True,
                         text=True, check=False)
    return "--workers" in out.stdout


# -- TLS files for sysbench -----------------------------------------------------------------


def sysbench_tls_dir(tls_dir: Path, out: Path) -> Path:
    """cacert.pem (the bench CA), client-cert.pem and client-key.pem (signed by it): sysbench
    1.0.20 opens these three names in its current directory when --mysql-ssl=on."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate((tls_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((tls_dir / "ca-key.pem").read_bytes(), None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sysbench")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tls_dir / "ca.pem", out / "cacert.pem")
    (out / "client-cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / "client-key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    os.chmod(out / "client-key.pem", 0o600)
    return out


# -- the environment --------------------------------------------------------------------------


@dataclass
class Env:
    base: Path
    db: LocalMariaDB
    ca: Path
    sb_dir: Path  # sysbench's cwd (TLS files)
    db_pid: int
    routes: dict[str, Route]


def jitproxy_config(base: Path, name: str, port: int, db: LocalMariaDB, tls, public: Path, user: str,
                    password: str, audit_mode: str = "best_effort") -> Path:
    path = base / f"{name}.yaml"
    path.write_text(f"""
listen: {{host: 127.0.0.1, port: {port}, tls: {{cert_file: {tls.server_cert}, key_file: {tls.server_key}}}}}
identity:
  issuers: [{{issuer: jitproxy, public_key_file: {public}}}]
upstream: {{host: 127.0.0.1, port: {db.port}, user: {user}, password: {password}, tls: {{ca_file: {tls.ca_cert}}}}}
policies: {{dirs: [{base / 'policies'}]}}
store: {{path: {base / name / 'state.db'}}}
api: {{enabled: false}}
audit: {{mode: {audit_mode}, sinks: [{{type: file, path: {base / (name + '.audit.jsonl')}}}]}}
log: {{level: warning}}
""")
    return path


@contextlib.contextmanager
def environment(table_size: int, rows: int, workers: int, asyncio_loop: bool = False,
                audit_off: bool = False) -> Iterator[Env]:
    with tempfile.TemporaryDirectory(prefix="jp-sysbench-") as tmp, contextlib.ExitStack() as stack:
        base = Path(tmp)
        tls = make_ca_and_server_cert(base / "tls")
        sb_dir = sysbench_tls_dir(base / "tls", base / "sysbench")
        db = stack.enter_context(LocalMariaDB(base / "db", tls=tls, extra_args=(
            "--innodb-buffer-pool-size=512M", "--max-connections=500")))
        creds = create_proxy_upstream_user(db, password="bench-password")
        db.execute_root(f"CREATE DATABASE IF NOT EXISTS {DATABASE}")
        direct = Route("direct", db.port, creds.user, creds.password)
        log(f"loading sbtest1 ({table_size:,} rows, sysbench oltp_common prepare) and big ({rows:,} rows)")
        out = subprocess.run(["sysbench", "oltp_common", *sysbench_conn(direct), "--tables=1",
                              f"--table-size={table_size}", "prepare"], cwd=sb_dir, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"sysbench prepare failed:\n{out.stdout}\n{out.stderr}")
        with db.root_connection(DATABASE) as conn, conn.cursor() as cur:
            cur.execute("CREATE TABLE big (id INT PRIMARY KEY, k INT, c CHAR(120), pad CHAR(60)) SELECT seq AS id, "
                        f"seq % 1000 AS k, REPEAT('c', 120) AS c, REPEAT('p', 60) AS pad FROM seq_1_to_{rows}")
        private, public = write_keys(base / "keys")
        (base / "policies").mkdir()
        (base / "policies" / "bench.yaml").write_text(GRANTS)
        token = TokenIssuer(private.read_bytes(), "jitproxy", "jitproxy", timedelta(hours=6)).issue(
            "bench", ttl=timedelta(hours=6))
        routes = {"direct": direct}

        port = free_port()
        proc = start_process([sys.executable, str(ROOT / "bench" / "relay.py"), "--upstream-port", str(db.port),
                              "--listen-port", str(port)], port, 1, base / "relay.log")
        stack.callback(stop_process, proc)
        routes["relay"] = Route("relay", port, creds.user, creds.password, proc, log=base / "relay.log")
        port = free_port()
        proc = start_process([sys.executable, str(ROOT / "bench" / "relay.py"), "--upstream-port", str(db.port),
                              "--listen-port", str(port), "--tls-cert", str(tls.server_cert),
                              "--tls-key", str(tls.server_key), "--upstream-ca", str(tls.ca_cert)],
                             port, 1, base / "relay-tls.log")
        stack.callback(stop_process, proc)
        routes["relay-tls"] = Route("relay-tls", port, creds.user, creds.password, proc, log=base / "relay-tls.log")

        variants = [("jitproxy", 1, None, "best_effort")]
        if workers > 1:
            variants.append((f"jitproxy-w{workers}", workers, None, "best_effort"))
        if asyncio_loop:  # the same on the standard library's event loop instead of uvloop
            variants.append(("jitproxy-aio", 1, {"JITPROXY_EVENT_LOOP": "asyncio"}, "best_effort"))
        if audit_off:  # what auditing costs: the same with audit mode off
            variants.append(("jitproxy-noaudit", 1, None, "off"))
        for name, n, extra_env, audit_mode in variants:
            port = free_port()
            config = jitproxy_config(base, name, port, db, tls, public, creds.user, creds.password, audit_mode)
            cmd = [sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)]
            if n > 1:
                cmd += ["--workers", str(n)]
            proc = start_process(cmd, port, n, base / f"{name}.log", extra_env)
            stack.callback(stop_process, proc)
            routes[name] = Route(name, port, "bench", token, proc, audit=base / f"{name}.audit.jsonl",
                                 log=base / f"{name}.log")
        yield Env(base, db, tls.ca_cert, sb_dir, int(db.pid_file.read_text().strip()), routes)


# -- sysbench ---------------------------------------------------------------------------------


def sysbench_conn(r: Route) -> list[str]:
    return ["--db-driver=mysql", "--mysql-host=127.0.0.1", f"--mysql-port={r.port}", f"--mysql-user={r.user}",
            f"--mysql-password={r.password}", f"--mysql-db={DATABASE}", "--mysql-ssl=on"]


_NUM = {
    "queries": re.compile(r"^\s*queries:\s+(\d+)\s+\(([\d.]+) per sec", re.M),
    "avg_ms": re.compile(r"^\s*avg:\s+([\d.]+)", re.M),
    "p95_ms": re.compile(r"^\s*95th percentile:\s+([\d.]+)", re.M),
    "ignored": re.compile(r"^\s*ignored errors:\s+(\d+)", re.M),
    "reconnects": re.compile(r"^\s*reconnects:\s+(\d+)", re.M),
}


def run_sysbench(env: Env, r: Route, test: str, threads: int, ps: str, secs: int, table_size: int) -> dict:
    cmd = ["sysbench", test, *sysbench_conn(r), f"--db-ps-mode={ps}", "--tables=1", f"--table-size={table_size}",
           "--report-interval=0", "--histogram=off", f"--threads={threads}", f"--time={secs}", "run"]
    try:
        out = subprocess.run(cmd, cwd=env.sb_dir, capture_output=True, text=True, timeout=secs + 120)
        text, rc = out.stdout + out.stderr, out.returncode
    except subprocess.TimeoutExpired as e:
        text, rc = f"timed out: {e}", -1
    m = _NUM["queries"].search(text)
    if rc != 0 or m is None:
        return {"error": f"rc={rc}: " + " | ".join(l for l in text.splitlines() if "FATAL" in l or "rror" in l)[:1500]
                or text[-1500:]}
    res = {"queries": int(m.group(1)), "qps": float(m.group(2))}
    for key in ("avg_ms", "p95_ms", "ignored", "reconnects"):
        mm = _NUM[key].search(text)
        res[key] = float(mm.group(1)) if mm else float("nan")
    return res


# -- jitproxy's audit file --------------------------------------------------------------------


def settle_audit(r: Route, quiet_s: float = 1.2, limit_s: float = 60.0) -> None:
    """Wait until the audit file has stopped growing (the best_effort writer has drained)."""
    if r.audit is None:
        return
    start = last_change = time.monotonic()
    size = r.audit.stat().st_size if r.audit.exists() else 0
    while time.monotonic() - last_change < quiet_s and time.monotonic() - start < limit_s:
        time.sleep(0.2)
        now = r.audit.stat().st_size if r.audit.exists() else 0
        if now != size:
            size, last_change = now, time.monotonic()


_PROBLEM_TYPES = (b'"statement.denied"', b'"statement.failed"', b'"session.rejected"')


def scan_audit(r: Route, what: str) -> Counter[str]:
    """Event counts of the audit file since the last scan; denials, failures and rejected sessions
    are printed (first time each) and kept in `r.problems`. Then the file is truncated."""
    counts: Counter[str] = Counter()
    if r.audit is None or not r.audit.exists():
        return counts
    data = r.audit.read_bytes()
    with contextlib.suppress(OSError):
        os.truncate(r.audit, 0)
    for kind in (b"session.start", b"statement.allowed", b"statement.completed", b"session.end"):
        counts[kind.decode()] = data.count(b'"type":"' + kind + b'"')
    for line in data.splitlines():
        if not any(t in line for t in _PROBLEM_TYPES):
            continue
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if e.get("type") not in ("statement.denied", "statement.failed", "session.rejected"):
            continue
        counts[e["type"]] += 1
        reason = e.get("reason") or e.get("error") or ""
        code = e.get("reason_code") or e.get("error_code") or ""
        key = (e["type"], f"{code}: {reason}", f"{e.get('command', '')} {e.get('statement', '')}".strip())
        if key not in r.problems:
            log(f"  !! {r.name} during {what}: {key[0]} [{key[1]}] {key[2]!r}")
        r.problems[key] += 1
    return counts


# -- the measurements -------------------------------------------------------------------------


def rotated(names: list[str], rep: int) -> list[str]:
    k = rep % len(names)
    return names[k:] + names[:k]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def measure(env: Env, r: Route, fn) -> tuple[object, dict]:
    """Runs fn() with the proxy's CPU / peak RSS and MariaDB's CPU around it."""
    pids = r.pids()
    reset_peak(pids)
    c0, d0 = cpu_s(pids), cpu_s([env.db_pid])
    result = fn()
    settle_audit(r)
    pids = r.pids()
    return result, {"cpu_s": cpu_s(pids) - c0, "db_cpu_s": cpu_s([env.db_pid]) - d0,
                    "peak_mb": peak_mb(pids) if pids else float("nan"),
                    "peak_parts_mb": [round(peak_mb([p])) for p in pids]}


def sysbench_matrix(env: Env, opts: argparse.Namespace) -> dict:
    names = list(env.routes)
    results: dict = {}
    workloads = selected_workloads(opts)
    total, n = len(workloads) * opts.reps * len(names), 0
    for test, threads, ps in workloads:
        for rep in range(opts.reps):
            for name in rotated(names, rep):
                r = env.routes[name]
                n += 1
                if not r.alive():
                    res = {"error": f"{name} process exited (rc={r.proc.returncode if r.proc else None})"}
                    stats: dict = {}
                else:
                    res, stats = measure(env, r, lambda: run_sysbench(env, r, test, threads, ps, opts.time,
                                                                      opts.table_size))
                    events = scan_audit(r, f"{test} {threads} thr ps={ps}")
                    if r.audit is not None and "error" not in res:
                        res["events"] = sum(events.values())
                assert isinstance(res, dict)
                res.update(stats)
                res["rep"] = rep
                results.setdefault((test, threads, ps, name), []).append(res)
                if "error" in res:
                    log(f"[{n}/{total}] {test} {threads} thr ps={ps} {name}: FAILED {res['error']}")
                else:
                    per_q = f", proxy {res['cpu_s'] / res['queries'] * 1e6:.0f} µs/q" if r.proc else ""
                    log(f"[{n}/{total}] {test} {threads} thr ps={ps} {name}: {res['qps']:,.0f} QPS{per_q}")
    return results


def selected_workloads(opts: argparse.Namespace) -> list[tuple[str, int, str]]:
    if not opts.only:
        return WORKLOADS
    wanted = [w.split(":") for w in opts.only.split(",")]
    return [(t, n, ps) for t, n, ps in WORKLOADS
            if any(t.endswith(w[0]) and (len(w) < 2 or str(n) == w[1]) and (len(w) < 3 or ps == w[2]) for w in wanted)]


def _med(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return statistics.median(xs) if xs else float("nan")


def _ratio(runs: list[dict], base: list[dict], key: str = "qps") -> float:
    """Median over reps of runs[rep][key] / base[rep][key] (same rep: same machine weather)."""
    by_rep = {b["rep"]: b for b in base if "error" not in b}
    return _med([x[key] / by_rep[x["rep"]][key] for x in runs if "error" not in x and x["rep"] in by_rep])


def summarize_sysbench(results: dict, names: list[str]) -> dict:
    rows = {}
    for (test, threads, ps, name), runs in results.items():
        ok = [x for x in runs if "error" not in x]
        row = {"failed": len(runs) - len(ok), "runs": len(runs)}
        if ok:
            row.update(
                qps=_med([x["qps"] for x in ok]),
                vs_direct=_ratio(runs, results.get((test, threads, ps, "direct"), [])),
                vs_relay=_ratio(runs, results.get((test, threads, ps, "relay"), [])),
                vs_tls=_ratio(runs, results.get((test, threads, ps, "relay-tls"), [])),
                cpu_us=_med([x["cpu_s"] / x["queries"] * 1e6 for x in ok]) if name != "direct" else float("nan"),
                db_us=_med([x["db_cpu_s"] / x["queries"] * 1e6 for x in ok]),
                avg_ms=_med([x["avg_ms"] for x in ok]),
                p95_ms=_med([x["p95_ms"] for x in ok]),
                peak_mb=_med([x["peak_mb"] for x in ok]),
                errors=sum(int(x["ignored"]) + int(x["reconnects"]) for x in ok),
                peak_parts=ok[-1].get("peak_parts_mb"),
            )
        rows[(test, threads, ps, name)] = row
    return rows


def large_select(env: Env, opts: argparse.Namespace) -> dict:
    names = [n for n in ("direct", "relay", "jitproxy") if n in env.routes]

    def cli(r: Route) -> list[str]:
        return ["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{r.port}", f"-u{r.user}", f"--password={r.password}",
                f"--ssl-ca={env.ca}", "--ssl-verify-server-cert"]

    for name in names:
        stream(cli(env.routes[name]), "SELECT 1")  # warm-up connection
    idle = {n: rss_mb(env.routes[n].pids()) for n in names}
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(opts.reps):
        for name in rotated(names, rep):
            r = env.routes[name]
            try:
                (wall, nbytes), stats = measure(env, r, lambda: stream(cli(r), f"SELECT * FROM {DATABASE}.big"))
                runs[name].append({"rep": rep, "wall": wall, "bytes": nbytes, **stats})
                log(f"{opts.rows:,}-row SELECT rep {rep + 1} {name}: {wall:.2f} s, {nbytes:,} bytes")
            except (SystemExit, Exception) as e:  # stream() raises SystemExit on a failed query
                runs[name].append({"rep": rep, "error": str(e)})
                log(f"{opts.rows:,}-row SELECT rep {rep + 1} {name}: FAILED {e}")
            scan_audit(r, "the large SELECT")
    return {"runs": runs, "idle_mb": idle}


def connections(env: Env, opts: argparse.Namespace) -> dict:
    names = list(env.routes)
    ctx = ssl.create_default_context(cafile=str(env.ca))

    def loop(r: Route) -> dict:
        times, errors, first = [], 0, ""
        for _ in range(opts.connections):
            t = time.perf_counter()
            try:
                conn = pymysql.connect(host="127.0.0.1", port=r.port, user=r.user, password=r.password,
                                       database=DATABASE, ssl=ctx, connect_timeout=10)
                conn.close()
            except Exception as e:  # noqa: BLE001 - counted and shown
                errors += 1
                first = first or f"{type(e).__name__}: {e}"
                continue
            times.append(time.perf_counter() - t)
        return {"times": times, "errors": errors, "first_error": first}

    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(opts.reps):
        for name in rotated(names, rep):
            r = env.routes[name]
            res, stats = measure(env, r, lambda: loop(r))
            assert isinstance(res, dict)
            res.update(stats, rep=rep)
            runs[name].append(res)
            scan_audit(r, "connections")
            mean = statistics.fmean(res["times"]) * 1e3 if res["times"] else float("nan")
            log(f"connections rep {rep + 1} {name}: {mean:.2f} ms each, {res['errors']} errors")
    return runs


# -- output -----------------------------------------------------------------------------------


def fmt(x: float, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if x != x else f"{x:{width}{spec}}"


def print_report(opts, env_names, rows, big, conns, routes, started, workers_note) -> dict[str, str]:
    print()
    print(f"sysbench 1.0.20 over TLS, 1 table x {opts.table_size:,} rows, {opts.time} s per run, median of "
          f"{opts.reps} rep(s), path order rotated every rep; 2 shared cores (client, proxy, MariaDB); "
          f"{time.strftime('%Y-%m-%d %H:%M')}, {time.time() - started:.0f} s in all")
    print("paths: direct = sysbench -> MariaDB; relay = bench/relay.py (raw asyncio byte relay, uvloop, TLS end to end);")
    print("       relay-tls = bench/relay.py terminating TLS on both hops as jitproxy does (no parsing: the floor for a proxy")
    print("       that reads statements); jitproxy = jitproxy serve (token login, TLS, YAML grant, audit best_effort to a file)"
          + (f"; {workers_note}" if workers_note else ""))
    print("proxy µs/q = proxy process CPU (user+sys; workers: summed) / queries; db µs/q = mariadbd CPU / queries;")
    print("/direct, /relay, /tls = median over reps of the same rep's ratio (QPS); peak RSS = VmHWM during the run")
    print()
    hdr = (f"{'workload':18} {'thr':>3} {'ps':7} {'path':16} {'QPS':>8} {'/direct':>7} {'/relay':>6} {'/tls':>5} "
           f"{'proxy µs/q':>10} {'db µs/q':>7} {'avg ms':>6} {'p95 ms':>6} {'peak RSS MB':>11}")
    print(hdr)
    print("-" * len(hdr))
    last = None
    for test, threads, ps in WORKLOADS:
        for name in env_names:
            row = rows.get((test, threads, ps, name))
            if row is None:
                continue
            label = (test.replace("oltp_", ""), threads, ps)
            if last is not None and label != last:
                print()
            last = label
            head = f"{label[0]:18} {threads:3d} {ps:7} {name:16}"
            if "qps" not in row:
                print(f"{head} FAILED ({row['failed']}/{row['runs']} runs)")
                continue
            note = f"  ({row['failed']} of {row['runs']} runs FAILED)" if row["failed"] else ""
            if row["errors"]:
                note += f"  ({row['errors']} sysbench ignored errors/reconnects)"
            print(f"{head} {row['qps']:8,.0f} {fmt(row['vs_direct'], '.2f', 7)} {fmt(row['vs_relay'], '.2f', 6)} "
                  f"{fmt(row['vs_tls'], '.2f', 5)} "
                  f"{fmt(row['cpu_us'], '.0f', 10)} {fmt(row['db_us'], '.0f', 7)} {row['avg_ms']:6.2f} "
                  f"{row['p95_ms']:6.2f} {fmt(row['peak_mb'], '.0f', 11)}{note}")

    for (test, threads, ps, name), row in rows.items():
        if row.get("peak_parts") and len(row["peak_parts"]) > 1 and (test, threads, ps) == WORKLOADS[-1]:
            print(f"({name}: peak RSS is the sum over its processes; in the last {test} run, supervisor first: "
                  f"{' + '.join(str(p) for p in row['peak_parts'])} MB)")
    marks: dict[str, str] = {}
    big_summary: dict[str, dict] = {}
    if big:
        runs = big["runs"]
        print()
        ok_direct = [x for x in runs.get("direct", []) if "error" not in x]
        nrows = opts.rows
        print(f"{nrows:,}-row SELECT * (mariadb CLI --quick --batch, TLS), median of {opts.reps}:")
        print(f"{'path':12} {'wall s':>7} {'/direct':>7} {'bytes':>13} {'proxy CPU s':>11} {'RSS idle MB':>11} "
              f"{'peak RSS MB':>11} {'max peak MB':>11}")
        sizes = {x["bytes"] for xs in runs.values() for x in xs if "error" not in x}
        for name, xs in runs.items():
            ok = [x for x in xs if "error" not in x]
            if not ok:
                print(f"{name:12} FAILED: {xs[0].get('error', '')[:200] if xs else ''}")
                continue
            s = {"wall": _med([x["wall"] for x in ok]), "ratio": _ratio(ok, ok_direct, "wall"),
                 "cpu": _med([x["cpu_s"] for x in ok]) if name != "direct" else float("nan"),
                 "peak": _med([x["peak_mb"] for x in ok]), "max_peak": max(x["peak_mb"] for x in ok)}
            big_summary[name] = s
            print(f"{name:12} {s['wall']:7.2f} {fmt(s['ratio'], '.2f', 7)} {ok[0]['bytes']:13,} {fmt(s['cpu'], '.2f', 11)} "
                  f"{fmt(big['idle_mb'][name] if name != 'direct' else float('nan'), '.0f', 11)} "
                  f"{fmt(s['peak'], '.0f', 11)} {fmt(s['max_peak'], '.0f', 11)}")
        print(f"bytes: {'identical on every path' if len(sizes) == 1 else 'DIFFERENT: ' + str(sorted(sizes))}")

    conn_summary: dict[str, dict] = {}
    if conns:
        print()
        print(f"{opts.connections:,} new connections per path and rep (PyMySQL connect + close, TLS, "
              f"jitproxy: token login), median of {opts.reps}:")
        print(f"{'path':12} {'ms/conn':>7} {'p50 ms':>6} {'p95 ms':>6} {'/direct':>7} {'proxy CPU ms/conn':>17} "
              f"{'db CPU ms/conn':>14} {'errors':>6}")
        base = {x["rep"]: statistics.fmean(x["times"]) for x in conns.get("direct", []) if x["times"]}
        for name, xs in conns.items():
            ok = [x for x in xs if x["times"]]
            if not ok:
                print(f"{name:12} FAILED: {xs[0]['first_error'] if xs else ''}")
                continue
            allt = sorted(t for x in ok for t in x["times"])
            s = {"mean": _med([statistics.fmean(x["times"]) for x in ok]),
                 "ratio": _med([statistics.fmean(x["times"]) / base[x["rep"]] for x in ok if x["rep"] in base]),
                 "cpu": _med([x["cpu_s"] / len(x["times"]) for x in ok]) if name != "direct" else float("nan"),
                 "db": _med([x["db_cpu_s"] / len(x["times"]) for x in ok]),
                 "errors": sum(x["errors"] for x in xs)}
            conn_summary[name] = s
            err = s["errors"]
            print(f"{name:12} {s['mean'] * 1e3:7.2f} {statistics.median(allt) * 1e3:6.2f} "
                  f"{allt[int(len(allt) * 0.95)] * 1e3:6.2f} {fmt(s['ratio'], '.2f', 7)} {fmt(s['cpu'] * 1e3, '.2f', 17)} "
                  f"{s['db'] * 1e3:14.2f} {err:6d}" + (f"  first: {next(x['first_error'] for x in xs if x['errors'])}"
                                                     if err else ""))

    # The issue's targets (informational).
    print()
    print("targets (issue 7; informational, not asserted):")

    def mark(key: str, ok: bool | None, text: str) -> None:
        m = "n/a " if ok is None else ("PASS" if ok else "FAIL")
        marks[key] = m
        print(f"  [{m}] {text}")

    for variant in [n for n in env_names if n.startswith("jitproxy")]:
        tag = "" if variant == "jitproxy" else f" ({variant})"
        jt, rt = rows.get(("oltp_point_select", 16, "disable", variant), {}), rows.get(("oltp_point_select", 16, "disable", "relay"), {})
        if "qps" in jt and "qps" in rt:
            mark(f"qps_text{tag}", jt["vs_relay"] >= 0.6, f"point select 16 thr, text: QPS >= 0.6 x relay{tag}: "
                 f"{jt['qps']:,.0f} vs {rt['qps']:,.0f} = {jt['vs_relay']:.2f} x")
            mark(f"cpu_text{tag}", jt["cpu_us"] <= 3 * rt["cpu_us"], f"point select 16 thr, text: proxy CPU <= 3 x relay's "
                 f"per query{tag}: {jt['cpu_us']:.0f} vs {rt['cpu_us']:.0f} µs = {jt['cpu_us'] / rt['cpu_us']:.1f} x")
            tt = rows.get(("oltp_point_select", 16, "disable", "relay-tls"), {})
            if "qps" in tt:
                mark(f"vs_tls{tag}", None, f"point select 16 thr, text, against the TLS-terminating relay{tag}: QPS "
                     f"{jt['vs_tls']:.2f} x, proxy CPU {jt['cpu_us']:.0f} vs {tt['cpu_us']:.0f} µs = "
                     f"{jt['cpu_us'] / tt['cpu_us']:.1f} x")
        else:
            mark(f"qps_text{tag}", False, f"point select 16 thr, text{tag}: no result")
        jp, rp = rows.get(("oltp_point_select", 16, "auto", variant), {}), rows.get(("oltp_point_select", 16, "auto", "relay"), {})
        if "qps" in jp and "qps" in rp:
            mark(f"qps_ps{tag}", jp["vs_relay"] >= 0.8, f"point select 16 thr, server-side prepared: QPS >= 0.8 x relay{tag}: "
                 f"{jp['qps']:,.0f} vs {rp['qps']:,.0f} = {jp['vs_relay']:.2f} x")
        else:
            mark(f"qps_ps{tag}", False, f"point select 16 thr, server-side prepared{tag}: no result")
    if big:
        j = big_summary.get("jitproxy")
        if j:
            mark("big_wall", j["ratio"] <= 1.2, f"{opts.rows:,}-row SELECT: wall <= 1.2 x direct: {j['ratio']:.2f} x "
                 f"({j['wall']:.2f} s)")
            mark("big_rss", j["max_peak"] <= 64, f"{opts.rows:,}-row SELECT: peak RSS <= 64 MB: {j['max_peak']:.0f} MB "
                 f"(max over reps; idle {big['idle_mb']['jitproxy']:.0f} MB)")
        else:
            mark("big_wall", False, f"{opts.rows:,}-row SELECT through jitproxy: no result")
    if conns:
        parts = [f"{n} {s['cpu'] * 1e3:.2f} ms" for n, s in conn_summary.items() if n != "direct"]
        mark("connections", None, "new connections: proxy CPU per connection: " + ", ".join(parts))

    problems = [(name, k, v) for name, r in routes.items() for k, v in r.problems.items()]
    print()
    if problems:
        print("jitproxy denials / failures / rejected sessions seen in the audit files:")
        for name, (kind, reason, stmt), count in problems:
            print(f"  {name}: {count} x {kind} [{reason}] {stmt!r}")
    else:
        print("jitproxy: no statement.denied, statement.failed or session.rejected events in the audit files")
    return marks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--time", type=int, help="seconds per sysbench run (default 10; --quick: 3)")
    ap.add_argument("--reps", type=int, help="repetitions, path order rotated each (default 3; --quick: 1)")
    ap.add_argument("--table-size", type=int, default=10_000, help="rows in sbtest1 (default 10,000)")
    ap.add_argument("--rows", type=int, help="rows of the large SELECT (default 1,000,000; --quick: 100,000)")
    ap.add_argument("--connections", type=int, help="new connections per path and rep (default 1,000; --quick: 100)")
    ap.add_argument("--workers", type=int, default=2, help="also measure `serve --workers N` (0 or 1: skip)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 s, 1 rep, 100k rows, 100 connections")
    ap.add_argument("--skip-large", action="store_true", help="no large SELECT")
    ap.add_argument("--skip-connections", action="store_true", help="no connection loop")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--asyncio-loop", action="store_true",
                    help="also measure jitproxy on the standard asyncio loop (JITPROXY_EVENT_LOOP=asyncio)")
    ap.add_argument("--audit-off", action="store_true",
                    help="also measure jitproxy with audit mode off (jitproxy-noaudit): what auditing costs")
    ap.add_argument("--only", help="workloads to run, e.g. point_select:16:disable,read_only (test[:threads[:ps]])")
    opts = ap.parse_args()
    q = opts.quick
    opts.time = opts.time or (3 if q else 10)
    opts.reps = opts.reps or (1 if q else 3)
    opts.rows = opts.rows or (100_000 if q else 1_000_000)
    opts.connections = opts.connections or (100 if q else 1000)
    if shutil.which("sysbench") is None:
        raise SystemExit("sysbench is not installed (scripts/setup.sh installs it)")

    workers_note = ""
    if opts.workers > 1 and not serve_has_workers():
        workers_note = "jitproxy serve has no --workers option here: not measured"
        opts.workers = 0
    elif opts.workers > 1:
        workers_note = f"jitproxy-w{opts.workers} = jitproxy serve --workers {opts.workers} (SO_REUSEPORT)"
    started = time.time()
    with environment(opts.table_size, opts.rows, opts.workers, opts.asyncio_loop, opts.audit_off) as env:
        names = list(env.routes)
        log(f"paths: {', '.join(f'{n}:{r.port}' for n, r in env.routes.items())}; warming up")
        for name, r in env.routes.items():
            for ps in ("disable", "auto"):
                res = run_sysbench(env, r, "oltp_point_select", 4, ps, 2, opts.table_size)
                if "error" in res:
                    log(f"warm-up {name} ps={ps}: FAILED {res['error']}")
            scan_audit(r, "warm-up")
        results = sysbench_matrix(env, opts)
        big = None if opts.skip_large else large_select(env, opts)
        conns = None if opts.skip_connections else connections(env, opts)
        for r in env.routes.values():
            if not r.alive():
                log(f"{r.name} exited with {r.proc.returncode if r.proc else None}; its log:")
            text = r.log.read_text() if r.log and r.log.exists() else ""
            text = "\n".join(line for line in text.splitlines() if not line.startswith("relay: 127.0.0.1:"))
            if text.strip():
                log(f"--- {r.name} log (last 3000 chars) ---\n{text[-3000:]}")
        rows = summarize_sysbench(results, names)
        print_report(opts, names, rows, big, conns, env.routes, started, workers_note)
        if opts.json:
            opts.json.write_text(json.dumps({
                "sysbench": [{"test": k[0], "threads": k[1], "ps": k[2], "path": k[3], "runs": v}
                             for k, v in results.items()],
                "large": big, "connections": conns,
            }, default=str, indent=1))


if __name__ == "__main__":
    main()
