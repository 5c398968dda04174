"""1,000,000-row SELECT through jitproxy vs a direct connection, in one run.

Streams `SELECT *` of a sysbench-shaped table with the mariadb CLI (--quick), directly and through
the proxy, alternating. Prints wall times, the ratio against direct, the byte counts (must match)
and the proxy's idle and peak RSS.

    .venv/bin/python bench/large_result.py [--rows 1000000] [--reps 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import time

from harness import bench_environment


def stream(args: list[str], sql: str) -> tuple[float, int]:
    start = time.perf_counter()
    p = subprocess.Popen([*args, "--quick", "--batch", "--skip-column-names", "-e", sql], stdout=subprocess.PIPE)
    assert p.stdout is not None
    total = 0
    while chunk := p.stdout.read(1 << 20):
        total += len(chunk)
    if p.wait() != 0:
        raise SystemExit(f"query failed: rc={p.returncode}")
    return time.perf_counter() - start, total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=3)
    opts = ap.parse_args()
    setup = [
        "CREATE TABLE big (id INT PRIMARY KEY, k INT, c CHAR(120), pad CHAR(60)) SELECT seq AS id, "
        f"seq % 1000 AS k, REPEAT('c', 120) AS c, REPEAT('p', 60) AS pad FROM seq_1_to_{opts.rows}"
    ]
    with bench_environment("  - {subject: user:bench, grant: hr_prod.big, privileges: [SELECT]}\n", setup) as b:
        stream(b.cli(True), "SELECT 1")  # warm-up connection
        idle = b.proc_stat()
        times: dict[str, list[float]] = {"direct": [], "jitproxy": []}
        sizes: dict[str, int] = {}
        for rep in range(opts.reps):
            for name in ("direct", "jitproxy") if rep % 2 == 0 else ("jitproxy", "direct"):
                t, n = stream(b.cli(name == "jitproxy"), "SELECT * FROM hr_prod.big")
                times[name].append(t)
                sizes[name] = n
        end = b.proc_stat()
    d = statistics.median(times["direct"])
    same = "identical" if sizes["direct"] == sizes["jitproxy"] else "DIFFERENT"
    print(f"rows: {opts.rows:,}   bytes: direct {sizes['direct']:,}  jitproxy {sizes['jitproxy']:,}  ({same})")
    print(f"{'path':10} {'median s':>9} {'min s':>7} {'max s':>7} {'ratio':>6}")
    for name, ts in times.items():
        print(f"{name:10} {statistics.median(ts):9.2f} {min(ts):7.2f} {max(ts):7.2f} {statistics.median(ts) / d:6.2f}")
    cpu = (end["cpu_s"] - idle["cpu_s"]) / opts.reps
    print(f"jitproxy: CPU {cpu:.2f} s per query; RSS idle {idle['rss_mb']:.0f} MB, peak {end['peak_mb']:.0f} MB")


if __name__ == "__main__":
    main()
