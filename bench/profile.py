"""Where the proxy's time goes: point selects through `jitproxy serve` while py-spy samples it.

Prints the functions with the most samples on the stack (inclusive) and on top (self), grouped
by area (analysis, decision, audit, relay, TLS, event loop). Needs py-spy (`pip install py-spy`)
and permission to ptrace the proxy (root, or kernel.yama.ptrace_scope=0).

    .venv/bin/python bench/profile.py [--seconds 15] [--ps]   # --ps: server-side prepared
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import ssl
import subprocess
import tempfile
import threading
from pathlib import Path

import pymysql

from harness import SBTEST_GRANT, SBTEST_SETUP, bench_environment, point_selects

AREAS = (
    ("audit", ("proxy/audit/",)),
    ("analysis", ("proxy/authz/analyze", "proxy/authz/fingerprint", "sqlglot", "AnalysisCache")),
    ("decision", ("proxy/authz/decide", "proxy/authz/model")),
    ("relay", ("proxy/upstream/relay", "proxy/upstream/connection")),
    ("session", ("proxy/protocol/",)),
    ("tls", ("ssl.py", "sslproto")),
    ("event loop", ("asyncio", "uvloop")),
)


def area(frame: str) -> str:
    for name, needles in AREAS:
        if any(n in frame for n in needles):
            return name
    return "other"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=15)
    ap.add_argument("--top", type=int, default=25)
    opts = ap.parse_args()
    spy = shutil.which("py-spy")
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    rng = random.Random(3)
    ids = [rng.randint(1, 10000) for _ in range(200_000)]
    with bench_environment(SBTEST_GRANT, SBTEST_SETUP) as b, tempfile.TemporaryDirectory() as tmp:
        ctx = ssl.create_default_context(cafile=str(b.tls.ca_cert))
        stop = threading.Event()

        def load() -> None:
            conn = pymysql.connect(host="127.0.0.1", port=b.port, user=b.user, password=b.token,
                                   database="hr_prod", ssl=ctx)
            i = 0
            while not stop.is_set():
                point_selects(conn, 500, ids[i % 199_000:])
                i += 500
            conn.close()

        threads = [threading.Thread(target=load) for _ in range(2)]
        for t in threads:
            t.start()
        raw = Path(tmp) / "profile.txt"
        subprocess.run([spy, "record", "--pid", str(b.proxy.pid), "--duration", str(opts.seconds), "--rate", "250",
                        "--format", "raw", "--output", str(raw), "--nonblocking"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        stop.set()
        for t in threads:
            t.join()
        inclusive: collections.Counter[str] = collections.Counter()
        own: collections.Counter[str] = collections.Counter()
        areas: collections.Counter[str] = collections.Counter()
        total = 0
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            n = int(count)
            frames = stack.split(";")
            total += n
            for f in set(frames):
                inclusive[f] += n
            own[frames[-1]] += n
            areas[area(frames[-1])] += n
    print(f"{total} samples of the proxy process (2 clients doing point selects, text protocol)")
    print("\nself time by area:")
    for name, n in areas.most_common():
        print(f"  {name:12} {100 * n / total:5.1f}%")
    print(f"\ntop {opts.top} by self time:")
    for frame, n in own.most_common(opts.top):
        print(f"  {100 * n / total:5.1f}%  {frame[:150]}")
    print(f"\ntop {opts.top} by inclusive time (proxy code):")
    shown = 0
    for frame, n in inclusive.most_common():
        if "proxy/" in frame:
            print(f"  {100 * n / total:5.1f}%  {frame[:150]}")
            shown += 1
            if shown == opts.top:
                break


if __name__ == "__main__":
    main()
