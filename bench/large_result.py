"""1,000,000-row SELECT through jitproxy vs a direct connection, in one run.

Starts its own MariaDB (temp datadir, loopback), creates a sysbench-shaped table, starts
`jitproxy serve` as a separate process, then streams `SELECT *` with the mariadb CLI (--quick)
directly and through the proxy, alternating. Prints wall times, the ratio against direct, the
byte counts (must match) and the proxy's idle and peak RSS (VmRSS / VmHWM from /proc).

    .venv/bin/python bench/large_result.py [--rows 1000000] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from proxy.demo.certs import make_ca_and_server_cert  # noqa: E402
from proxy.demo.mariadb import LocalMariaDB  # noqa: E402
from proxy.demo.sample import create_proxy_upstream_user  # noqa: E402
from proxy.identity.tokens import TokenIssuer  # noqa: E402
from proxy.testing import write_keys  # noqa: E402


def rss_kb(pid: int) -> tuple[int, int]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def stream(args: list[str], sql: str) -> tuple[float, int]:
    start = time.perf_counter()
    p = subprocess.Popen([*args, "--quick", "--batch", "--skip-column-names", "-e", sql], stdout=subprocess.PIPE)
    assert p.stdout is not None
    total = 0
    while chunk := p.stdout.read(1 << 20):
        total += len(chunk)
    if p.wait() != 0:
        raise SystemExit(f"query failed: {args[0]} rc={p.returncode}")
    return time.perf_counter() - start, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    opts = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="jp-bench-") as tmp:
        base = Path(tmp)
        tls = make_ca_and_server_cert(base / "tls")
        with LocalMariaDB(base / "db", tls=tls) as db:
            creds = create_proxy_upstream_user(db, password="bench-password")
            db.execute_root("CREATE DATABASE IF NOT EXISTS hr_prod")
            with db.root_connection("hr_prod") as conn, conn.cursor() as cur:  # seq_* needs a database
                cur.execute(
                    "CREATE TABLE big (id INT PRIMARY KEY, k INT, c CHAR(120), pad CHAR(60)) SELECT seq AS id, "
                    f"seq % 1000 AS k, REPEAT('c', 120) AS c, REPEAT('p', 60) AS pad FROM seq_1_to_{opts.rows}"
                )
            private, public = write_keys(base / "keys")
            (base / "policies").mkdir()
            (base / "policies" / "bench.yaml").write_text(
                "grants:\n  - {subject: user:bench, grant: hr_prod.big, privileges: [SELECT]}\n"
            )
            (base / "config.yaml").write_text(
                f"""
listen: {{host: 127.0.0.1, port: 0, tls: {{cert_file: {tls.server_cert}, key_file: {tls.server_key}}}}}
identity:
  issuers: [{{issuer: jitproxy, public_key_file: {public}}}]
upstream: {{host: 127.0.0.1, port: {db.port}, user: {creds.user}, password: {creds.password}, tls: {{ca_file: {tls.ca_cert}}}}}
policies: {{dirs: [{base / 'policies'}]}}
audit: {{sinks: [{{type: file, path: {base / 'audit.jsonl'}}}]}}
log: {{level: warning}}
"""
            )
            port_file = base / "port"
            proxy = subprocess.Popen(
                [sys.executable, "-c", _SERVE, str(base / "config.yaml"), str(port_file)],
                cwd=ROOT,
            )
            try:
                deadline = time.monotonic() + 30
                while not port_file.exists() or not port_file.read_text():
                    if time.monotonic() > deadline or proxy.poll() is not None:
                        raise SystemExit("proxy did not start")
                    time.sleep(0.05)
                port = int(port_file.read_text())
                token = TokenIssuer(private.read_bytes(), "jitproxy", "jitproxy", timedelta(hours=1)).issue(
                    "bench", ttl=timedelta(hours=1)
                )
                common = ["mariadb", "--no-defaults", "-h127.0.0.1", f"--ssl-ca={tls.ca_cert}", "--ssl-verify-server-cert"]
                direct = [*common, f"-P{db.port}", f"-u{creds.user}", f"--password={creds.password}"]
                via = [*common, f"-P{port}", "-ubench", f"--password={token}"]
                stream(via, "SELECT 1")  # warm-up connection
                idle_rss, _ = rss_kb(proxy.pid)
                sql = "SELECT * FROM hr_prod.big"
                times: dict[str, list[float]] = {"direct": [], "jitproxy": []}
                sizes: dict[str, int] = {}
                for rep in range(opts.reps):
                    order = ("direct", "jitproxy") if rep % 2 == 0 else ("jitproxy", "direct")
                    for name in order:
                        t, n = stream(direct if name == "direct" else via, sql)
                        times[name].append(t)
                        sizes[name] = n
                _, peak = rss_kb(proxy.pid)
            finally:
                proxy.terminate()
                proxy.wait(10)
    d, j = statistics.median(times["direct"]), statistics.median(times["jitproxy"])
    print(f"rows: {opts.rows:,}   bytes: direct {sizes['direct']:,}  jitproxy {sizes['jitproxy']:,}  "
          f"({'identical' if sizes['direct'] == sizes['jitproxy'] else 'DIFFERENT'})")
    print(f"{'path':10} {'median s':>9} {'min s':>7} {'max s':>7} {'ratio':>6}")
    for name, ts in times.items():
        print(f"{name:10} {statistics.median(ts):9.2f} {min(ts):7.2f} {max(ts):7.2f} {statistics.median(ts) / d:6.2f}")
    print(f"jitproxy RSS: idle {idle_rss / 1024:.0f} MB, peak {peak / 1024:.0f} MB (VmHWM, whole run)")
    del j


_SERVE = """
import asyncio, sys
from pathlib import Path
from proxy.cli import LISTENING, configure_logging, serve
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

if __name__ == "__main__":
    main()
