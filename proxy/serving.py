"""Running a proxy process: logging, the event loop, `serve` (start, signals, stop). Used by the
`jitproxy serve` command (cli.py), the demo (jitproxy_demo/run.py) and the benchmarks."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import structlog

from proxy.config import Config

LISTENING: dict[str, int] = {}  # the bound port once `serve` listens (port 0 picks one)


def configure_logging(level: str = "info", fmt: str = "console") -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
    logging.getLogger("mysql_mimic").setLevel(logging.WARNING)  # it logs SQL text at DEBUG
    # StreamReaderProtocol over TLS warns on every client EOF ("returning true from
    # eof_received() has no effect when using ssl"): harmless, and noise for operators.
    logging.getLogger("asyncio").addFilter(lambda r: "eof_received()" not in r.getMessage())
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


async def serve(cfg: Config, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None,
                reuse_port: bool = False) -> None:
    from proxy.server import ProxyServer
    from proxy.wiring import build_context

    if hasattr(signal, "SIGHUP"):  # until the server can reload: a SIGHUP during start is ignored
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
    ctx = build_context(cfg)
    server = ProxyServer(cfg, ctx, reuse_port=reuse_port)
    await server.start()
    assert server.port is not None
    LISTENING["port"] = server.port
    if server.api is not None:
        LISTENING["api_port"] = server.api.port
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    # Every signal whose default is to end the process either stops it cleanly (sessions drained,
    # statements killed upstream, the audit trail flushed and sealed) or is ignored; SIGHUP reloads
    # the config and the policies and never stops the proxy.
    handlers = {"SIGINT": stop.set, "SIGTERM": stop.set, "SIGQUIT": stop.set, "SIGHUP": server.reload,
                "SIGUSR1": _ignored("SIGUSR1"), "SIGUSR2": _ignored("SIGUSR2"), "SIGALRM": _ignored("SIGALRM")}
    for name, handler in handlers.items():
        sig = getattr(signal, name, None)
        if sig is None:
            continue
        try:
            loop.add_signal_handler(sig, handler)
        except (NotImplementedError, RuntimeError):
            pass
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await server.stop()


def _ignored(name: str):
    def handler() -> None:
        structlog.get_logger("jitproxy").info("signal ignored", signal=name)
    return handler


def run(coro) -> None:
    """uvloop when installed (the `fast` extra: less CPU per statement; bench/sysbench.py
    --asyncio-loop measures the difference), unless
    JITPROXY_EVENT_LOOP=asyncio asks for the standard library's loop."""
    if os.environ.get("JITPROXY_EVENT_LOOP", "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(coro)
            return
    asyncio.run(coro)


