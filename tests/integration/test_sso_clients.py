"""After `jitproxy login`, the clients a person actually uses, driven for real (issue 18):

- the `mariadb` CLI's interactive `-p` prompt in a pseudo-terminal: the short session password
  typed there logs in (a token typed there is cut off at 79 characters, and told so); the same
  password stops working once it is revoked (`jitproxy logout`) or the token it stands for ends;
- the JDBC URLs `jitproxy connect --print-jdbc` prints, with the MariaDB Connector/J the suite has
  (Debian's libmariadb-java): they connect with TLS verified (a wrong CA or a certificate for
  another host fails), and a URL that driver cannot read is refused with the option it needs.

The proxy with sign-in and the local IdP are test_sso_login's (one per module)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zipfile
from datetime import timedelta
from pathlib import Path

import pytest

from jitproxy_demo.certs import TlsFiles, make_ca_and_server_cert
from jitproxy_demo.inprocess import RunningProxy, proxy_config
from proxy.cli import main
from proxy.cli_login import jdbc_text
from proxy.protocol import client_hints
from tests.integration import test_sso_login
from tests.integration.test_sso_login import (
    SsoProxy,
    cli_output,
    login,
    password_for_token,
)
from tests.shell import Terminal

DRIVER = Path("/usr/share/java/mariadb-java-client.jar")
SOURCE = Path(__file__).with_name("jdbc") / "UrlCheck.java"
PROMPT = r"MariaDB \[hr_prod\]> "

sso = test_sso_login.sso  # the proxy with sign-in and the local IdP (a fixture: one per module)


def _session_password(capsys) -> str:
    assert main(["password"]) == 0
    password = cli_output(capsys.readouterr().out).strip()
    shaped = re.fullmatch(r"jp_[a-z2-7]{32}", password) is not None
    assert shaped, "jitproxy password printed no session password"  # (never the secret in a failure)
    return password


def _at_the_prompt(port: int, user: str, ca: Path, typed: str) -> Terminal:
    """The mariadb CLI asking for the password at its prompt (`-p`), `typed` at it and Enter."""
    terminal = Terminal(["mariadb", "--no-defaults", "-h127.0.0.1", f"-P{port}", f"-u{user}", "-p",
                         f"--ssl-ca={ca}", "--ssl-verify-server-cert", "hr_prod"])
    terminal.expect("Enter password: ")
    terminal.type(typed + "\n")
    return terminal


def _refused_at_the_prompt(sso: SsoProxy, tls_files: TlsFiles, user: str, typed: str) -> str:
    with _at_the_prompt(sso.running.port, user, tls_files.ca_cert, typed) as terminal:
        error = terminal.expect(r"ERROR 1045 \(28000\)[^\n]*\n").group(0)  # the whole line
        assert terminal.wait() != 0
    return error


def _reasons(sso: SsoProxy, user: str) -> list[str]:
    return [e["reason_code"] for e in sso.running.events if e["type"] == "session.rejected" and e.get("user") == user]


def test_session_password_typed_at_the_mariadb_prompt(sso: SsoProxy, tls_files: TlsFiles, capsys) -> None:
    login(sso, tls_files, "carol", capsys)
    password = _session_password(capsys)

    with _at_the_prompt(sso.running.port, "carol", tls_files.ca_cert, password) as terminal:
        terminal.expect(PROMPT)
        terminal.type("SELECT COUNT(*) AS employees FROM employee;\n")
        assert int(terminal.expect(r"\|\s+(\d+) \|").group(1)) > 0
        terminal.expect(PROMPT)
        terminal.type("SELECT * FROM salary;\n")  # engineering holds employee, not salary
        terminal.expect(r"ERROR 1142 \(42000\)")
        terminal.expect(PROMPT)
        terminal.type("quit\n")
        assert terminal.wait() == 0
    started = [e for e in sso.running.events if e["type"] == "session.start" and e.get("user") == "carol"]
    assert started[-1].get("session_password", "").startswith("sp-")

    # Why the short password: the prompt keeps 79 characters of a ~390-character token.
    token = sso.running.token("carol", ("engineering",))
    hint = _refused_at_the_prompt(sso, tls_files, "carol", token)
    assert "cut off at 79 characters" in hint and "jitproxy password" in hint

    # Revoked (`jitproxy logout` ends the person's session passwords): the same password, refused.
    assert main(["logout"]) == 0
    capsys.readouterr()
    refused = _refused_at_the_prompt(sso, tls_files, "carol", password)  # (a failure shows this, not the password)
    assert "invalid or expired token" in refused
    assert _reasons(sso, "carol")[-1] == "session_password_revoked"


def test_session_password_at_the_prompt_ends_with_its_token(sso: SsoProxy, tls_files: TlsFiles) -> None:
    token = sso.running.token("erin", ("engineering",), ttl=timedelta(minutes=10))
    password = password_for_token(sso, tls_files, token)
    with _at_the_prompt(sso.running.port, "erin", tls_files.ca_cert, password) as terminal:
        terminal.expect(PROMPT)
        terminal.type("quit\n")
        assert terminal.wait() == 0
    sso.running.clock.advance(timedelta(minutes=11))  # past the token's end
    try:
        refused = _refused_at_the_prompt(sso, tls_files, "erin", password)
        assert "invalid or expired token" in refused
    finally:
        sso.running.clock.advance(timedelta(minutes=-11))
    assert _reasons(sso, "erin")[-1] == "expired"


# -- JDBC ----------------------------------------------------------------------------------------


def _driver_major() -> int:
    with zipfile.ZipFile(DRIVER) as jar:
        manifest = jar.read("META-INF/MANIFEST.MF").decode()
    version = re.search(r"^(?:Bundle-Version|Implementation-Version): *(\d+)", manifest, re.MULTILINE)
    assert version, manifest
    return int(version.group(1))


@pytest.fixture(scope="module")
def url_check(tmp_path_factory) -> Path:
    assert shutil.which("javac") and DRIVER.exists(), "scripts/setup.sh installs a JDK and libmariadb-java"
    classes = tmp_path_factory.mktemp("urlcheck")
    subprocess.run(["javac", "-d", str(classes), "-cp", str(DRIVER), str(SOURCE)], check=True, timeout=120)
    return classes


def _jdbc(classes: Path, url: str, password: str, sql: str = "SELECT COUNT(*) FROM employee") -> str:
    """UrlCheck's one line: `result=...` or `error=<code> <message>` (the password in its environment)."""
    done = subprocess.run(["java", "-cp", f"{DRIVER}:{classes}", "UrlCheck", url, sql], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "JDBC_PASSWORD": password})
    lines = [line for line in done.stdout.splitlines() if line.startswith(("result=", "error="))]
    assert lines, done.stdout + done.stderr[-2000:]
    return lines[-1]


def _printed_urls(text: str, scheme: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip().startswith(f"jdbc:{scheme}://")]


def test_printed_jdbc_urls_connect_with_tls_verified(sso: SsoProxy, tls_files: TlsFiles, url_check: Path,
                                                   tmp_path: Path, capsys) -> None:
    login(sso, tls_files, "carol", capsys)
    password = _session_password(capsys)  # what goes in the password field of a dialog
    assert main(["connect", "--db", "hr_prod", "--print-jdbc"]) == 0
    printed = capsys.readouterr().out
    urls = _printed_urls(printed, "mariadb")
    leaked = password in printed
    assert len(urls) == 2 and not leaked
    major = _driver_major()
    for url in urls:
        answer = _jdbc(url_check, url, password)
        if "sslMode=" in url and major < 3:
            # Connector/J 2.x does not know sslMode: it connects without TLS and is told its own option.
            assert answer.startswith("error=3159") and client_hints.MARIADB_J2 in answer, answer
        else:
            assert re.fullmatch(r"result=\d+", answer) and int(answer.split("=")[1]) > 0, (url, answer)
    both = next(url for url in urls if "useSsl=true" in url)
    lines = [line.strip() for line in printed.splitlines()]
    assert "2.x and 3.x" in lines[lines.index(both) - 1]  # the one URL for either driver, said so
    # Verified: the same URL with a CA that did not sign the proxy's certificate fails.
    stranger = make_ca_and_server_cert(tmp_path / "stranger")
    answer = _jdbc(url_check, both.replace(str(tls_files.ca_cert), str(stranger.ca_cert)), password)
    assert answer.startswith("error=") and re.search(r"PKIX|certification path|trust anchor", answer), answer


def test_printed_jdbc_url_checks_the_host_name(mariadb, upstream_credentials, policies_dir, url_check: Path,
                                               tls_files: TlsFiles, tmp_path: Path) -> None:
    """A proxy whose certificate (from the URL's CA) names `localhost` only: the printed URL for
    127.0.0.1 is refused by the driver, the one for localhost connects."""
    only_localhost = make_ca_and_server_cert(tmp_path / "tls", hostnames=("localhost",))
    cfg = proxy_config(tmp_path / "proxy", upstream_host="127.0.0.1", upstream_port=mariadb.port,
                       upstream_user=upstream_credentials.user, upstream_password=upstream_credentials.password,
                       cert_file=only_localhost.server_cert, key_file=only_localhost.server_key,
                       upstream_ca=tls_files.ca_cert, policies_dir=policies_dir)
    running = RunningProxy(cfg)
    try:
        token = running.token("dev")
        answers = {}
        for host in ("127.0.0.1", "localhost"):
            text = jdbc_text(user="dev", host=host, port=running.port, db="hr_prod", ca=str(only_localhost.ca_cert))
            url = next(u for u in _printed_urls(text, "mariadb") if "useSsl=true" in u)
            answers[host] = _jdbc(url_check, url, token)
        assert answers["localhost"].startswith("result="), answers
        assert answers["127.0.0.1"].startswith("error=") and re.search(r"(?i)hostname verification failed",
                                                                        answers["127.0.0.1"]), answers
    finally:
        running.stop()
