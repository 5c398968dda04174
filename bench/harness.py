"""Shared set-up for the benchmarks: a private MariaDB, `jitproxy serve` as its own process (so
its CPU time and RSS are its own), a token, and client command lines for both paths."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jitproxy_demo.certs import TlsFiles, make_ca_and_server_cert  # noqa: E402
from jitproxy_demo.inprocess import write_keys  # noqa: E402
from jitproxy_demo.mariadb import Credentials, LocalMariaDB  # noqa: E402
from jitproxy_demo.sample import create_proxy_upstream_user  # noqa: E402
from proxy.identity.personal_tokens import TokenIssuer  # noqa: E402

_SERVE = """
import asyncio, sys
from pathlib import Path
from proxy.serving import LISTENING, configure_logging, serve
from proxy.config import load_config
cfg = load_config(Path(sys.argv[1]))
configure_logging("warning", "console")
async def main():
    ready = asyncio.Event()
    task = asyncio.create_task(serve(cfg, ready=ready))
    await ready.wait()
    Path(sys.argv[2]).write_text(str(LISTENING["port"]))
    await task
try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""


# sysbench's table shape, 10,000 rows, and one point select on it: shared by the benchmarks.
SBTEST_SETUP = [
    "CREATE TABLE sbtest1 (id INT PRIMARY KEY, k INT, c CHAR(120), pad CHAR(60)) "
    "SELECT seq AS id, seq % 1000 AS k, REPEAT('c', 120) AS c, REPEAT('p', 60) AS pad FROM seq_1_to_10000"
]
SBTEST_GRANT = "  - {subject: user:bench, grant: hr_prod.sbtest1, privileges: [SELECT]}\n"


def point_selects(conn: Any, n: int, ids: list[int]) -> list[float]:
    """`n` point selects on one connection (ids[i] each): their latencies in seconds."""
    out = []
    with conn.cursor() as cur:
        for i in range(n):
            t = time.perf_counter()
            cur.execute(f"SELECT c FROM sbtest1 WHERE id = {ids[i]}")
            cur.fetchall()
            out.append(time.perf_counter() - t)
    return out


@dataclass
class Bench:
    db: LocalMariaDB
    tls: TlsFiles
    upstream: Credentials
    proxy: subprocess.Popen[bytes]
    port: int
    user: str
    token: str
    by_mode: dict[str, tuple[subprocess.Popen[bytes], int]] = field(default_factory=dict)
    audit_dir: Path | None = None

    def cli(self, via_proxy: bool) -> list[str]:
        common = ["mariadb", "--no-defaults", "-h127.0.0.1", f"--ssl-ca={self.tls.ca_cert}", "--ssl-verify-server-cert"]
        if via_proxy:
            return [*common, f"-P{self.port}", f"-u{self.user}", f"--password={self.token}"]
        return [*common, f"-P{self.db.port}", f"-u{self.upstream.user}", f"--password={self.upstream.password}"]

    def proc_stat(self, proc: subprocess.Popen[bytes] | None = None) -> dict[str, float]:
        """Proxy CPU seconds (user+system), current and peak RSS in MB (`proc`: another proxy)."""
        pid = (proc or self.proxy).pid
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        status = dict(l.split(":", 1) for l in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in l)
        import os

        return {
            "cpu_s": ticks / os.sysconf("SC_CLK_TCK"),
            "rss_mb": int(status["VmRSS"].split()[0]) / 1024,
            "peak_mb": int(status["VmHWM"].split()[0]) / 1024,
        }


def _start_serve(config: Path, port_file: Path) -> tuple[subprocess.Popen[bytes], int]:
    proxy = subprocess.Popen([sys.executable, "-c", _SERVE, str(config), str(port_file)], cwd=ROOT)
    deadline = time.monotonic() + 30
    while not port_file.exists() or not port_file.read_text():
        if time.monotonic() > deadline or proxy.poll() is not None:
            proxy.kill()
            raise SystemExit("proxy did not start")
        time.sleep(0.05)
    return proxy, int(port_file.read_text())


@contextlib.contextmanager
def bench_environment(grants: str, setup_sql: list[str], database: str = "hr_prod", audit: bool = True,
                      audit_modes: tuple[str, ...] = ()) -> Iterator[Bench]:
    """`grants`: YAML list entries for user `bench`; `setup_sql`: run as root in `database`.
    `audit_modes`: also start one more proxy per audit mode (fail_closed, best_effort, off),
    each writing its own audit file; they are in `Bench.by_mode`."""
    with tempfile.TemporaryDirectory(prefix="jp-bench-") as tmp:
        base = Path(tmp)
        tls = make_ca_and_server_cert(base / "tls")
        with LocalMariaDB(base / "db", tls=tls, extra_args=("--innodb-buffer-pool-size=512M",)) as db:
            creds = create_proxy_upstream_user(db, password="bench-password")
            db.execute_root(f"CREATE DATABASE IF NOT EXISTS {database}")
            with db.root_connection(database) as conn, conn.cursor() as cur:
                for sql in setup_sql:
                    cur.execute(sql)
                conn.commit()
            private, public = write_keys(base / "keys")
            (base / "policies").mkdir()
            (base / "policies" / "bench.yaml").write_text("grants:\n" + grants)

            def config(name: str, audit_section: str) -> Path:
                path = base / f"{name}.yaml"
                path.write_text(
                    f"""
listen: {{host: 127.0.0.1, port: 0, tls: {{cert_file: {tls.server_cert}, key_file: {tls.server_key}}}}}
identity:
  issuers: [{{issuer: jitproxy, public_key_file: {public}}}]
upstream: {{host: 127.0.0.1, port: {db.port}, user: {creds.user}, password: {creds.password}, tls: {{ca_file: {tls.ca_cert}}}}}
policies: {{dirs: [{base / 'policies'}]}}
store: {{path: {base / name / 'state.db'}}}
api: {{enabled: false}}
audit: {audit_section}
log: {{level: warning}}
"""
                )
                return path

            sinks = f"[{{type: file, path: {base / 'audit.jsonl'}}}]" if audit else "[]"
            procs: list[subprocess.Popen[bytes]] = []
            try:
                proxy, port = _start_serve(config("main", f"{{sinks: {sinks}}}"), base / "port")
                procs.append(proxy)
                by_mode: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
                for mode in audit_modes:
                    section = f"{{mode: {mode}, sinks: [{{type: file, path: {base / (mode + '.jsonl')}}}]}}"
                    by_mode[mode] = _start_serve(config(mode, section), base / f"{mode}.port")
                    procs.append(by_mode[mode][0])
                token = TokenIssuer(private.read_bytes(), "jitproxy", "jitproxy", timedelta(hours=1)).issue(
                    "bench", ttl=timedelta(hours=1)
                )
                bench = Bench(db, tls, creds, proxy, port, "bench", token)
                bench.by_mode = by_mode
                bench.audit_dir = base
                yield bench
            finally:
                for proc in procs:
                    proc.terminate()
                    proc.wait(10)
