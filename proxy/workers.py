"""`jitproxy serve --workers N`: one Python process runs on one core, so N processes serve the
same ports (SO_REUSEPORT: the kernel spreads new connections over them). They share nothing
but the state store (grants, requests; SQLite in WAL mode or PostgreSQL), exactly like
replicas. Each has its own upstream pool and its own audit chain (`proxy_instance` host:pid).

The supervisor (this module) starts them, restarts one that dies (with backoff, so a worker
that cannot start does not spin), and stops them all on SIGTERM/SIGINT: each finishes its
in-flight statements (`ProxyServer.stop`)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import structlog

from proxy.config import Config, ConfigError

log = structlog.get_logger("jitproxy.workers")


def check_config_for_workers(cfg: Config) -> None:
    """Ports must be fixed (port 0 would give each worker a port of its own) and audit files
    must not rotate themselves (N processes would each rotate the same file)."""
    problems = []
    for u in cfg.instances:
        if cfg.port_of(u) == 0:
            problems.append(f"instance {u.name!r} listens on port 0: give it a fixed port")
    if cfg.api.enabled and cfg.api.port == 0:
        problems.append("api.port is 0: give it a fixed port")
    for sink in cfg.audit.sinks:
        if sink.type == "file" and sink.max_bytes:
            problems.append(f"audit file {sink.path} rotates itself (max_bytes): with workers, rotate it with "
                            "logrotate (copytruncate) and set max_bytes: 0")
    if problems:
        raise ConfigError("serve --workers: " + "; ".join(problems))


def supervise(cfg: Config, workers: int, command: list[str]) -> int:
    procs: dict[int, subprocess.Popen[bytes]] = {}
    started: dict[int, float] = {}
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    def reload(signum: int, _frame: object) -> None:
        """SIGHUP: each worker reloads its config and policies (the supervisor holds none)."""
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)

    def start(index: int) -> None:
        procs[index] = subprocess.Popen([*command, "--worker", str(index)], env={**os.environ, "JITPROXY_WORKER": str(index)})
        started[index] = time.monotonic()
        log.info("worker started", worker=index, pid=procs[index].pid)

    for index in range(workers):
        start(index)
    backoff = dict.fromkeys(procs, 1.0)
    while True:
        if stopping:
            for proc in procs.values():
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            log.info("workers stopped", workers=workers)
            return 0
        for index, proc in list(procs.items()):
            code = proc.poll()
            if code is None or stopping:
                continue
            ran = time.monotonic() - started[index]
            backoff[index] = 1.0 if ran > 60 else min(backoff[index] * 2, 30.0)
            log.error("worker exited; restarting", worker=index, code=code, ran_s=round(ran, 1), delay_s=backoff[index])
            time.sleep(backoff[index])
            if not stopping:
                start(index)
        time.sleep(0.2)
