"""Where the proxy's time goes: sysbench through `jitproxy serve` while py-spy samples it.

Uses bench/sysbench.py's environment (own MariaDB, TLS, token login, YAML grant, audit to a
file) and runs one sysbench workload against jitproxy while py-spy records. Prints the functions
with the most samples on the stack (inclusive) and on top (self), grouped by area (analysis,
decision, audit, relay, TLS, event loop). Needs sysbench, py-spy (`pip install py-spy`) and
permission to ptrace the proxy (root, or kernel.yama.ptrace_scope=0).

    .venv/bin/python bench/profile.py [--seconds 15] [--threads 16] [--ps auto] [--test oltp_read_only]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from sysbench import environment, run_sysbench

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
    ap.add_argument("--test", default="oltp_point_select")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--ps", default="disable", choices=["disable", "auto"], help="sysbench --db-ps-mode")
    ap.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    ap.add_argument("--save", type=Path, help="also keep py-spy's raw stacks here (one line per stack)")
    opts = ap.parse_args()
    beside = Path(sys.executable).parent / "py-spy"  # installed in this venv, not on PATH
    spy = shutil.which("py-spy") or (str(beside) if beside.exists() else None)
    if spy is None:
        raise SystemExit("py-spy is not installed: pip install py-spy")
    with environment(10_000, 1_000, workers=0) as env, tempfile.TemporaryDirectory() as tmp:
        route = env.routes["jitproxy"]
        assert route.proc is not None
        run_sysbench(env, route, opts.test, 4, opts.ps, 2, 10_000)  # warm-up
        raw = Path(tmp) / "profile.txt"
        spy_proc = subprocess.Popen([spy, "record", "--pid", str(route.proc.pid), "--duration", str(opts.seconds),
                                     "--rate", "250", "--format", "raw", "--output", str(raw),
                                     *(["--native"] if opts.native else ["--nonblocking"])],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        res = run_sysbench(env, route, opts.test, opts.threads, opts.ps, opts.seconds + 2, 10_000)
        _, spy_err = spy_proc.communicate()
        if not raw.exists():
            raise SystemExit(f"py-spy recorded nothing (exit {spy_proc.returncode}): {spy_err.strip()[-2000:]}")
        if opts.save:
            shutil.copyfile(raw, opts.save)
        inclusive: collections.Counter[str] = collections.Counter()
        own: collections.Counter[str] = collections.Counter()
        areas: collections.Counter[str] = collections.Counter()
        total = 0
        for line in raw.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            n = int(count)
            frames = stack.split(";")
            total += n
            for f in set(frames):
                inclusive[f] += n
            own[frames[-1]] += n
            areas[area(frames[-1])] += n
    print(f"{total} samples of the proxy process ({opts.test}, {opts.threads} threads, --db-ps-mode={opts.ps}: "
          f"{res.get('qps', 0):,.0f} QPS{'; ' + res['error'] if 'error' in res else ''})")
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
