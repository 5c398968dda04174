"""Sign in with SSO, end to end on real components: a local OIDC provider on loopback
(jitproxy_demo.oidc_provider), the proxy in front of the test MariaDB, its admin API with the
sign-in routes (proxy.api.oidc), the `jitproxy` CLI (login, whoami, connect, password, logout),
PyMySQL and the mariadb CLI. The proxy wires sign-in itself (proxy/server.py: `enable_sign_in`,
then its admin API with the sign-in routes), as `jitproxy serve` does."""

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

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.inprocess import RunningProxy
from jitproxy_demo.oidc_provider import LocalOidcProvider
from proxy.api.oidc import SignIn
from proxy.cli import main
from proxy.cli_login import SESSION_FILE, config_dir
from tests.helpers import HR_ENVIRONMENTS, run_cli
from tests.integration.conftest import assert_no_secrets, client_ssl, local_proxy_config

POLICY = """
grants:
  - subject: group:engineering
    grant: hr_prod.employee
    privileges: [SELECT]
  - subject: group:dba
    grant: hr_prod.salary
    privileges: [SELECT]
approval_policies:              # reading prod: one approval by a dba (an IdP group, mapped)
  - {environment: prod, privileges: [SELECT], approvals: 1, approvers: ["group:dba"], max_duration: 8h}
"""


_PROXY_LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")


def cli_output(out: str) -> str:
    """What the CLI printed: the in-process proxy logs to the same stdout from its own thread (a
    line such as "... [info] store grants refreshed" may land in the middle)."""
    return "".join(line for line in out.splitlines(keepends=True) if not _PROXY_LOG_LINE.match(line))


class SsoProxy:
    def __init__(self, running: RunningProxy, idp: LocalOidcProvider) -> None:
        self.running, self.idp = running, idp
        assert running.server.api is not None and running.server.sign_in is not None
        self.sign_in: SignIn = running.server.sign_in
        self.url = f"https://127.0.0.1:{running.server.api.port}"


@pytest.fixture(scope="module")
def sso(tmp_path_factory, mariadb, tls_files: TlsFiles, upstream_credentials) -> Iterator[SsoProxy]:
    idp = LocalOidcProvider(users={"carol": {"groups": ["engineering"]}}, interval_s=1).start()
    policies = tmp_path_factory.mktemp("sso-policies")
    (policies / "sso.yaml").write_text(POLICY)
    cfg = local_proxy_config(tmp_path_factory.mktemp("sso-proxy"), mariadb, tls_files, upstream_credentials, policies,
                             extra={"oidc": {"issuer": idp.issuer, "client_id": "jitproxy",
                                             "group_map": {"DB Admins": "dba"}},
                                    "upstream": {"environments": HR_ENVIRONMENTS}})
    running = RunningProxy(cfg)
    yield SsoProxy(running, idp)
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


def count_rows(sso: SsoProxy, tls_files: TlsFiles, user: str, password: str, table: str) -> int:
    """SELECT COUNT(*) of an hr_prod table in a session of its own."""
    conn = connect(sso, tls_files, user, password)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT COUNT(*) FROM {table}")
            return int(cur.fetchone()[0])
    finally:
        conn.close()


def password_for_token(sso: SsoProxy, tls_files: TlsFiles, token: str) -> str:
    """A session password for `token`, asked of the API as `jitproxy password` asks."""
    answer = httpx.post(f"{sso.url}/v1/session-passwords", json={}, verify=client_ssl(tls_files),
                        headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 201
    return answer.json()["password"]


def test_short_session_password_works_until_revoked(sso: SsoProxy, tls_files: TlsFiles, capsys) -> None:
    login(sso, tls_files, "carol", capsys)
    assert main(["password"]) == 0
    out, err = capsys.readouterr()
    password = cli_output(out).strip()
    assert password.startswith("jp_") and len(password) == 35 and "session password for carol" in err
    assert count_rows(sso, tls_files, "carol", password, "employee") > 0
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
    password = password_for_token(sso, tls_files, token)
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


def ask_for_titles(capsys, reason: str) -> str:
    """`jitproxy request create` for reading hr_prod.title, as the signed-in person: its id."""
    code, out, err = run_cli(capsys, "request", "create", "--db", "hr_prod", "--table", "title", "--for", "1h",
                             "--reason", reason, "--quiet")
    request_id = cli_output(out).strip()
    assert code == 0 and re.fullmatch(r"r-[0-9a-f]+", request_id), out + err
    return request_id


def test_idp_groups_decide_who_approves(sso: SsoProxy, tls_files: TlsFiles, capsys) -> None:
    """Approvals with IdP-issued groups, end to end: a request by one signed-in person, refused to
    an approver whose IdP group is not the approvers' (and to the requester), approved by one whose
    IdP group maps to dba; once the IdP drops that group, the same person approves no more."""
    sso.idp.users.update({"frank": {"groups": ["engineering"]}, "grace": {"groups": ["DB Admins"]}})
    login(sso, tls_files, "frank", capsys)
    frank = stored_token()
    request_id = ask_for_titles(capsys, "INC-77 titles")
    code, _, err = run_cli(capsys, "request", "approve", request_id)
    assert code == 1 and "nobody approves or denies their own request" in err
    login(sso, tls_files, "carol", capsys)  # engineering: not an approver of prod reads
    code, _, err = run_cli(capsys, "request", "approve", request_id)
    assert code == 1 and "refused (403)" in err, err
    assert login(sso, tls_files, "grace", capsys).startswith("signed in as grace (groups: dba)")
    code, out, err = run_cli(capsys, "request", "approve", request_id)
    assert code == 0 and f"request {request_id}: approved" in out, err
    assert count_rows(sso, tls_files, "frank", frank, "title") > 0
    approved = [e for e in sso.running.events if e["type"] == "request.approved" and request_id in str(e)]
    assert approved and approved[-1]["user"] == "grace" and "dba" in approved[-1]["groups"], approved

    sso.idp.users["grace"] = {"groups": ["sales"]}  # the IdP took her out of DB Admins
    login(sso, tls_files, "frank", capsys)
    second = ask_for_titles(capsys, "INC-78 titles again")
    assert login(sso, tls_files, "grace", capsys).startswith("signed in as grace (groups: sales)")
    code, _, err = run_cli(capsys, "request", "approve", second)
    assert code == 1 and "refused (403)" in err, err


def test_an_idp_id_token_is_no_password_for_the_proxy(sso: SsoProxy, tls_files: TlsFiles) -> None:
    """The IdP's own ID token names an issuer the proxy does not take tokens from: only jitproxy's
    token (or a session password standing for it) logs in."""
    id_token = sso.idp.id_token("carol", nonce=None)
    with pytest.raises(pymysql.MySQLError) as e:
        connect(sso, tls_files, "carol", id_token)
    assert e.value.args[0] == 1045 and "invalid or expired token" in e.value.args[1]
    rejected = [e for e in sso.running.events if e["type"] == "session.rejected" and e.get("user") == "carol"]
    assert rejected[-1]["reason_code"] == "wrong_issuer", rejected[-1]


def _jitproxy() -> list[str]:
    exe = Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "jitproxy"
    return [str(exe)] if exe.exists() else [str(Path(".venv/bin/jitproxy").resolve())]
