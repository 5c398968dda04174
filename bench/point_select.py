"""Point selects on one connection, direct vs through jitproxy, in one run (PyMySQL, text protocol).

Prints per-statement latency (p50/p95, µs), the ratio against direct, and the proxy's CPU time per
statement (from /proc). One client, so this is added latency, not throughput (sysbench arrives with
the speed issue).

    .venv/bin/python bench/point_select.py [--n 3000] [--reps 3]
"""

from __future__ import annotations

import argparse
import random
import ssl
import statistics

import pymysql

from harness import SBTEST_GRANT, SBTEST_SETUP, bench_environment, point_selects


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3000)
    ap.add_argument("--reps", type=int, default=3)
    opts = ap.parse_args()
    rng = random.Random(7)
    ids = [rng.randint(1, 10000) for _ in range(opts.n)]
    with bench_environment(SBTEST_GRANT, SBTEST_SETUP) as b:
        ctx = ssl.create_default_context(cafile=str(b.tls.ca_cert))
        direct = pymysql.connect(host="127.0.0.1", port=b.db.port, user=b.upstream.user,
                                 password=b.upstream.password, database="hr_prod", ssl=ctx)
        via = pymysql.connect(host="127.0.0.1", port=b.port, user=b.user, password=b.token, database="hr_prod", ssl=ctx)
        point_selects(direct, 300, ids)  # warm-up
        point_selects(via, 300, ids)
        lat: dict[str, list[float]] = {"direct": [], "jitproxy": []}
        cpu = 0.0
        for rep in range(opts.reps):
            for name in ("direct", "jitproxy") if rep % 2 == 0 else ("jitproxy", "direct"):
                before = b.proc_stat()["cpu_s"]
                lat[name] += point_selects(direct if name == "direct" else via, opts.n, ids)
                if name == "jitproxy":
                    cpu += b.proc_stat()["cpu_s"] - before
        direct.close()
        via.close()
    d50 = statistics.median(lat["direct"])
    print(f"{opts.reps} x {opts.n} point selects, one connection, PyMySQL over TLS")
    print(f"{'path':10} {'p50 µs':>8} {'p95 µs':>8} {'p50 ratio':>9}")
    for name, xs in lat.items():
        xs.sort()
        p50, p95 = statistics.median(xs), xs[int(len(xs) * 0.95)]
        print(f"{name:10} {p50 * 1e6:8.0f} {p95 * 1e6:8.0f} {p50 / d50:9.2f}")
    added = (statistics.median(lat["jitproxy"]) - d50) * 1e6
    print(f"added latency p50: {added:.0f} µs; proxy CPU per statement: {cpu / (opts.reps * opts.n) * 1e6:.0f} µs")


if __name__ == "__main__":
    main()
