"""The `jitproxy` command."""

from __future__ import annotations

import argparse
import contextlib
import asyncio
import logging
import os
import signal
import sys
from typing import Any
from datetime import datetime, timezone
from pathlib import Path

import structlog

from proxy.authz.model import Principal
from proxy.authz.policy import PolicyError
from proxy.cli_api import add_commands as add_api_commands
from proxy.config import Config, ConfigError, load_config
from proxy.timespec import parse_duration

DEFAULT_CONFIG = os.environ.get("JITPROXY_CONFIG", "config.yaml")
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


def _load(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config))


# -- serve ---------------------------------------------------------------------------------


async def serve(cfg: Config, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None,
                reuse_port: bool = False) -> None:
    from proxy.server import ProxyServer, build_context

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


def _run(coro) -> None:
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


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _load(args)
    configure_logging(cfg.log.level, cfg.log.format)
    if args.worker is not None:  # one of `--workers N`'s processes
        _run(serve(cfg, reuse_port=True))
        return 0
    if args.workers > 1:
        from proxy.workers import check_config_for_workers, supervise

        check_config_for_workers(cfg)
        return supervise(cfg, args.workers, [sys.executable, "-m", "proxy.cli", "serve", "--config", str(cfg.source)])
    _run(serve(cfg))
    return 0


# -- tokens --------------------------------------------------------------------------------


def cmd_token_issue(args: argparse.Namespace) -> int:
    from proxy.identity.tokens import TokenIssuer

    cfg = _load(args)
    signing = cfg.identity.signing
    if signing is None:
        raise SystemExit(f"{cfg.source}: identity.signing is not set: this proxy cannot issue tokens")
    issuer = TokenIssuer(
        signing.private_key_file.read_bytes(),
        issuer=signing.issuer,
        audience=signing.audience,
        max_ttl=cfg.identity.max_token_ttl,
    )
    ttl = parse_duration(args.ttl, "--ttl") if args.ttl else signing.default_ttl
    print(issuer.issue(args.user, args.group or (), ttl=ttl))
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    from proxy.identity.tokens import generate_ed25519_keypair

    generate_ed25519_keypair(args.private, args.public)
    print(f"wrote {args.private} (keep secret) and {args.public}")
    return 0


# -- check ---------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    from proxy.authz.analyze import analyze  # the SQL parser: only for commands that use it
    from proxy.authz.decide import decide
    from proxy.server import PolicyStore

    cfg = _load(args)
    names = [u.name for u in cfg.instances]
    if args.instance is None and len(names) > 1:
        raise SystemExit(f"jitproxy: name the instance with --instance (one of {', '.join(names)})")
    if args.instance is not None and args.instance not in names:
        raise SystemExit(f"jitproxy: no instance {args.instance!r} (configured: {', '.join(names)})")
    instance = args.instance or names[0]
    grants = PolicyStore(cfg.policies.dirs)().for_instance(instance)
    principal = Principal(user=args.user, groups=tuple(args.group or ()))
    analysis = analyze(args.sql, args.db)
    now = datetime.now(timezone.utc)
    decision = decide(analysis, principal, grants, now)
    masked = None
    if decision.masks:
        print("masked:     " + ", ".join(f"{t}.{c} ({m.value})" for t, c, m in decision.masks))
        masked, decision = _masked_text(args, analysis, decision)
    print(f"decision:   {'ALLOW' if decision.allowed else 'DENY'}")
    print(f"statement:  {analysis.statement_class} ({analysis.kind.value})")
    if analysis.requirements:
        print("requires:   " + "; ".join(str(r) for r in sorted(analysis.requirements)))
    if analysis.database_access:
        print("databases:  " + ", ".join(sorted(analysis.database_access)))
    if decision.allowed:
        for g in decision.used_grants:
            until = g.expires_at.isoformat() if g.expires_at else "no expiry"
            print(f"granted by: {g.subject} {g.db}.{g.table} ({until}) in {g.source}")
        if decision.max_rows is not None:
            print(f"max rows:   {decision.max_rows} (a longer result is cut with error 1104)")
        if masked is not None:
            print(f"forwarded:  {masked}")
        if analysis.metadata_tables:
            from proxy.authz.decide import visibility
            from proxy.authz.metadata import MetadataError, restrict_metadata

            tables = ", ".join(f"information_schema.{t}" for t in sorted(analysis.metadata_tables))
            print(f"metadata:   {tables} restricted to granted objects")
            try:
                rewritten, _ = restrict_metadata(args.sql, args.db, visibility(principal, grants, now))
                print(f"forwarded:  {rewritten}")
            except MetadataError as e:
                print(f"DENY at run time: {e}")
                return 1
    else:
        print(f"reason:     {decision.code.value if decision.code else '?'}: {decision.reason}")
        if decision.missing:
            print("missing:    " + "; ".join(str(r) for r in decision.missing))
        from proxy.server import request_hint

        hint = request_hint(args.user, decision, instance if len(names) > 1 else None)
        if hint:
            print(hint)
    return 0 if decision.allowed else 1


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Check the hash chains of audit JSON lines (files in the order written, or - for stdin), and
    that each chain ends with a seal. Exit 0: intact (every chain sealed; with --allow-open, or
    ending unsealed); 1: broken (edited, deleted, reordered events...); 3: no break, but a chain
    ends without a seal (cut, or its proxy crashed or still runs). A segment that ends unsealed
    before a new one of the same proxy_instance (a crash and a restart) is a warning only."""
    import json

    from proxy.audit.chain import verify

    torn: list[str] = []

    def events():
        for name in args.files:
            handle = sys.stdin if name == "-" else open(name, encoding="utf-8")
            with handle if name != "-" else contextlib.nullcontext(handle):
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError:
                        # A line cut mid-write by a crash (the next proxy ends it before writing):
                        # a warning; the events it held still show as a gap in seq.
                        if not line.rstrip().endswith("}"):
                            torn.append(f"{name}:{number}")
                            continue
                        yield {"proxy_instance": f"{name}:{number}", "event_id": None}

    report = verify(events())
    for p in [*report.problems, *report.warnings]:
        where = f"seq {p.seq}" if p.seq is not None else "?"
        print(f"{p.kind.upper():12} {p.proxy_instance} {where} event {p.event_id or '?'}: {p.detail}")
    for where in torn:
        print(f"{'TORN':12} {where}: an incomplete line (a write cut short by a crash): not counted")
    for name in sorted(report.segments):
        print(report.chain_status(name))
    counts = f"{report.events} events in {len(report.segments)} chain(s)"
    if report.warnings:
        counts += f"; {len(report.warnings)} crashed segment(s) (warning)"
    open_chains = len(report.open)
    if not report.ok:
        print(f"BROKEN: {len(report.problems)} problem(s); {counts}")
        return 1
    if not report.events:
        print("EMPTY: no events (cut to nothing, or a proxy that has written none yet: --allow-open accepts that)")
        return 0 if args.allow_open else 3
    if open_chains and not args.allow_open:
        print(f"OPEN: {open_chains} chain(s) end without a seal: truncated, or the proxy crashed or is still "
              f"running (--allow-open to verify a running proxy's file); {counts}")
        return 3
    if open_chains:
        print(f"OK: {counts}; {open_chains} open (accepted with --allow-open: a running proxy's file)")
    else:
        print(f"OK: {counts}, all sealed")
    return 0


def _masked_text(args: argparse.Namespace, analysis: Any, decision: Any) -> Any:
    """The decision with masks applied: the text that would be forwarded, or the denial."""
    from proxy.authz.analyze import analyze
    from proxy.authz.masking import Masker, MaskingError, by_table, mask_select
    from proxy.authz.model import Decision, DenyCode

    try:
        # No upstream here: a * over a masked table is expanded at run time from the live schema.
        text = mask_select(args.sql, args.db, analysis, by_table(decision.masks), {}, analyze, Masker("<salt>"))
        return text, decision
    except MaskingError as e:
        if "are not known" in str(e):
            return "the * expanded from the live schema, masked columns masked", decision
        return None, Decision(False, analysis, DenyCode.MASKED_COLUMN, str(e), used_grants=decision.used_grants)


def cmd_config_check(args: argparse.Namespace) -> int:
    from proxy.server import PolicyStore

    cfg = _load(args)
    grants = PolicyStore(cfg.policies.dirs)()
    print(f"{cfg.source}: OK ({len(grants.grants)} grants from {len(cfg.policies.dirs)} policy dir(s))")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from proxy.demo.run import run_demo

    return run_demo(Path(args.dir), args.port, args.api_port, iam=args.iam)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jitproxy", description="Just-in-time access gateway for MySQL")
    p.add_argument("--version", action="version", version=f"jitproxy {_version()}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", "-c", default=DEFAULT_CONFIG, help="config file (default: $JITPROXY_CONFIG or config.yaml)")
        return sp

    s = with_config(sub.add_parser("serve", help="run the proxy"))
    s.add_argument("--workers", type=int, default=1,
                   help="processes sharing the listening ports (SO_REUSEPORT); one Python process uses one core")
    s.add_argument("--worker", type=int, help=argparse.SUPPRESS)  # set by --workers for its children
    s.set_defaults(func=cmd_serve)

    tok = sub.add_parser("token", help="personal tokens").add_subparsers(dest="token_command", required=True)
    s = with_config(tok.add_parser("issue", help="print a signed token for a person"))
    s.add_argument("--user", required=True)
    s.add_argument("--group", action="append")
    s.add_argument("--ttl", help="lifetime, e.g. 8h (default: identity.signing.default_ttl)")
    s.set_defaults(func=cmd_token_issue)

    s = sub.add_parser("keygen", help="write a new Ed25519 token-signing key pair")
    s.add_argument("--private", required=True)
    s.add_argument("--public", required=True)
    s.set_defaults(func=cmd_keygen)

    s = with_config(sub.add_parser("check", help="decide a statement for a person without running it"))
    s.add_argument("--user", required=True)
    s.add_argument("--group", action="append")
    s.add_argument("--db", help="current database")
    s.add_argument("--instance", help="the upstream instance (required when the config has several)")
    s.add_argument("sql")
    s.set_defaults(func=cmd_check)

    audit = add_api_commands(sub)
    s = audit.add_parser("verify", help="check the hash chains of audit JSON lines: exit 1 on any break, 3 when a "
                                        "chain ends without a seal (truncated or crashed)")
    s.add_argument("files", nargs="+", help="audit files in the order written (rotated ones first), or - for stdin")
    s.add_argument("--allow-open", action="store_true",
                   help="accept chains that end without a seal: the file of a proxy still running")
    s.set_defaults(func=cmd_audit_verify)

    cf = sub.add_parser("config", help="configuration").add_subparsers(dest="config_command", required=True)
    s = with_config(cf.add_parser("check", help="validate the config and policies"))
    s.set_defaults(func=cmd_config_check)

    s = sub.add_parser("demo", help="local MariaDB with sample data + the proxy + tokens")
    s.add_argument("--dir", default="demo")
    s.add_argument("--port", type=int, default=3307)
    s.add_argument("--api-port", type=int, default=8443, help="the admin API (jitproxy request ...)")
    s.add_argument("--iam", action="store_true",
                   help="reach MariaDB as Aurora IAM users do: a fresh SigV4 token per connection, checked by PAM "
                        "(needs root: it writes a PAM service in /etc/pam.d)")
    s.set_defaults(func=cmd_demo)
    return p


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("jitproxy")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's own flush at exit
        return code
    except BrokenPipeError:
        # `jitproxy ... | head -1`: the reader has all it wanted. Later writes (and the flush at
        # exit) go to /dev/null so Python prints no traceback; 141 is the shell's SIGPIPE status.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except ConfigError as e:
        print(f"jitproxy: configuration error:\n{e}", file=sys.stderr)
        return 2
    except PolicyError as e:
        print(f"jitproxy: policy error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
