"""Real client → jitproxy → MariaDB checking RDS IAM tokens (PAM verifier, TLS only): the same
wire path as Aurora's IAM users. Tokens are made by boto3 inside the proxy, one per new upstream
connection; every failure gives the documented error; no token or secret leaks anywhere."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pymysql
import pytest
import yaml
from botocore.credentials import RefreshableCredentials

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.iam import AwsKey, IamAuthSetup
from jitproxy_demo.inprocess import RunningProxy, proxy_config
from jitproxy_demo.mariadb import LocalMariaDB
from proxy.config import UpstreamConfig
from proxy.identity.personal_tokens import TokenIssuer
from proxy.upstream.instance import upstream_connector
from proxy.upstream.connection import ClientProfile, UpstreamError
from tests.iam.conftest import IAM_USER, KEY_A, KEY_B, REGION
from tests.no_tls_server import server_without_tls

POLICY = """
grants:
  - {subject: user:dev, grant: hr_prod.employee, privileges: [SELECT]}
"""
SECRETS = (KEY_A.secret_access_key, KEY_B.secret_access_key)
# Parts of a token that must never be shown: its query (all of it is the credential).
TOKEN_MARKERS = ("X-Amz-Signature", "X-Amz-Credential", "Action=connect")


class RotatingKeys:
    """boto3 sessions whose credentials refresh on every use (as an instance profile's or an
    assumed role's do near their expiry): `current` can be swapped mid-run."""

    def __init__(self, key: AwsKey) -> None:
        self.current = key
        self.refreshes = 0

    def _fetch(self) -> dict[str, Any]:
        self.refreshes += 1
        return {
            "access_key": self.current.access_key_id,
            "secret_key": self.current.secret_access_key,
            "token": None,
            "expiry_time": (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat(),  # < 10 min: refresh always
        }

    def __call__(self, profile_name: str | None = None, region_name: str | None = None) -> boto3.session.Session:
        core = botocore.session.Session()
        core._credentials = RefreshableCredentials.create_from_metadata(self._fetch(), self._fetch, "rotating-test")
        return boto3.session.Session(botocore_session=core, region_name=region_name)


def _iam_config(directory: Path, db: LocalMariaDB, tls_files: TlsFiles, region: str = REGION, **upstream: Any):
    policies = directory / "policies"
    policies.mkdir(parents=True, exist_ok=True)
    (policies / "grants.yaml").write_text(POLICY)
    return proxy_config(
        directory,
        upstream_host="127.0.0.1",
        upstream_port=db.port,
        upstream_user=IAM_USER,
        upstream_password="unused",
        cert_file=tls_files.server_cert,
        key_file=tls_files.server_key,
        upstream_ca=tls_files.ca_cert,
        policies_dir=policies,
        upstream={"auth": "iam", "password": None, "iam": {"region": region, "account_id": "123456789012"},
                  "pool": {"max_idle": 0}, **upstream},  # no idle pool: every session opens anew
    )


@pytest.fixture(scope="module")
def keys() -> RotatingKeys:
    return RotatingKeys(KEY_A)


@pytest.fixture(scope="module")
def iam_proxy(tmp_path_factory, iam_mariadb, iam_setup, tls_files, keys) -> Iterator[RunningProxy]:
    running = RunningProxy(_iam_config(tmp_path_factory.mktemp("iam-proxy"), iam_mariadb, tls_files),
                           aws_session_factory=keys)
    yield running
    running.stop()
    dump = json.dumps(running.events, default=str)
    assert not any(s in dump for s in (*SECRETS, *TOKEN_MARKERS))


@pytest.fixture
def fresh(iam: IamAuthSetup, keys: RotatingKeys) -> IamAuthSetup:
    keys.current = KEY_A
    iam.set_keys([KEY_A])
    return iam


def _client(proxy: RunningProxy, tls: TlsFiles, user: str = "dev") -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=proxy.port, user=user, password=proxy.token(user),
                           ssl=ssl.create_default_context(cafile=str(tls.ca_cert)), autocommit=True)


def _refused_login(config: Any, keys: RotatingKeys, tls_files: TlsFiles) -> str:
    """Start a proxy with `config`, log in once (refused), stop it: the client's error text."""
    running = RunningProxy(config, aws_session_factory=keys)
    try:
        with pytest.raises(pymysql.MySQLError) as e:
            _client(running, tls_files)
        return e.value.args[1]
    finally:
        running.stop()


def _tokens(proxy: RunningProxy) -> Any:
    return proxy.ctx.pool._connect.tokens


def test_each_new_upstream_connection_gets_a_fresh_token(iam_proxy, fresh, tls_files):
    pool = iam_proxy.ctx.pool
    before, logins, opened = _tokens(iam_proxy).issued, len(fresh.decisions()), pool.opened
    for _ in range(3):
        conn = _client(iam_proxy, tls_files)
        with conn.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM hr_prod.employee")
            assert cur.fetchone()[0] == 300
            cur.execute("SELECT CURRENT_USER()")
            assert cur.fetchone()[0] == f"{IAM_USER}@%"
        conn.close()
    # one per session, and one for the proxy's own read of hr_prod's views (a side connection)
    connections = pool.opened - opened
    assert connections >= 3 and _tokens(iam_proxy).issued - before == connections
    new = fresh.decisions()[logins:]
    assert [d["ok"] for d in new] == [True] * connections


def test_an_expired_token_is_refused_with_an_actionable_error(iam_proxy, fresh, tls_files, capsys):
    fresh.set_clock_offset(1000)  # the database's clock is 1000 s ahead: every token is too old
    with pytest.raises(pymysql.MySQLError) as e:
        _client(iam_proxy, tls_files)
    assert "jitproxy: the database refused the proxy's connection" in e.value.args[1]
    assert fresh.decisions()[-1]["reason"] == "expired"
    log = capsys.readouterr().out
    assert "rds-db:connect on arn:aws:rds-db:eu-west-1:123456789012:dbuser:" in log
    assert "clock" in log and "region" in log
    assert not any(s in log for s in (*SECRETS, *TOKEN_MARKERS))


def test_credentials_rotating_mid_run_are_used_by_new_connections(iam_proxy, fresh, keys, tls_files):
    before = keys.refreshes
    open_session = _client(iam_proxy, tls_files)
    keys.current = KEY_B  # the role's credentials rotate...
    fresh.set_keys([KEY_B])  # ...and the old ones stop being valid
    with _client(iam_proxy, tls_files).cursor() as cur:  # a new connection signs with the new key
        cur.execute("SELECT COUNT(*) FROM hr_prod.employee")
    with open_session.cursor() as cur:  # tokens are checked at connect only: open sessions go on
        cur.execute("SELECT COUNT(*) FROM hr_prod.employee")
    open_session.close()
    assert keys.refreshes > before
    assert [d["key"] for d in fresh.decisions()[-1:]] == [KEY_B.access_key_id]


def test_the_old_key_after_rotation_is_refused(iam_proxy, fresh, keys, tls_files):
    fresh.set_keys([KEY_B])  # the verifier moved on, the proxy's credentials did not
    with pytest.raises(pymysql.MySQLError) as e:
        _client(iam_proxy, tls_files)
    assert "refused" in e.value.args[1]
    assert fresh.decisions()[-1]["reason"] == "unknown_key"


@pytest.mark.parametrize("change, reason", [({"region": "eu-west-2"}, "wrong_region"),
                                            ({"user": "someone_else"}, None)])  # no such DB user: PAM never asked
def test_a_wrong_region_or_user_is_refused(tmp_path, iam_mariadb, fresh, tls_files, keys, change, reason):
    region = change.get("region", REGION)
    upstream = {"user": change["user"]} if "user" in change else {}
    logins = len(fresh.decisions())
    message = _refused_login(_iam_config(tmp_path, iam_mariadb, tls_files, region=region, **upstream), keys, tls_files)
    assert "jitproxy: the database refused the proxy's connection" in message
    logged = fresh.decisions()[logins:]
    if reason:
        assert logged[-1]["reason"] == reason
    assert not any(d["ok"] and d["user"] == change.get("user") for d in logged)


def test_no_aws_credentials_is_a_clear_error(tmp_path, iam_mariadb, iam, tls_files, monkeypatch, capsys):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance profile here
    running = RunningProxy(_iam_config(tmp_path, iam_mariadb, tls_files))  # boto3's own default chain
    try:
        with pytest.raises(pymysql.MySQLError) as e:
            _client(running, tls_files)
        assert "jitproxy has no AWS credentials for IAM database authentication" in e.value.args[1]
    finally:
        running.stop()
    assert "AWS_ACCESS_KEY_ID" in capsys.readouterr().out  # the operator is told where keys come from


def test_a_server_without_tls_never_receives_the_token(tls_files):
    """A man in the middle answering without TLS gets nothing (aiomysql would send it)."""
    received: list[bytes] = []

    async def scenario() -> None:
        server = await server_without_tls(received)
        port = server.sockets[0].getsockname()[1]
        upstream = UpstreamConfig(host="127.0.0.1", port=port, user=IAM_USER, auth="iam", iam={"region": REGION},
                                  tls={"ca_file": tls_files.ca_cert})
        connect = upstream_connector(upstream, RotatingKeys(KEY_A))
        with pytest.raises(UpstreamError) as e:
            await connect(ClientProfile(False, False, True, True))
        assert "TLS required" in e.value.detail
        server.close()
        await server.wait_closed()

    asyncio.run(scenario())
    assert received in ([], [b""]) or all(m.encode() not in r for r in received for m in TOKEN_MARKERS)


def test_serve_process_with_env_credentials_leaks_nothing(tmp_path, iam_mariadb, fresh, tls_files):
    """`jitproxy serve` as operators run it, credentials from the environment (the default
    chain's first link): one good session, one refused; then every byte it printed and its
    audit file are searched for the secret key and any part of a token."""
    cfg_dir = tmp_path / "serve"
    cfg = _iam_config(cfg_dir, iam_mariadb, tls_files)
    raw = json.loads(json.dumps(cfg.model_dump(exclude_none=True),
                                default=lambda o: o.total_seconds() if isinstance(o, timedelta) else str(o)))
    raw["audit"] = {"sinks": [{"type": "stdout"}, {"type": "file", "path": str(cfg_dir / "audit.jsonl")}]}
    raw["log"] = {"level": "debug", "format": "json"}
    raw["listen"]["port"] = 0
    config_path = cfg_dir / "serve.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(AWS_ACCESS_KEY_ID=KEY_A.access_key_id, AWS_SECRET_ACCESS_KEY=KEY_A.secret_access_key,
               AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE=str(tmp_path / "none"),
               AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"))
    proc = subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[2])
    lines: list[str] = []
    try:
        port = None
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if '"listening"' in line:
                port = json.loads(line)["port"]
                break
        assert port, "".join(lines)
        signing = cfg.identity.signing
        tokens = TokenIssuer(signing.private_key_file.read_bytes(), issuer=signing.issuer, audience=signing.audience,
                             max_ttl=timedelta(hours=1))

        def issuer(user: str) -> str:
            return tokens.issue(user, (), ttl=timedelta(minutes=5))

        good = pymysql.connect(host="127.0.0.1", port=port, user="dev", password=issuer("dev"),
                               ssl=ssl.create_default_context(cafile=str(tls_files.ca_cert)))
        with good.cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM hr_prod.employee")
        good.close()
        fresh.set_clock_offset(1000)
        with pytest.raises(pymysql.MySQLError):
            pymysql.connect(host="127.0.0.1", port=port, user="dev", password=issuer("dev"),
                            ssl=ssl.create_default_context(cafile=str(tls_files.ca_cert)))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        lines.append(out)
    printed = "".join(lines) + (cfg_dir / "audit.jsonl").read_text()
    assert '"session.start"' in printed and "IAM authentication for 'iam_app'" in printed
    for secret in (*SECRETS, *TOKEN_MARKERS):
        assert secret not in printed, secret


def test_a_certificate_that_does_not_verify_stops_before_the_token(tmp_path, iam_mariadb, fresh, tls_files, keys):
    """Another CA (a MITM's certificate): the TLS handshake fails, the token is never sent."""
    from jitproxy_demo.certs import make_ca_and_server_cert

    other = make_ca_and_server_cert(tmp_path / "other-ca")
    # This proxy signs with a key of its own: a decision naming it would be its token reaching the
    # server (other proxies of the module may log in meanwhile, with KEY_A).
    own = AwsKey("AKIA" + "JITPROXYTESTMITM", "jitproxy/test/secret/M+0123456789abcdefghij")
    config = _iam_config(tmp_path, iam_mariadb, tls_files, tls={"ca_file": str(other.ca_cert)})
    assert "jitproxy: the database's TLS certificate was not accepted" in _refused_login(
        config, RotatingKeys(own), tls_files)
    assert [d for d in fresh.decisions() if d.get("key") == own.access_key_id] == []
