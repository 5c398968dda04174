"""`jitproxy demo`: a local MariaDB with sample data, the proxy in front of it, a local OIDC
provider it signs people in with (`jitproxy login`: dev or admin, no password), tokens for
`admin` and `dev`, and the exact commands to connect. Ctrl-C stops everything."""

from __future__ import annotations

import asyncio
import os
import secrets
import shlex
import shutil
import sys
from datetime import timedelta
from pathlib import Path

from jitproxy_demo.certs import make_ca_and_server_cert
from jitproxy_demo.inprocess import write_keys
from jitproxy_demo.mariadb import LocalMariaDB
from jitproxy_demo.oidc_provider import LocalOidcProvider
from jitproxy_demo.process import write_private
from jitproxy_demo.sample import create_proxy_upstream_user, load_sample_data
from proxy.identity.personal_tokens import TokenIssuer

DEMO_POLICY = """\
# The demo's grants. Edit and save: the proxy picks changes up within a second.
grants:
  - subject: user:dev            # dev may read two tables of hr_prod, nothing else
    grant: hr_prod.employee
    privileges: [SELECT]
  - subject: user:dev
    grant: hr_prod.title
    privileges: [SELECT]
  - subject: user:admin          # admin may do anything
    grant: "*.*"
    privileges: ALL
    allow_unbounded_writes: true # UPDATE/DELETE without WHERE (refused by default)

# Just-in-time access: who approves requests, per environment (jitproxy request create ...).
# Which database is in which environment: config.yaml, upstream.environments.
approval_policies:
  - environment: prod            # reading prod: one approval from an owner (admin is one)
    privileges: [SELECT]
    approvals: 1
    approvers: [group:project-owner]
    max_duration: 8h
  - environment: prod            # writing prod: two approvals, one of them a dba
    privileges: [INSERT, UPDATE, DELETE]
    approvals: 2
    approvers: [group:project-owner, group:dba]
    require: [group:dba]
    max_duration: 2h
  - environment: test            # test: approved at once
    privileges: ALL
    auto_approve: true
    max_duration: 1d
"""


DEMO_ENVIRONMENTS = {"hr_prod": "prod", "hr_test": "test"}

# The demo's IdP (jitproxy_demo.oidc_provider): who may sign in with `jitproxy login`, and the
# groups its ID tokens say; the same people and groups as the demo's tokens.
DEMO_GROUPS: dict[str, tuple[str, ...]] = {"admin": ("project-owner", "dba"), "dev": ()}
IDP_CLIENT_ID = "jitproxy"


def start_idp() -> LocalOidcProvider:
    """The demo's IdP on a free loopback port: ID tokens for 8 hours, only dev and admin."""
    users = {user: {"groups": list(groups)} for user, groups in DEMO_GROUPS.items()}
    return LocalOidcProvider(client_id=IDP_CLIENT_ID, users=users, id_token_ttl_s=8 * 3600, interval_s=1,
                             known_users_only=True).start()


IAM_USER = "iam_app"
IAM_REGION = "eu-west-1"
IAM_PROFILE = "jitproxy-demo"


def prepare(directory: Path, port: int, api_port: int = 8443, iam: bool = False,
            idp_issuer: str | None = None) -> tuple[LocalMariaDB, Path]:
    """Start MariaDB (fresh data every run) and write certificates, keys, policies, config and
    tokens into `directory`. Returns the running database and the config path. `idp_issuer`:
    the demo IdP's URL, for the config's `oidc:` (sign-in with `jitproxy login`).

    `iam`: the proxy reaches MariaDB as Aurora's IAM users do (jitproxy_demo.iam): a fresh SigV4
    token per upstream connection, sent with mysql_clear_password inside verified TLS, checked
    by a PAM verifier. The demo's AWS keys are random and local (a shared-credentials profile
    in `directory`); no AWS is reached."""
    directory.mkdir(parents=True, exist_ok=True)
    tls = make_ca_and_server_cert(directory / "tls")
    shutil.copyfile(tls.ca_cert, directory / "ca.pem")
    shutil.rmtree(directory / "mariadb", ignore_errors=True)
    if iam:
        from jitproxy_demo.iam import IAM_SERVER_ARGS

        db = LocalMariaDB(directory / "mariadb", tls=tls, extra_args=IAM_SERVER_ARGS)
    else:
        db = LocalMariaDB(directory / "mariadb", tls=tls)
    db.start()
    try:
        load_sample_data(db)
        if iam:
            upstream = _iam_upstream(directory, db)
        else:
            upstream_password = secrets.token_urlsafe(24)
            create_proxy_upstream_user(db, password=upstream_password)
            write_private(directory / "upstream.password", upstream_password + "\n")
            upstream = {"host": "127.0.0.1", "port": db.port, "user": "jitproxy", "password_file": "upstream.password",
                        "tls": {"ca_file": "tls/ca.pem"}}
        private, public = write_keys(directory / "keys")
        policies = directory / "policies"
        policies.mkdir(exist_ok=True)
        (policies / "demo.yaml").write_text(DEMO_POLICY, encoding="utf-8")
        raw = {
            "listen": {
                "host": "127.0.0.1",
                "port": port,
                "tls": {"cert_file": "tls/server-cert.pem", "key_file": "tls/server-key.pem"},
            },
            "identity": {
                "issuers": [{"issuer": "jitproxy", "audience": "jitproxy", "public_key_file": "keys/token-signing.pub"}],
                "signing": {"private_key_file": "keys/token-signing.key"},
            },
            # One environment model (proxy/environments.py): statements, requests, approvals and
            # the audit mode (fail_closed for prod) all read the database's environment here.
            "upstream": {**upstream, "environments": DEMO_ENVIRONMENTS},
            "policies": {"dirs": ["policies"]},
            "store": {"path": "state/jitproxy.db"},
            "api": {"port": api_port, "admin_groups": ["dba"], "auditor_groups": ["auditor"]},
            "audit": {"sinks": [{"type": "file", "path": "audit.jsonl"}]},
            "log": {"level": "info", "format": "console"},
        }
        if idp_issuer is not None:
            raw["oidc"] = {"issuer": idp_issuer, "client_id": IDP_CLIENT_ID}
        import yaml

        config_path = directory / "config.yaml"
        config_path.write_text(
            "# Written by `jitproxy demo`. See config.example.yaml for every key.\n" + yaml.safe_dump(raw, sort_keys=False),
            encoding="utf-8",
        )
        issuer = TokenIssuer(private.read_bytes(), issuer="jitproxy", audience="jitproxy", max_ttl=timedelta(hours=12))
        # admin owns the project and is a dba (approves requests, grants and revokes); dev is not.
        for user in ("admin", "dev"):
            token = issuer.issue(user, DEMO_GROUPS[user], ttl=timedelta(hours=8))
            write_private(directory / f"{user}.token", token + "\n")
        del public
    except BaseException:
        db.stop()
        raise
    return db, config_path


def _iam_upstream(directory: Path, db: LocalMariaDB) -> dict:
    """The IAM verifier on `db`, demo AWS keys in a shared-credentials profile, and the
    upstream section that uses them."""
    from jitproxy_demo.iam import AwsKey, install_iam_auth
    from jitproxy_demo.sample import SAMPLE_DATABASES

    key = AwsKey("AKIA" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30))
    install_iam_auth(db, user=IAM_USER, region=IAM_REGION, host="127.0.0.1", port=db.port, keys=[key],
                     grants_sql=[f"GRANT ALL PRIVILEGES ON `{name}`.* TO '{IAM_USER}'@'%'" for name in SAMPLE_DATABASES])
    write_private(directory / "aws-credentials",
                  f"[{IAM_PROFILE}]\naws_access_key_id = {key.access_key_id}\n"
                  f"aws_secret_access_key = {key.secret_access_key}\n")
    return {"host": "127.0.0.1", "port": db.port, "user": IAM_USER, "auth": "iam",
            "iam": {"region": IAM_REGION, "profile": IAM_PROFILE}, "tls": {"ca_file": "tls/ca.pem"}}


def run_demo(directory: Path, port: int, api_port: int = 8443, iam: bool = False) -> int:
    from proxy.serving import configure_logging, serve

    directory = directory.resolve()
    configure_logging("info", "console")
    print(f"jitproxy demo: starting MariaDB and writing files in {directory} ...", flush=True)
    if iam:
        # boto3's default chain reads this file: the same path as a profile on an EC2 host.
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(directory / "aws-credentials")
        os.environ.pop("AWS_ACCESS_KEY_ID", None)
        os.environ.pop("AWS_SECRET_ACCESS_KEY", None)
    idp = start_idp()
    try:
        db, config_path = prepare(directory, port, api_port, iam=iam, idp_issuer=idp.issuer)
    except BaseException:
        idp.stop()
        raise
    try:
        from proxy.config import load_config

        cfg = load_config(config_path)

        async def main() -> None:
            ready = asyncio.Event()
            task = asyncio.create_task(serve(cfg, ready=ready))
            waiter = asyncio.create_task(ready.wait())
            await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
            if task.done():
                waiter.cancel()
                await task  # raises what went wrong
                return
            from proxy.serving import LISTENING

            actual = LISTENING.get("port", port)
            _print_ready(directory, actual, LISTENING.get("api_port", cfg.api.port), iam, idp.issuer)
            await task

        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    finally:
        db.stop()
        idp.stop()
        print("jitproxy demo: stopped", flush=True)
    return 0


def _print_ready(directory: Path, port: int, api_port: int, iam: bool = False, idp: str | None = None) -> None:
    """What to paste, in a fresh shell, exactly as printed: every path absolute, jitproxy found
    through the PATH line, the API and its CA set, tokens read from their files (never printed)."""
    upstream = (f"MariaDB as {IAM_USER} with a fresh AWS RDS IAM token per connection (PAM-verified, TLS only)"
                if iam else "MariaDB as jitproxy with a password")
    ca, config = shlex.quote(str(directory / "ca.pem")), shlex.quote(str(directory / "config.yaml"))
    export = f"export {_path_setting()}JITPROXY_API=https://127.0.0.1:{api_port} JITPROXY_CA={ca}"
    lines = [f"jitproxy demo ready on 127.0.0.1:{port} (upstream: {upstream})", ""]
    if idp is not None:
        lines += [
            f"Sign in with SSO and connect (the demo's IdP at {idp}): paste these lines into a fresh shell:",
            f"  {export}",
            "  jitproxy login                  # open the page it prints, sign in as dev or admin (no password)",
            "  jitproxy connect --db hr_prod   # the mariadb CLI, signed in",
            "then SQL at its prompt: SELECT first_name, dept FROM employee LIMIT 2;",
            "(No browser? While jitproxy login waits: curl -d username=dev '<the page with the code it printed>')",
            "",
        ]
    lines += [
        "Or connect with a token, as dev (may read hr_prod.employee and hr_prod.title only):",
        "  " + _mariadb_command(directory, port, "dev"),
        "",
        "Connect as admin (may do anything):",
        "  " + _mariadb_command(directory, port, "admin"),
        "",
        "Try as dev:  SELECT * FROM employee LIMIT 3;   SELECT * FROM salary;   SHOW TABLES;",
        f"Audit trail: tail -f {shlex.quote(str(directory / 'audit.jsonl'))}",
        "",
        "Just-in-time access: paste these lines, in order, into another shell:",
        f"  {export}",
        f'  jitproxy check --config {config} --user dev --db hr_prod "SELECT * FROM salary"   # why dev is denied',
        f"  REQ=$({_as(directory, 'dev')} jitproxy request create --db hr_prod --table salary "
        "--until \"$(date -d '+1 hour' +%H:%M)\" --reason 'INC-1234 payroll check' --quiet)",
        f'  {_as(directory, "dev")} jitproxy request show "$REQ"      # pending, and until when',
        f'  {_as(directory, "admin")} jitproxy request approve "$REQ"',
        "  # ... dev's next SELECT * FROM salary works, in the same session, until then; and to give it back early:",
        f'  {_as(directory, "dev")} jitproxy request release "$REQ"',
        f"  {_as(directory, 'admin')} jitproxy audit search --table hr_prod.salary --oldest-first",
        "",
        f"Web console: https://127.0.0.1:{api_port}/console/ (its certificate is signed by {ca}: trust that CA in",
        "  your browser, or accept the warning once). \"Sign in with SSO\" asks the demo's IdP who you are",
        "  (type admin or dev); or sign in by pasting a token, printed here by:",
        f"  cat {shlex.quote(str(directory / 'admin.token'))}   # admin: approves, revokes, reads the audit trail",
        f"  cat {shlex.quote(str(directory / 'dev.token'))}     # dev: asks for access, gives it back",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)
    sys.stdout.flush()


def _mariadb_command(directory: Path, port: int, user: str) -> str:
    ca, token = shlex.quote(str(directory / "ca.pem")), shlex.quote(str(directory / f"{user}.token"))
    return (f'mariadb -h 127.0.0.1 -P {port} -u {user} --password="$(cat {token})" '
            f"--ssl-ca={ca} --ssl-verify-server-cert hr_prod")


def _as(directory: Path, user: str) -> str:
    """The token of `user` for one command, read from its file: a token is never printed."""
    return f'JITPROXY_TOKEN="$(cat {shlex.quote(str(directory / f"{user}.token"))})"'


def _path_setting() -> str:
    """`PATH=<dir>:"$PATH" ` for the directory of the jitproxy command (the one beside this
    interpreter first: a virtualenv's bin, which a fresh shell does not have on its PATH)."""
    beside = Path(sys.executable).parent / "jitproxy"
    found = str(beside) if beside.exists() else shutil.which("jitproxy")
    return f'PATH={shlex.quote(str(Path(found).parent))}:"$PATH" ' if found else ""
