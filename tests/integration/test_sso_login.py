"""Sign in with SSO, end to end on real components: a local OIDC provider on loopback
(proxy.demo.oidc_provider), the proxy in front of the test MariaDB, its admin API with the
sign-in routes (proxy.api.oidc), the `jitproxy` CLI (login, whoami, connect, password, logout),
PyMySQL and the mariadb CLI.

The proxy is wired as proxy/server.py will wire it (`enable_sign_in(cfg, ctx)`, then
`create_app(..., sign_in=...)`; see proxy.api.oidc): the sign-in API is started here on the
proxy's loop next to the proxy's own."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pymysql
import pytest

from proxy.api.app import create_app
from proxy.api.oidc import SignIn, enable_sign_in
from proxy.cli import main
from proxy.cli_login import SESSION_FILE, config_dir
from proxy.demo.certs import TlsFiles
from proxy.demo.oidc_provider import LocalOidcProvider
from proxy.workflow.runtime import ApiServer
from tests.integration.conftest import assert_no_secrets, client_ssl, local_proxy_config
from proxy.testing import RunningProxy

POLICY = """
grants:
  - subject: group:engineering
    grant: hr_prod.employee
    privileges: [SELECT]
  - subject: group:dba
    grant: hr_prod.salary
    privileges: [SELECT]
"""


_PROXY_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


def cli_output(out: str) -> str:
    """What the CLI printed: the in-process proxy logs to the same stdout from its own thread (a
    line such as "... [info] store grants refreshed" may land in the middle)."""
    return "".join(line for line in out.splitlines(keepends=True) if not _PROXY_LOG_LINE.match(line))


class SsoProxy:
    def __init__(self, running: RunningProxy, sign_in: SignIn, api: ApiServer, idp: LocalOidcProvider) -> None:
        self.running, self.sign_in, self.api, self.idp = running, sign_in, api, idp
        self.url = f"https://127.0.0.1:{api.port}"


@pytest.fixture(scope="module")
def sso(tmp_path_factory, mariadb, tls_files: TlsFiles, upstream_credentials) -> Iterator[SsoProxy]:
    idp = LocalOidcProvider(users={"carol": {"groups": ["engineering"]}}, interval_s=1).start()
    policies = tmp_path_factory.mktemp("sso-policies")
    (policies / "sso.yaml").write_text(POLICY)
    cfg = local_proxy_config(tmp_path_factory.mktemp("sso-proxy"), mariadb, tls_files, upstream_credentials, policies,
                             extra={"oidc": {"issuer": idp.issuer, "client_id": "jitproxy",
                                             "group_map": {"DB Admins": "dba"}}})
    running = RunningProxy(cfg)
    # the wiring proxy/server.py is to do (proxy.api.oidc.enable_sign_in's docstring)
    sign_in = enable_sign_in(cfg, running.ctx)
    sign_in.ports.update(running.server.ports)
    app = create_app(running.ctx.workflow, running.ctx.verifier, access=running.ctx.grants.held_by, sign_in=sign_in)
    api = ApiServer(app, "127.0.0.1", 0, str(tls_files.server_cert), str(tls_files.server_key))
    running.call(api.start())
    yield SsoProxy(running, sign_in, api, idp)
    running.call(api.stop())
    running.stop()
    idp.stop()
    assert_no_secrets(running, upstream_credentials.password)


def approve_when_asked(idp: LocalOidcProvider, user: str, capsys) -> threading.Thread:
    """The person at the IdP: approves the code `jitproxy login` printed, once it is printed."""
    def approve() -> None:
        for _ in range(200):
            with idp._lock:  # the provider's pending codes: the one `login` asked for
                codes = [d.user_code for d in idp._devices.values() if d.user is None and not d.denied]
            if codes:
                httpx.post(f"{idp.issuer}/activate", data={"user_code": codes[0], "username": user})
                return
            time.sleep(0.05)

    t = threading.Thread(target=approve, daemon=True)
    t.start()
    return t


def login(sso: SsoProxy, tls_files: TlsFiles, user: str, capsys) -> str:
    t = approve_when_asked(sso.idp, user, capsys)
    assert main(["login", "--api", sso.url, "--ca", str(tls_files.ca_cert)]) == 0
    t.join()
    out, err = capsys.readouterr()
    assert "enter the code" in err and f"{sso.idp.issuer}/activate" in err
    return out


def stored_token() -> str:
    import json

    return json.loads((config_dir() / SESSION_FILE).read_text())["token"]


def test_login_connect_whoami_end_to_end(sso: SsoProxy, tls_files: TlsFiles, capsys) -> None:
    out = login(sso, tls_files, "carol", capsys)
    assert out.startswith("signed in as carol (groups: engineering) until ")
    session_file = config_dir() / SESSION_FILE
    assert stat.S_IMODE(session_file.stat().st_mode) == 0o600
    token = stored_token()
    assert token not in out

    # whoami, with the stored token and API (no JITPROXY_* set)
    assert main(["whoami"]) == 0
    out = cli_output(capsys.readouterr().out)
    assert out.startswith(f"carol (groups: engineering; admin: no) at {sso.url}\ntoken until ")

    # connect --print-jdbc: no secret in it, the proxy's port and CA
    assert main(["connect", "--db", "hr_prod", "--print-jdbc"]) == 0
    jdbc = capsys.readouterr().out
    port = sso.running.port
    assert f"jdbc:mariadb://127.0.0.1:{port}/hr_prod?user=carol&sslMode=verify-full&serverSslCert=" in jdbc
    assert f"jdbc:mariadb://127.0.0.1:{port}/hr_prod?user=carol&useSsl=true&serverSslCert=" in jdbc
    assert f"jdbc:mysql://127.0.0.1:{port}/hr_prod?user=carol&sslMode=VERIFY_IDENTITY" in jdbc
    assert token not in jdbc

    # connect: the real mariadb CLI, the token only in a 0600 option file that is gone afterwards
    before = set(config_dir().iterdir())
    code = subprocess.run(
        [*_jitproxy(), "connect", "--db", "hr_prod", "--", "--batch", "-e", "SELECT COUNT(*) FROM employee"],
        capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert code.returncode == 0, code.stderr
    header, count = code.stdout.split()
    assert header == "COUNT(*)" and int(count) > 0
    assert set(config_dir().iterdir()) == before

    # SQL through the proxy with the issued token: engineering may read employee, not salary
    conn = pymysql.connect(host="127.0.0.1", port=port, user="carol", password=token, ssl=client_ssl(tls_files),
                           database="hr_prod")
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM employee")
        assert cur.fetchone()[0] > 0
        with pytest.raises(pymysql.MySQLError):
            cur.execute("SELECT COUNT(*) FROM salary")
    conn.close()
    events = sso.running.events
    assert any(e["type"] == "identity.signed_in" and e["user"] == "carol" and e["flow"] == "device" for e in events)


def test_groups_from_the_idp_change_between_logins(sso: SsoProxy, tls_files: TlsFiles, capsys) -> None:
    sso.idp.users["dora"] = {"groups": ["engineering"]}
    login(sso, tls_files, "dora", capsys)
    first = stored_token()
    sso.idp.users["dora"] = {"groups": ["DB Admins"]}  # mapped to dba
    assert login(sso, tls_files, "dora", capsys).startswith("signed in as dora (groups: dba)")
    second = stored_token()
    for token, allowed in ((first, "employee"), (second, "salary")):
        conn = pymysql.connect(host="127.0.0.1", port=sso.running.port, user="dora", password=token,
                               ssl=client_ssl(tls_files), database="hr_prod")
        with conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {allowed}")
            denied = "salary" if allowed == "employee" else "employee"
            with pytest.raises(pymysql.MySQLError):
                cur.execute(f"SELECT COUNT(*) FROM {denied}")
        conn.close()


def connect(sso: SsoProxy, tls_files: TlsFiles, user: str, password: str) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=sso.running.port, user=user, password=password,
                           ssl=client_ssl(tls_files), database="hr_prod")


def test_short_session_password_works_until_revoked(sso: SsoProxy, tls_files: TlsFiles, capsys) -> None:
    login(sso, tls_files, "carol", capsys)
    assert main(["password"]) == 0
    out, err = capsys.readouterr()
    password = cli_output(out).strip()
    assert password.startswith("jp_") and len(password) == 35 and "session password for carol" in err
    conn = connect(sso, tls_files, "carol", password)
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM employee")
        assert cur.fetchone()[0] > 0
    conn.close()
    # not somebody else's, not as an API bearer token
    with pytest.raises(pymysql.MySQLError) as e:
        connect(sso, tls_files, "dora", password)
    assert e.value.args[0] == 1045
    assert httpx.get(f"{sso.url}/v1/whoami", headers={"Authorization": f"Bearer {password}"},
                     verify=client_ssl(tls_files)).status_code == 401
    events = sso.running.events
    issued = [e for e in events if e["type"] == "session_password.issued" and e["user"] == "carol"]
    assert issued
    started = [e for e in events if e["type"] == "session.start" and e.get("session_password") == issued[-1]["password_id"]]
    assert started, "the password's use is audited with its id"
    # logout revokes it: the next login with it fails
    assert main(["logout"]) == 0
    assert "signed out" in capsys.readouterr().out
    with pytest.raises(pymysql.MySQLError) as e:
        connect(sso, tls_files, "carol", password)
    assert e.value.args[0] == 1045
    assert any(e["type"] == "session_password.revoked" for e in sso.running.events)
    assert not (config_dir() / SESSION_FILE).exists()
    assert password not in str(sso.running.events)


def test_session_password_ends_with_its_token(sso: SsoProxy, tls_files: TlsFiles, capsys) -> None:
    token = sso.running.token("erin", ("engineering",), ttl=timedelta(minutes=10))
    answer = httpx.post(f"{sso.url}/v1/session-passwords", json={}, verify=client_ssl(tls_files),
                        headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 201
    password = answer.json()["password"]
    connect(sso, tls_files, "erin", password).close()
    sso.running.clock.advance(timedelta(minutes=11))
    try:
        with pytest.raises(pymysql.MySQLError) as e:
            connect(sso, tls_files, "erin", password)
        assert e.value.args[0] == 1045
    finally:
        sso.running.clock.advance(timedelta(minutes=-11))
    rejected = [e["reason_code"] for e in sso.running.events if e["type"] == "session.rejected"]
    assert "expired" in rejected


def test_a_cut_off_token_gets_a_hint(sso: SsoProxy, tls_files: TlsFiles) -> None:
    token = sso.running.token("carol", ("engineering",))
    for cut in (token[:79], token[:80]):
        with pytest.raises(pymysql.MySQLError) as e:
            connect(sso, tls_files, "carol", cut)
        assert e.value.args[0] == 1045
        assert f"cut off at {len(cut)} characters" in e.value.args[1] and "jitproxy password" in e.value.args[1]
    assert [e["reason_code"] for e in sso.running.events if e["type"] == "session.rejected"][-2:] == ["truncated"] * 2
    with pytest.raises(pymysql.MySQLError) as e:  # any other bad token: the generic answer
        connect(sso, tls_files, "carol", token[:120])
    assert "invalid or expired token" in e.value.args[1]


def _jitproxy() -> list[str]:
    exe = Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "jitproxy"
    return [str(exe)] if exe.exists() else [str(Path(".venv/bin/jitproxy").resolve())]
