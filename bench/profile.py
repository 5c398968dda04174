"""Where the proxy's time goes: sysbench through `jitproxy serve` while py-spy samples it.

Uses bench/sysbench.py's environment (own MariaDB, TLS, token login, YAML grant, audit to a
file) and runs one sysbench workload against jitproxy while py-spy records. Prints the functions
with the most samples on the stack (inclusive) and on top (self), grouped by area (analysis,
decision, audit, relay, TLS, event loop). Needs sysbench, py-spy (`pip install py-spy`) and
permission to ptrace the proxy (root, or kernel.yama.ptrace_scope=0).

    .venv/bin/python bench/profile.py [--seconds 15] [--threads 16] [--ps auto] [--test oltp_read_only]

py-spy samples by wall clock: a line that wakes another process (a socket write) also collects
the time the scheduler then runs that process instead. `--by-library` answers "where does the
CPU go" instead: perf (cpu-clock samples, kernel included) over relay-tls and jitproxy in turn,
each library's share times the process's CPU per query, side by side:

    .venv/bin/python bench/profile.py --by-library [--seconds 8] [--paths relay-tls,jitproxy-noaudit,jitproxy]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from sysbench import cpu_s, environment, run_sysbench

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
    ap.add_argument("--by-library", action="store_true",
                    help="CPU per query by library (perf), relay-tls and jitproxy side by side")
    ap.add_argument("--paths", default="relay-tls,jitproxy",
                    help="--by-library: which paths (of bench/sysbench.py's; jitproxy-noaudit: audit off)")
    opts = ap.parse_args()
    if opts.by_library:
        by_library(opts)
    else:
        stacks(opts)


def by_library(opts: argparse.Namespace) -> None:
    perf = shutil.which("perf")
    if perf is None:
        raise SystemExit("perf is not installed (Debian: linux-perf)")
    shares: dict[str, dict[str, float]] = {}
    per_query: dict[str, float] = {}
    paths = opts.paths.split(",")
    with (environment(10_000, 1_000, workers=0, audit_off="jitproxy-noaudit" in paths) as env,
          tempfile.TemporaryDirectory() as tmp):
        for name in paths:
            route = env.routes[name]
            assert route.proc is not None
            run_sysbench(env, route, opts.test, 4, opts.ps, 2, 10_000)  # warm-up
            data = Path(tmp) / f"{name}.perf"
            rec = subprocess.Popen([perf, "record", "-e", "cpu-clock", "-F", "2000", "-o", str(data),
                                    "-p", str(route.proc.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True)
            before = cpu_s([route.proc.pid])
            res = run_sysbench(env, route, opts.test, opts.threads, opts.ps, opts.seconds, 10_000)
            spent = cpu_s([route.proc.pid]) - before
            rec.send_signal(signal.SIGINT)
            _, err = rec.communicate()
            if "qps" not in res or not data.exists():
                raise SystemExit(f"{name}: no measurement ({res.get('error')}; perf: {err.strip()[-500:]})")
            per_query[name] = spent / (res["qps"] * opts.seconds) * 1e6
            report = subprocess.run([perf, "report", "-i", str(data), "--sort", "dso", "--stdio"],
                                    capture_output=True, text=True, check=True).stdout
            shares[name] = {}
            for line in report.splitlines():
                parts = line.split()
                if len(parts) == 2 and parts[0].endswith("%") and not line.startswith("#"):
                    shares[name][_library(parts[1])] = shares[name].get(_library(parts[1]), 0) + float(parts[0][:-1])
    names = list(per_query)
    print(f"CPU per query by library ({opts.test}, {opts.threads} threads, --db-ps-mode={opts.ps}; "
          "perf cpu-clock share x the process's CPU time per query)")
    width = max(16, *(len(n) + 7 for n in names))
    print(f"{'library':28}" + "".join(f"{n + ' µs/q':>{width}}" for n in names))
    libraries = sorted({lib for n in names for lib in shares[n]}, key=lambda lib: -shares[names[-1]].get(lib, 0))
    for lib in libraries:
        values = [shares[n].get(lib, 0) / 100 * per_query[n] for n in names]
        if max(values) >= 0.1:
            print(f"{lib[:28]:28}" + "".join(f"{v:{width}.1f}" for v in values))
    print(f"{'total':28}" + "".join(f"{per_query[n]:{width}.1f}" for n in names))


def _library(dso: str) -> str:
    """perf's DSO name, shortened: libpython3.11.so.1.0 -> libpython3.11, loop.cpython-311-... -> loop."""
    name = dso.strip("[]")
    return name.split(".cpython-")[0].split(".so")[0]


def stacks(opts: argparse.Namespace) -> None:
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
