"""SQLAlchemy's own test suite as a gate: run it directly against MariaDB and through jitproxy,
and compare test by test.

    .venv/bin/python bench/peer_suites.py [--suites compliance,mysql] [--keep-venv]
                                          [--report out.json] [--gate tests/peer/refusals.yaml]

What it does:

1. A venv of its own under ~/.cache/jitproxy-peer/ (or $JITPROXY_PEER_CACHE), outside the repo:
   SQLAlchemy 2.0.x from its PyPI sdist (`pip download --no-binary :all: --no-deps`, unpacked:
   the sdist has test/ and the pytest plugin; the library itself is installed from the same
   sdist, pure Python, and used through PYTHONNOUSERSITE=1 as tox does), pytest, pytest-timeout
   (a hung test fails after --test-timeout s instead of hanging the run), PyMySQL and greenlet.
   A venv left by an earlier --keep-venv run is reused while its marker matches; one this run
   creates is removed at the end unless --keep-venv is given.
2. A private MariaDB 10.11 (TLS, jitproxy_demo.mariadb.LocalMariaDB) with the databases the suite
   uses without xdist: `test`, `test_schema`, `test_schema_2` (all three dropped and created
   again before every run, so the direct and the proxied run start from the same state). Two
   accounts with the same privileges (ALL on those three databases): `scott`, who the direct
   run logs in as, and the proxy's shared upstream account.
3. `jitproxy serve` as a real subprocess (on uvloop when installed, as in production) in front of it: TLS, a
   policy granting `ALL` on `*.*` to user:scott with allow_unbounded_writes, audit best_effort
   to a file sink, the admin API off, and test-sized connection limits (the suite opens many
   connections as one person from 127.0.0.1; the limits are operator settings, not what is
   tested here). The proxied run logs in as `scott` with a token from the proxy's signing key.
4. Each selection runs twice with `pytest --dburi mysql+pymysql://...?ssl_ca=<CA>` (verified TLS
   on both paths, hostname checked) and --junitxml; the two junit files are compared test by
   test. Printed: counts per selection, every test that passes directly but not through the
   proxy (failed, errored, skipped or missing) with the MySQL error and jitproxy reason code
   taken from its failure text, the phase (setup / call / teardown: a fixture refused, or the
   test itself), a "knock-on?" mark when it has no refusal of its own but an earlier test of
   its class was refused (e.g. the suite's cleanup was refused and rows were left behind), a
   histogram of causes, and what the proxy's audit trail says it denied or saw fail. --report
   writes all of it as JSON; --out keeps the junit files, pytest logs, proxy log and audit trail.
   The direct account has no privilege outside the three databases, so two compliance tests
   (CREATE SCHEMA foo_bar, DESCRIBE nonexistent_schema.x) fail directly: a baseline, not counted.
5. --gate YAML: exit 1 when a test passes directly but not through the proxy and is not listed
   in the YAML (reviewed refusals by design). Each entry: `test:` (a test id as printed, or an
   fnmatch pattern) and `reason:` (required). A selection that was not compared (the proxy
   exited, a run was aborted) fails the gate too. Exit 2 when the set-up itself fails.

Selections: compliance = test/dialect/test_suite.py, mysql = test/dialect/mysql/, sql = test/sql,
engine = test/engine, orm = test/orm/test_unitofwork*.py test_session.py test_transaction.py.
Test ids are `path::Class::test`, with the suite's per-backend class suffix (e.g.
`_mariadb+pymysql_10_11_19_0`) removed so that ids do not depend on the server's version.

Nothing here runs with pytest-xdist: the machine has 2 cores; the two runs of one selection are
sequential. Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from jitproxy_demo.certs import TlsFiles, make_ca_and_server_cert  # noqa: E402
from jitproxy_demo.inprocess import write_keys  # noqa: E402
from jitproxy_demo.mariadb import LocalMariaDB  # noqa: E402
from proxy.identity.personal_tokens import TokenIssuer  # noqa: E402

CACHE = Path(os.environ.get("JITPROXY_PEER_CACHE", Path.home() / ".cache" / "jitproxy-peer"))
SELECTIONS: dict[str, list[str]] = {
    "compliance": ["test/dialect/test_suite.py"],
    "mysql": ["test/dialect/mysql/"],
    "sql": ["test/sql/"],
    "engine": ["test/engine/"],
    "orm": ["test/orm/test_unitofwork*.py", "test/orm/test_session.py", "test/orm/test_transaction.py"],
}
DATABASES = ("test", "test_schema", "test_schema_2")
PERSON = "scott"  # the person: a MariaDB account for the direct run, a token subject for jitproxy
PERSON_PASSWORD = "tiger-peer-suites"
UPSTREAM_USER = "jitproxy_upstream"
UPSTREAM_PASSWORD = "jitproxy-upstream-peer"
VENV_PACKAGES = ["pytest>=7.0.0,<10", "pytest-timeout", "PyMySQL", "greenlet>=1", "typing-extensions>=4.6.0"]
POLICY = f"""# written by bench/peer_suites.py
grants:
  - subject: user:{PERSON}
    grant: "*.*"
    privileges: ALL
    allow_unbounded_writes: true
"""


def log(msg: str) -> None:
    print(f"[peer {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- the venv --------------------------------------------------------------------------------


@dataclass
class PeerVenv:
    path: Path
    python: Path
    src: Path  # the unpacked sdist (test/, setup.cfg, lib/sqlalchemy/testing/plugin/)
    version: str
    created: bool = False  # by this run (only then is it removed at the end without --keep-venv)


def _run(cmd: list[str], **kw: Any) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise SystemExit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")


def ensure_venv(spec: str) -> PeerVenv:
    """The venv for SQLAlchemy `spec` (e.g. 2.0.*): reused while its marker says so."""
    path = CACHE / "venv"
    marker = path / "peer-ready.json"
    if marker.exists():
        data = json.loads(marker.read_text())
        if data.get("spec") == spec and Path(data["src"]).is_dir() and (path / "bin" / "python").exists():
            log(f"reusing {path} (SQLAlchemy {data['version']})")
            return PeerVenv(path, path / "bin" / "python", Path(data["src"]), data["version"])
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.monotonic()
    log(f"creating {path} ...")
    # The project's interpreter (3.11) makes the venv; not a copy of the project's venv.
    _run([sys.executable, "-m", "venv", str(path)])
    py = path / "bin" / "python"
    pip = [str(py), "-m", "pip", "--disable-pip-version-check", "-q"]
    _run([*pip, "install", *VENV_PACKAGES])
    sdist_dir = path / "sdist"
    _run([*pip, "download", "--no-binary", ":all:", "--no-deps", f"sqlalchemy=={spec}", "-d", str(sdist_dir)])
    tarballs = sorted(sdist_dir.glob("sqlalchemy-*.tar.gz"))
    if len(tarballs) != 1:
        raise SystemExit(f"expected one SQLAlchemy sdist in {sdist_dir}, found {tarballs}")
    tarball = tarballs[0]
    version = tarball.name[len("sqlalchemy-"):-len(".tar.gz")]
    with tarfile.open(tarball) as tar:
        tar.extractall(path / "src", filter="data")
    src = path / "src" / f"sqlalchemy-{version}"
    # Pure Python (no Cython build on a 2-core machine); the suite runs the same either way.
    _run([*pip, "install", "--no-deps", str(tarball)], env={**os.environ, "DISABLE_SQLALCHEMY_CEXT": "1"})
    marker.write_text(json.dumps({"spec": spec, "version": version, "src": str(src)}))
    log(f"venv ready in {time.monotonic() - t0:.0f}s: SQLAlchemy {version} from its sdist")
    return PeerVenv(path, py, src, version, created=True)


# -- MariaDB and jitproxy --------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen[bytes], logfile: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"jitproxy did not start:\n{logfile.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def reset_databases(db: LocalMariaDB) -> None:
    """Drop and create the suite's databases (a run may leave tables with foreign keys across
    them behind, e.g. when the suite's own cleanup was refused)."""
    with db.root_connection() as conn, conn.cursor() as cur:
        cur.execute("SET SESSION foreign_key_checks = 0")
        for name in DATABASES:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")


@dataclass
class Environment:
    db: LocalMariaDB
    tls: TlsFiles
    proxy: subprocess.Popen[bytes]
    proxy_port: int
    proxy_log: Path
    audit: Path
    issuer: TokenIssuer
    work: Path

    def proxy_alive(self) -> bool:
        return self.proxy.poll() is None


@contextlib.contextmanager
def environment(work: Path) -> Iterator[Environment]:
    tls = make_ca_and_server_cert(work / "tls")
    with LocalMariaDB(work / "db", tls=tls, extra_args=("--innodb-buffer-pool-size=256M",)) as db:
        grants = [f"ALL PRIVILEGES ON `{name}`.*" for name in DATABASES]
        db.create_user(PERSON, PERSON_PASSWORD, grants)
        db.create_user(UPSTREAM_USER, UPSTREAM_PASSWORD, grants)
        private, public = write_keys(work / "keys")
        (work / "policies").mkdir()
        (work / "policies" / "peer.yaml").write_text(POLICY)
        port, audit, proxy_log = free_port(), work / "audit.jsonl", work / "proxy.log"
        config = {
            "listen": {"host": "127.0.0.1", "port": port,
                       "tls": {"cert_file": str(tls.server_cert), "key_file": str(tls.server_key)}},
            "identity": {"issuers": [{"issuer": "jitproxy", "audience": "jitproxy", "public_key_file": str(public)}]},
            "upstream": {"host": "127.0.0.1", "port": db.port, "user": UPSTREAM_USER, "password": UPSTREAM_PASSWORD,
                         "tls": {"ca_file": str(tls.ca_cert)}},
            "policies": {"dirs": [str(work / "policies")]},
            "audit": {"mode": "best_effort", "sinks": [{"type": "file", "path": str(audit)}]},
            "store": {"path": str(work / "state" / "jitproxy.db")},
            "api": {"enabled": False},
            "limits": {"max_handshakes_per_address": 1000, "max_connections_per_address": 5000,
                       "max_connections_per_user": 5000,
                       "login_failures": {"free": 1_000_000, "lockout_after": 1_000_000}},
            "log": {"level": "warning"},
        }
        cfg_path = work / "jitproxy.yaml"
        cfg_path.write_text(json.dumps(config, indent=1))  # JSON is YAML
        jitproxy = Path(sys.executable).parent / "jitproxy"
        cmd = [str(jitproxy), "serve", "--config", str(cfg_path)] if jitproxy.exists() else \
            [sys.executable, "-m", "proxy.cli", "serve", "--config", str(cfg_path)]
        with open(proxy_log, "wb") as out:
            proxy = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            wait_listening(port, proxy, proxy_log)
            issuer = TokenIssuer(private.read_bytes(), issuer="jitproxy", audience="jitproxy",
                                 max_ttl=timedelta(hours=12))
            yield Environment(db, tls, proxy, port, proxy_log, audit, issuer, work)
        finally:
            proxy.terminate()
            try:
                proxy.wait(15)
            except subprocess.TimeoutExpired:
                proxy.kill()
                proxy.wait()


# -- running a selection ---------------------------------------------------------------------


@dataclass
class TestResult:
    status: str  # passed | failed | skipped
    message: str = ""
    text: str = ""


@dataclass
class Run:
    selection: str
    path: str  # direct | proxy
    returncode: int
    seconds: float
    junit: str
    log: str
    results: dict[str, TestResult] = field(default_factory=dict)
    audit: dict[str, Any] = field(default_factory=dict)  # proxy runs: what the audit trail shows

    def counts(self) -> dict[str, int]:
        c = Counter(r.status for r in self.results.values())
        return {k: c.get(k, 0) for k in ("passed", "failed", "skipped")}


def selection_paths(src: Path, name: str) -> list[str]:
    out: list[str] = []
    for pattern in SELECTIONS[name]:
        matches = sorted(str(p.relative_to(src)) for p in src.glob(pattern)) if "*" in pattern else [pattern]
        out += matches
    return out


def dburi(user: str, password: str, port: int, ca: Path) -> str:
    return (f"mysql+pymysql://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{port}/test"
            f"?charset=utf8mb4&ssl_ca={quote(str(ca))}")


def run_pytest(venv: PeerVenv, env: Environment, selection: str, path: str, out_dir: Path,
               test_timeout: float, run_timeout: float, extra: list[str]) -> Run:
    reset_databases(env.db)
    if path == "direct":
        url = dburi(PERSON, PERSON_PASSWORD, env.db.port, env.tls.ca_cert)
    else:
        token = env.issuer.issue(PERSON, ttl=timedelta(hours=12))
        url = dburi(PERSON, token, env.proxy_port, env.tls.ca_cert)
    junit = out_dir / f"{selection}-{path}.xml"
    logfile = out_dir / f"{selection}-{path}.log"
    cmd = [str(venv.python), "-m", "pytest", *selection_paths(venv.src, selection), "--dburi", url,
           f"--junitxml={junit}", "-p", "no:cacheprovider", "--maxfail=1000000", "--tb=native",
           f"--timeout={test_timeout:g}", "-o", "junit_logging=no", "-o", "junit_family=xunit1", *extra]
    child_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    child_env.update(PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1")
    log(f"{selection}: {path} run ...")
    t0 = time.monotonic()
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=venv.src, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=child_env, start_new_session=True)
        try:
            rc = proc.wait(run_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            rc = -9
            log(f"{selection}: {path} run killed after {run_timeout:.0f}s")
    seconds = time.monotonic() - t0
    run = Run(selection, path, rc, seconds, str(junit), str(logfile))
    if junit.exists():
        run.results = parse_junit(junit, venv.src)
    tail = logfile.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
    log(f"{selection}: {path} done in {seconds:.0f}s, rc={rc}, {run.counts()} | {tail[0][:160]}")
    if path == "proxy" and not env.proxy_alive():
        log(f"jitproxy EXITED during the {selection} run (code {env.proxy.returncode}); see {env.proxy_log}")
    return run


# -- junit -----------------------------------------------------------------------------------

# generate_sub_tests() names a backend test class `<Class>_<cfg.name>`, e.g.
# `ComponentReflectionTest_mariadb+pymysql_10_11_19_0`: the server version is not part of an id.
_BACKEND_SUFFIX = re.compile(r"_(?:mysql|mariadb)[+_]pymysql\w*$")


def make_test_id(classname: str, name: str, src: Path) -> str:
    parts = classname.split(".")
    for i in range(len(parts), 0, -1):
        module = Path(*parts[:i]).with_suffix(".py")
        if (src / module).exists():
            classes = [_BACKEND_SUFFIX.sub("", c) for c in parts[i:]]
            return "::".join([str(module), *classes, name])
    return f"{classname}::{name}"


_RANK = {"passed": 0, "skipped": 1, "failed": 2}


def parse_junit(path: Path, src: Path) -> dict[str, TestResult]:
    out: dict[str, TestResult] = {}
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        log(f"cannot parse {path}: {e}")
        return out
    for case in root.iter("testcase"):
        tid = make_test_id(case.get("classname", ""), case.get("name", ""), src)
        result = TestResult("passed")
        for child in case:
            if child.tag in ("failure", "error"):
                result = TestResult("failed", child.get("message", "") or "", child.text or "")
                break
            if child.tag == "skipped":
                result = TestResult("skipped", child.get("message", "") or "", child.text or "")
        old = out.get(tid)
        if old is None or _RANK[result.status] > _RANK[old.status]:
            out[tid] = result
    return out


# -- causes ----------------------------------------------------------------------------------

_MYSQL_ERROR = re.compile(r"\((\d{4}), (['\"])(.*?)\2\)", re.S)
_JP_REASON = re.compile(r"\(jitproxy: ([\w.]+)\)|denied by jitproxy \(([\w.]+)\)")
_JP_FREE = re.compile(r"(?<![\w/.-])jitproxy: ([^\"')\n]{0,120})")  # not the venv's path
_SQL = re.compile(r"\[SQL: (.*?)\](?=\s*(?:\[parameters:|\(Background|\[SQL|$))", re.S)
_FIRST_KEYWORDS = {"SHOW", "CREATE", "DROP", "ALTER", "SET", "XA", "LOCK", "UNLOCK", "START", "RELEASE",
                   "ROLLBACK", "RENAME", "TRUNCATE", "GRANT", "REVOKE", "ANALYZE", "OPTIMIZE", "CHECK", "FLUSH",
                   "LOAD", "DESCRIBE", "DESC", "EXPLAIN", "HANDLER", "PREPARE", "EXECUTE", "DEALLOCATE",
                   "INSERT", "REPLACE", "WITH", "SAVEPOINT", "COMMIT", "BEGIN", "KILL", "USE", "CALL", "DO"}
_NEXT_KEYWORDS = {"TEMPORARY", "TABLE", "TABLES", "VIEW", "INDEX", "DATABASE", "DATABASES", "SCHEMA", "FUNCTION",
                  "PROCEDURE", "TRIGGER", "SEQUENCE", "USER", "CREATE", "FULL", "COLUMNS", "FIELDS", "VARIABLES",
                  "STATUS", "INDEXES", "KEYS", "WARNINGS", "ERRORS", "GRANTS", "SESSION", "GLOBAL", "TRANSACTION",
                  "ISOLATION", "NAMES", "CHARACTER", "OR", "REPLACE", "IF", "EXISTS", "NOT", "UNIQUE", "FOREIGN",
                  "ONLINE", "IGNORE", "INTO", "RECURSIVE", "READ", "WRITE", "WORK", "TO", "SAVEPOINT", "RECOVER",
                  "END", "COMMIT", "ROLLBACK", "PREPARE", "ENGINE", "COLLATION", "CHARSET", "PLUGINS", "PROCESSLIST"}


def statement_class(sql: str) -> str:
    sql = re.sub(r"/\*.*?\*/|--[^\n]*\n|#[^\n]*\n", " ", sql, flags=re.S).strip().lstrip("(").strip()
    sql = re.sub(r"`[^`]*`|'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", " x ", sql)  # names and strings are no keywords
    words = re.findall(r"[A-Za-z_@]+", sql[:200])
    if not words:
        return "?"
    out = [words[0].upper()]
    if out[0] in _FIRST_KEYWORDS:
        for w in words[1:4]:
            if w.upper() not in _NEXT_KEYWORDS:
                break
            out.append(w.upper())
    return " ".join(out)


@dataclass
class Cause:
    mysql_code: str  # "1142" or "-"
    mysql_message: str
    jitproxy_reason: str  # a reason code ("missing_grant"), "jitproxy-message: ...", or "-"
    statement: str
    statement_class: str
    exception: str  # the exception type from the junit message
    phase: str = "call"  # setup | call | teardown (a fixture's error, or the test's own)
    # No refusal of its own, but an earlier test of its class was refused through the proxy: most
    # likely a knock-on (e.g. the suite's table cleanup was refused, and rows were left behind).
    after_refusal: str = ""


_PHASE = re.compile(r'failed on (setup|teardown) with "(.*)', re.S)


def cause_of(result: TestResult) -> Cause:
    first = result.message
    phase = "call"
    if m := _PHASE.match(first):
        phase, first = m.group(1), m.group(2)
    text = f"{first}\n{result.text}"
    exception = (first.split(":", 1)[0].strip() or "?")[:80] if result.status == "failed" else "skipped"
    code, message = "-", ""
    errors = list(_MYSQL_ERROR.finditer(text))
    # The last MySQL error in the text is the one the test died of (tracebacks nest causes).
    jp = [e for e in errors if "jitproxy" in e.group(3)]
    chosen = (jp or errors)[-1] if errors else None
    if chosen:
        code, message = chosen.group(1), chosen.group(3)[:300]
    reason = "-"
    m = _JP_REASON.search(message or text)
    if m:
        reason = m.group(1) or m.group(2)
    elif f := _JP_FREE.search(message or text):
        reason = f"jitproxy-message: {f.group(1)[:60]}"
    sqls = _SQL.findall(text)
    statement = sqls[-1].strip() if sqls else ""
    if result.status == "skipped":
        message = message or first[:300]
    elif not message:
        message = first[:300]
    return Cause(code, message, reason, statement[:2000], statement_class(statement) if statement else "", exception,
                 phase)


# -- the audit trail -------------------------------------------------------------------------


def audit_summary(audit: Path, since: int) -> tuple[dict[str, int], dict[str, str], int]:
    """From byte `since` of the audit file: counts of denied/failed statements by (type, reason
    or error code, statement class), one example statement each, and where the file ended."""
    counts: Counter[str] = Counter()
    examples: dict[str, str] = {}
    if not audit.exists():
        return {}, {}, since
    with open(audit, "rb") as f:
        f.seek(since)
        data = f.read()
    for line in data.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        t = ev.get("type", "")
        if t == "statement.denied":
            key = f"denied | {ev.get('reason_code')} | {ev.get('statement_class')}"
        elif t == "statement.failed":
            key = f"failed | {ev.get('error_code')} | {ev.get('statement_class')}"
        elif t == "session.rejected":
            key = f"session.rejected | {ev.get('reason_code')} | -"
        else:
            continue
        counts[key] += 1
        examples.setdefault(key, str(ev.get("statement") or ev.get("reason") or "")[:300])
    return dict(counts.most_common()), examples, since + len(data)


# -- the gate --------------------------------------------------------------------------------


def load_refusals(path: Path) -> list[dict[str, str]]:
    raw = yaml.safe_load(path.read_text()) if path.exists() else None
    if raw is None:
        return []
    entries = raw.get("refusals", []) if isinstance(raw, dict) else raw
    if not isinstance(entries, list):
        raise SystemExit(f"{path}: expected a list of refusals (or `refusals:` with one)")
    for i, e in enumerate(entries or []):
        if not isinstance(e, dict) or not e.get("test") or not str(e.get("reason", "")).strip():
            raise SystemExit(f"{path}: entry {i} needs `test:` and a non-empty `reason:`")
    return list(entries or [])


def refusal_for(test: str, refusals: list[dict[str, str]]) -> dict[str, str] | None:
    for e in refusals:
        if e["test"] == test or fnmatch.fnmatchcase(test, e["test"]):
            return e
    return None


# -- main ------------------------------------------------------------------------------------


def compare(direct: Run, proxy: Run) -> list[dict[str, Any]]:
    """Every test that passes directly and not through the proxy, in the proxy run's order."""
    out = []
    refused_in_class: dict[str, str] = {}  # class id -> the first refusal seen in it (proxy run order)
    for tid, p in proxy.results.items():
        cls = tid.rsplit("::", 1)[0]
        cause = cause_of(p) if p.status != "passed" else None
        if cause and cause.jitproxy_reason != "-":
            refused_in_class.setdefault(cls, f"{cause.jitproxy_reason}: {cause.statement_class or cause.exception}")
        d = direct.results.get(tid)
        if cause is None or d is None or d.status != "passed":
            continue
        if cause.jitproxy_reason == "-" and cls in refused_in_class:
            cause.after_refusal = refused_in_class[cls]
        out.append({"test": tid, "proxy_status": p.status, "cause": asdict(cause)})
    for tid, d in direct.results.items():
        if d.status == "passed" and tid not in proxy.results:
            out.append({"test": tid, "proxy_status": "missing", "cause": asdict(Cause(
                "-", "not run through the proxy (run aborted or not collected)", "-", "", "", "missing"))})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--suites", default="compliance,mysql",
                    help=f"comma-separated selections: {', '.join(SELECTIONS)} (default: compliance,mysql)")
    ap.add_argument("--sqlalchemy", default="2.0.*", help="SQLAlchemy version spec for pip (default 2.0.*)")
    ap.add_argument("--keep-venv", action="store_true",
                    help="keep the venv this run creates (and the sdist) for the next runs")
    ap.add_argument("--report", type=Path, help="write the JSON report here")
    ap.add_argument("--gate", type=Path, help="refusals YAML: exit 1 on any regression not listed in it")
    ap.add_argument("--out", type=Path, default=CACHE / "last-run",
                    help="junit files, pytest logs, proxy log and audit trail of this run (default: %(default)s)")
    ap.add_argument("--test-timeout", type=float, default=300, help="pytest-timeout per test, seconds")
    ap.add_argument("--run-timeout", type=float, default=5400, help="one pytest run at most, seconds")
    ap.add_argument("--only", choices=("both", "direct", "proxy"), default="both",
                    help="run one path only (to reproduce; nothing is compared, a gate fails)")
    ap.add_argument("--top", type=int, default=20, help="causes shown in the histogram")
    ap.add_argument("pytest_args", nargs="*", help="after --: more pytest arguments (e.g. -k name)")
    args = ap.parse_args(argv)

    suites = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = [s for s in suites if s not in SELECTIONS]
    if unknown:
        ap.error(f"unknown selection(s) {unknown}; known: {', '.join(SELECTIONS)}")
    refusals = load_refusals(args.gate) if args.gate else []

    t_start = time.monotonic()
    venv = ensure_venv(args.sqlalchemy)
    out_dir = args.out
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    report: dict[str, Any] = {"sqlalchemy": venv.version, "suites": suites, "selections": {}}
    regressions_all: list[dict[str, Any]] = []
    proxy_died = False
    try:
        with tempfile.TemporaryDirectory(prefix="jp-peer-") as tmp, environment(Path(tmp)) as env:
            server = env.db.execute_root("SELECT VERSION()")[0][0]
            report["mariadb"] = server
            log(f"MariaDB {server} on {env.db.port}, jitproxy on {env.proxy_port}, work dir {tmp}")
            audit_pos = 0
            for sel in suites:
                runs: dict[str, Run] = {}
                for path in ("direct", "proxy"):
                    if args.only not in ("both", path):
                        continue
                    runs[path] = run_pytest(venv, env, sel, path, out_dir, args.test_timeout, args.run_timeout,
                                            args.pytest_args)
                    if path == "proxy":
                        counts, examples, audit_pos = audit_summary(env.audit, audit_pos)
                        runs[path].audit = {"counts": counts, "examples": examples}
                        if not env.proxy_alive():
                            proxy_died = True
                entry: dict[str, Any] = {
                    p: {"counts": r.counts(), "seconds": round(r.seconds, 1), "returncode": r.returncode,
                        "junit": r.junit, "log": r.log}
                    for p, r in runs.items()}
                if "proxy" in runs:
                    entry["proxy_audit"] = runs["proxy"].audit
                if len(runs) == 2:
                    regs = compare(runs["direct"], runs["proxy"])
                    for r in regs:
                        r["selection"] = sel
                        ref = refusal_for(r["test"], refusals)
                        r["reviewed"] = ref.get("reason") if ref else None
                        r["reviewed_by"] = ref["test"] if ref else None
                    entry["regressions"] = regs
                    entry["proxy_only_passes"] = sorted(
                        t for t, p in runs["proxy"].results.items()
                        if p.status == "passed" and runs["direct"].results.get(t, TestResult("missing")).status != "passed")
                    regressions_all += regs
                report["selections"][sel] = entry
                if proxy_died:
                    break
            shutil.copy(env.proxy_log, out_dir / "proxy.log")
            if env.audit.exists():
                shutil.copy(env.audit, out_dir / "audit.jsonl")
    finally:
        if venv.created and not args.keep_venv:
            shutil.rmtree(venv.path, ignore_errors=True)
    report["seconds"] = round(time.monotonic() - t_start, 1)
    report["proxy_exited"] = proxy_died

    print_report(report, regressions_all, args.top)
    histogram = Counter(causes_key(r) for r in regressions_all)
    report["histogram"] = [{"cause": k, "count": n, "example": example_for(k, regressions_all)}
                           for k, n in histogram.most_common()]
    report["regressions"] = regressions_all
    status = 0
    if args.gate:
        used = {r["reviewed_by"] for r in regressions_all if r.get("reviewed_by")}
        stale = [e["test"] for e in refusals if e["test"] not in used]
        incomplete = [s for s in suites if "regressions" not in report["selections"].get(s, {})]
        if stale and not incomplete:
            log(f"refusals matching no test of this run ({', '.join(suites)}): {stale}")
        unreviewed = [r for r in regressions_all if not r["reviewed"]]
        report["gate"] = {"file": str(args.gate), "unreviewed": len(unreviewed), "stale_refusals": stale,
                          "incomplete_selections": incomplete, "passed": not (proxy_died or unreviewed or incomplete)}
        if proxy_died or unreviewed or incomplete:
            log(f"GATE FAILED: {len(unreviewed)} test(s) pass directly but not through jitproxy and are not in "
                f"{args.gate}" + ("; jitproxy exited during the run" if proxy_died else "")
                + (f"; selections not compared: {incomplete}" if incomplete else ""))
            status = 1
        else:
            log(f"GATE PASSED ({len(regressions_all)} reviewed refusal(s))")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(report, indent=1))
        log(f"report: {args.report}")
    return status


def causes_key(r: dict[str, Any]) -> str:
    c = r["cause"]
    what = c["statement_class"] if c["statement"] else c["exception"]
    key = f"{c['mysql_code']} | {c['jitproxy_reason']} | {what}"
    if c.get("phase", "call") != "call":
        key += f" [in {c['phase']}]"
    if c.get("after_refusal"):
        key += " [knock-on?]"
    return key


def example_for(key: str, regs: list[dict[str, Any]]) -> dict[str, str]:
    for r in regs:
        if causes_key(r) == key:
            c = r["cause"]
            return {"test": r["test"], "statement": c["statement"][:500], "message": c["mysql_message"][:300]}
    return {}


def print_report(report: dict[str, Any], regs: list[dict[str, Any]], top: int) -> None:
    print()
    print(f"SQLAlchemy {report['sqlalchemy']} suite, MariaDB {report.get('mariadb', '?')}: direct vs jitproxy "
          f"({report['seconds']:.0f}s in all)")
    print(f"{'selection':<12} {'path':<7} {'passed':>7} {'failed':>7} {'skipped':>8} {'seconds':>8}  rc")
    for sel, e in report["selections"].items():
        for p in ("direct", "proxy"):
            if p in e:
                c = e[p]["counts"]
                print(f"{sel:<12} {p:<7} {c['passed']:>7} {c['failed']:>7} {c['skipped']:>8} "
                      f"{e[p]['seconds']:>8.0f}  {e[p]['returncode']}")
        if "regressions" in e:
            n = len(e["regressions"])
            print(f"{'':<12} -> {n} pass directly but not through jitproxy"
                  f" ({sum(1 for r in e['regressions'] if r['reviewed'])} reviewed);"
                  f" {len(e['proxy_only_passes'])} pass only through jitproxy")
    if regs:
        print("\nTests that pass directly and not through jitproxy:")
        for r in regs:
            c = r["cause"]
            mark = " [reviewed]" if r["reviewed"] else ""
            what = " ".join((c["statement"] or c["mysql_message"] or c["exception"]).split())[:120]
            where = "" if c.get("phase", "call") == "call" else f" in {c['phase']}"
            after = f" [after '{c['after_refusal']}' in its class]" if c.get("after_refusal") else ""
            print(f"  {r['test']} ({r['proxy_status']}{where}){mark}: {c['mysql_code']} {c['jitproxy_reason']}: "
                  f"{what}{after}")
        print(f"\nCauses (MySQL error | jitproxy reason | statement class or exception [phase] [knock-on?: no "
              f"refusal of its own, after one in its class]), top {top}:")
        for k, n in Counter(causes_key(r) for r in regs).most_common(top):
            ex = example_for(k, regs)
            print(f"  {n:>5}  {k}")
            print(f"         e.g. {' '.join((ex.get('statement') or ex.get('message') or '').split())[:200]}")
    for sel, e in report["selections"].items():
        audit = e.get("proxy_audit", {}).get("counts", {})
        if audit:
            print(f"\nAudit trail of the {sel} proxy run (denied / failed statements), top {top}:")
            for k, n in list(audit.items())[:top]:
                print(f"  {n:>5}  {k}")
                print(f"         e.g. {' '.join(e['proxy_audit']['examples'][k].split())[:200]}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit as e:
        if isinstance(e.code, str):  # a set-up failure (venv, MariaDB, jitproxy, the refusals file)
            print(f"peer_suites: {e.code}", file=sys.stderr)
            sys.exit(2)
        raise
