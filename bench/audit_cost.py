"""The cost of auditing per statement: three jitproxy processes in front of one MariaDB, audit
mode fail_closed, best_effort and off (file sink), measured in one run with
alternating order, plus a direct connection for reference.

Prints per path: p50/p95 latency of one point select (one PyMySQL connection, text protocol),
its ratio against `off` and against direct, and the proxy's CPU time per statement.

    .venv/bin/python bench/audit_cost.py [--n 2000] [--reps 3]
"""

from __future__ import annotations

import argparse
import json
import random
import ssl
import statistics

import pymysql

from harness import SBTEST_GRANT, SBTEST_SETUP, bench_environment, point_selects

MODES = ("fail_closed", "best_effort", "off")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    opts = ap.parse_args()
    rng = random.Random(11)
    ids = [rng.randint(1, 10000) for _ in range(opts.n)]
    with bench_environment(SBTEST_GRANT, SBTEST_SETUP, audit=False, audit_modes=MODES) as b:
        ctx = ssl.create_default_context(cafile=str(b.tls.ca_cert))
        conns = {"direct": pymysql.connect(host="127.0.0.1", port=b.db.port, user=b.upstream.user,
                                           password=b.upstream.password, database="hr_prod", ssl=ctx)}
        for mode, (_, port) in b.by_mode.items():
            conns[mode] = pymysql.connect(host="127.0.0.1", port=port, user=b.user, password=b.token,
                                          database="hr_prod", ssl=ctx)
        for conn in conns.values():
            point_selects(conn, 300, ids)  # warm-up
        lat: dict[str, list[float]] = {name: [] for name in conns}
        cpu: dict[str, float] = {mode: 0.0 for mode in MODES}
        order = list(conns)
        for rep in range(opts.reps):
            for name in order if rep % 2 == 0 else reversed(order):
                proc = b.by_mode[name][0] if name in b.by_mode else None
                before = b.proc_stat(proc)["cpu_s"] if proc else 0.0
                lat[name] += point_selects(conns[name], opts.n, ids)
                if proc:
                    cpu[name] += b.proc_stat(proc)["cpu_s"] - before
        for conn in conns.values():
            conn.close()
        assert b.audit_dir is not None
        written = {m: sum(1 for _ in (b.audit_dir / f"{m}.jsonl").open()) for m in MODES}
        sample = json.loads((b.audit_dir / "fail_closed.jsonl").read_text().splitlines()[-1])

    statements = opts.reps * opts.n
    d50 = statistics.median(lat["direct"])
    off50 = statistics.median(lat["off"])
    print(f"{opts.reps} x {opts.n} point selects per path, one connection each, PyMySQL over TLS, "
          "file sink (synced before each fail_closed statement, within 1 s otherwise)")
    print(f"{'path':12} {'p50 µs':>8} {'p95 µs':>8} {'/ off':>7} {'/ direct':>9} {'CPU µs/stmt':>12} {'events':>8}")
    for name, xs in lat.items():
        xs.sort()
        p50, p95 = statistics.median(xs), xs[int(len(xs) * 0.95)]
        per = f"{cpu[name] / statements * 1e6:12.0f}" if name in cpu else f"{'':12}"
        events = f"{written[name]:8d}" if name in written else f"{'':8}"
        print(f"{name:12} {p50 * 1e6:8.0f} {p95 * 1e6:8.0f} {p50 / off50:7.2f} {p50 / d50:9.2f} {per} {events}")
    for mode in ("fail_closed", "best_effort"):
        added = (statistics.median(lat[mode]) - off50) * 1e6
        extra_cpu = (cpu[mode] - cpu["off"]) / statements * 1e6
        print(f"audit cost, {mode}: +{added:.0f} µs latency p50, +{extra_cpu:.0f} µs proxy CPU per statement")
    print(f"last fail_closed event: {sample['type']} seq {sample['seq']} ({len(json.dumps(sample))} bytes)")


if __name__ == "__main__":
    main()
