"""The `jitproxy` command."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
from typing import Any
from datetime import datetime, timezone
from pathlib import Path

from proxy.authz.model import Principal
from proxy.authz.policy import PolicyError
from proxy.cli_api import add_client_arguments, add_commands as add_api_commands
from proxy.cli_login import add_commands as add_login_commands
from proxy.config import Config, ConfigError, load_config
from proxy.serving import configure_logging, run, serve
from proxy.timespec import parse_duration

DEFAULT_CONFIG = os.environ.get("JITPROXY_CONFIG", "config.yaml")


def _load(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config))


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _load(args)
    configure_logging(cfg.log.level, cfg.log.format)
    if args.worker is not None:  # one of `--workers N`'s processes
        run(serve(cfg, reuse_port=True))
        return 0
    if args.workers > 1:
        from proxy.workers import check_config_for_workers, supervise

        check_config_for_workers(cfg)
        return supervise(cfg, args.workers, [sys.executable, "-m", "proxy.cli", "serve", "--config", str(cfg.source)])
    run(serve(cfg))
    return 0


# -- tokens --------------------------------------------------------------------------------


def cmd_token_issue(args: argparse.Namespace) -> int:
    from proxy.identity.personal_tokens import TokenIssuer

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
    from proxy.identity.personal_tokens import generate_ed25519_keypair

    generate_ed25519_keypair(args.private, args.public)
    print(f"wrote {args.private} (keep secret) and {args.public}")
    return 0


# -- check ---------------------------------------------------------------------------------


def cmd_check(args: argparse.Namespace) -> int:
    """A dry run (proxy.workflow.check): from the config's policy files and state store when
    this machine can read them (--config, or a readable default config), else asked of the
    running proxy (POST /v1/check, with your token: your own statements; admins: anyone's),
    which also reads views as its sessions do. Exit 0: allowed; 1: denied."""
    from proxy.cli_api import check_through_api
    from proxy.workflow.check import lines

    config = _check_config(args)
    report = _check_locally(args, config) if config is not None else check_through_api(args)
    print(json.dumps(report, indent=2) if args.json else "\n".join(lines(report)))
    return 0 if report["decision"] == "allow" else 1


def _check_config(args: argparse.Namespace) -> Path | None:
    """The config a dry run reads: --config; else the default one when it is readable here,
    unless --api asks for the proxy's answer; None: ask the proxy."""
    if args.config is not None:
        return Path(args.config)
    default = Path(DEFAULT_CONFIG)
    return default if args.api is None and os.access(default, os.R_OK) else None


def _check_locally(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    from proxy.authz.analyze import analyze  # the SQL parser: only for commands that use it
    from proxy.cli_api import local_moment
    from proxy.environments import Environments
    from proxy.workflow.policy_files import PolicyFiles
    from proxy.workflow.hints import request_hint
    from proxy.workflow import check
    from proxy.workflow.approvals import request_plan

    cfg = load_config(path)
    names = [u.name for u in cfg.instances]
    if args.instance is None and len(names) > 1:
        raise SystemExit(f"jitproxy: name the instance with --instance (one of {', '.join(names)})")
    if args.instance is not None and args.instance not in names:
        raise SystemExit(f"jitproxy: no instance {args.instance!r} (configured: {', '.join(names)})")
    if not args.user:
        raise SystemExit("jitproxy check: with a config, name the person: --user NAME [--group GROUP ...]")
    instance = args.instance or names[0]
    principal = Principal(user=args.user, groups=tuple(args.group or ()))
    at = local_moment(args.at, "--at") if args.at else datetime.now(timezone.utc)
    policies = PolicyFiles(cfg.policies.dirs)
    grants = check.grants_at(policies(), _stored_grants(cfg, principal), at).for_instance(instance)
    environments = Environments.from_config(cfg)
    analysis = analyze(args.sql, args.db)
    plan_of = functools.partial(request_plan, policies.approvals, environments, instance)
    return check.run(args.sql, args.db, principal, analysis, grants, at, instance=instance,
                     environment=environments.instances[instance].of_statement(analysis, args.db),
                     views=check.VIEWS_NOT_READ,
                     hint=lambda decision: request_hint(args.user, decision, instance if len(names) > 1 else None,
                                                        plan_of))


def _stored_grants(cfg: Config, principal: Principal) -> list[Any]:
    """The state store's grants of the person or their groups (what the proxy adds to the
    policy files); none when the SQLite file does not exist yet (a dry run never makes one)."""
    from proxy.store import StoreError, open_store
    from proxy.workflow.check import stored_for

    if cfg.store.backend == "sqlite" and not cfg.store.path.exists():
        return []
    try:
        store = open_store(cfg.store.url())
    except (ValueError, OSError, StoreError) as e:
        raise SystemExit(f"jitproxy check: cannot read the state store ({e}); without it, approved requests and "
                         "direct grants would be missed. Ask the proxy instead: jitproxy check --api URL ... "
                         "(with your token)") from None
    try:
        return stored_for(store, principal)
    finally:
        store.close()


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Check the hash chains of audit JSON lines (files in the order written, or - for stdin), and
    that each chain ends with a seal. Exit 0: intact (every chain sealed; with --allow-open, or
    ending unsealed); 1: broken (edited, deleted, reordered events...); 3: no break, but a chain
    ends without a seal (cut, or its proxy crashed or still runs). A segment that ends unsealed
    before a new one of the same proxy_instance (a crash and a restart) is a warning only."""
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


def cmd_config_check(args: argparse.Namespace) -> int:
    from proxy.workflow.policy_files import PolicyFiles

    cfg = _load(args)
    policies = PolicyFiles(cfg.policies.dirs)
    grants = policies()
    print(f"{cfg.source}: OK ({len(grants.grants)} grants from {len(cfg.policies.dirs)} policy dir(s))")
    print("\n".join(_environment_map(cfg, {r.environment for r in policies.approvals.rules})))
    return 0


def _environment_map(cfg: Config, approvable: set[str]) -> list[str]:
    """Each instance, its databases' environments (proxy.environments), the audit mode of its
    sessions, and the environments no approval policy names (nothing can be requested there)."""
    from proxy.audit.events import mode_for
    from proxy.environments import Environments

    out = ["environments (instance: database -> environment):"]
    for name, envs in Environments.from_config(cfg).instances.items():
        out.append(f"  {name} (audit mode {mode_for(cfg.audit.mode, envs.possible)}):")
        listed = [(db, env) for db, env in sorted(envs.databases.items())]
        other = "every other database" if listed else "every database"
        for db, env in [*listed, (other, envs.default)]:
            if env is None:
                out.append(f"    {db} -> none declared (nothing can be requested there)")
            else:
                out.append(f"    {db} -> {env}" + ("" if env in approvable else " (no approval policy: nothing can "
                                                                                 "be requested there)"))
    return out


def cmd_demo(args: argparse.Namespace) -> int:
    # The demo lives beside the runtime package (jitproxy_demo/, a source checkout's install) and
    # is imported only here: the proxy itself never needs it, and the image does not carry it.
    try:
        from jitproxy_demo.run import run_demo
    except ModuleNotFoundError as e:
        if e.name != "jitproxy_demo":
            raise
        raise SystemExit("jitproxy demo: the demo is not installed here (no jitproxy_demo package); "
                         "run it from a source checkout: bash scripts/demo.sh") from None
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

    s = add_client_arguments(sub.add_parser(
        "check", help="decide a statement for a person without running it, as the proxy would",
        description="With a config this machine can read: its policy files and state store. Without (or with "
                    "--api): asks the running proxy, with your token (admins may name someone else)."))
    s.add_argument("--config", "-c", help="config file (default: $JITPROXY_CONFIG or config.yaml when readable, "
                                          "else the API is asked)")
    s.add_argument("--user", help="the person (required with a config; through the API: you by default)")
    s.add_argument("--group", action="append", help="their groups (with --user)")
    s.add_argument("--db", help="current database")
    s.add_argument("--instance", help="the upstream instance (required when the config has several)")
    s.add_argument("--at", help="decide at this moment instead of now: 14:50 (the next one), 2026-11-21T18:00 "
                                "(your local zone) or 2026-11-21T18:00:00Z")
    s.add_argument("sql")
    s.set_defaults(func=cmd_check)

    audit = add_api_commands(sub)
    add_login_commands(sub)
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
