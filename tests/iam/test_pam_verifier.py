"""The Aurora-like IAM harness: the SigV4 verifier on its own, then MariaDB + PAM end to end."""

from __future__ import annotations

import datetime as dt
import json
import os
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pymysql
import pytest

from jitproxy_demo import iam_verify
from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.iam import (
    AwsKey,
    IamAuthError,
    IamAuthSetup,
    install_iam_auth,
    pam_service_text,
)
from jitproxy_demo.iam_verify import check_token
from jitproxy_demo.mariadb import LocalMariaDB
from jitproxy_demo.process import LOOPBACK
from tests.iam.conftest import ALL_KEYS, IAM_USER, KEY_A, KEY_B, KEY_STS, REGION, make_token

PORT = 3306
ACCESS_DENIED = 1045


def config(**changes: Any) -> dict[str, Any]:
    """A verifier config as install_iam_auth writes it, for tokens to 127.0.0.1:3306."""
    base: dict[str, Any] = {
        "host": LOOPBACK,
        "port": PORT,
        "user": IAM_USER,
        "region": REGION,
        "keys": [KEY_A.to_json(), KEY_STS.to_json()],
        "max_age_s": 900,
        "max_future_skew_s": iam_verify.DEFAULT_MAX_FUTURE_SKEW_S,
        "clock_offset_s": 0.0,
        "log_path": "/nonexistent/decisions.jsonl",
    }
    return base | changes


def token(key: AwsKey = KEY_A, **kwargs: Any) -> str:
    return make_token(key, **({"port": PORT} | kwargs))


def signature_of(tok: str) -> str:
    return tok.rsplit("X-Amz-Signature=", 1)[1]


# -- the verifier, in-process -----------------------------------------------------------------


@pytest.mark.parametrize("key", [KEY_A, KEY_STS], ids=["long_term_key", "session_token"])
def test_accepts_boto3_tokens(key: AwsKey) -> None:
    assert check_token(token(key), IAM_USER, config(), time.time()) is None


@pytest.mark.parametrize(
    ("host", "port", "user"),
    [
        ("db.cluster-abc.eu-west-1.rds.amazonaws.com", 3306, IAM_USER),
        ("Db.Cluster-ABC.eu-west-1.rds.amazonaws.com", 443, IAM_USER),  # no :443 in the host header
        (LOOPBACK, 3306, "we!rd user+x@y/é=&"),  # every character percent-encoded as SigV4 wants
    ],
)
def test_canonical_request_matches_botocore(host: str, port: int, user: str) -> None:
    tok = token(KEY_STS, host=host, port=port, user=user)
    assert check_token(tok, user, config(host=host, port=port, user=user), time.time()) is None


@pytest.mark.parametrize(
    ("make", "pam_user", "changes", "reason"),
    [
        (lambda: token(), "someone_else", {}, "wrong_user"),
        (lambda: token(user="someone_else"), IAM_USER, {}, "wrong_user"),
        (lambda: token(region="us-east-1"), IAM_USER, {}, "wrong_region"),
        (lambda: token(host="db.example.com"), IAM_USER, {}, "wrong_host"),
        (lambda: token(port=3307), IAM_USER, {}, "wrong_host"),
        (lambda: token().replace("Action=connect", "Action=connecT"), IAM_USER, {}, "wrong_action"),
        # The signature covers DBUser: another name is not just a wrong user.
        (
            lambda: token().replace(f"DBUser={IAM_USER}", "DBUser=iam_adm"),
            "iam_adm",
            {"user": "iam_adm"},
            "bad_signature",
        ),
        (
            lambda: token(),
            IAM_USER,
            {"keys": [AwsKey(KEY_A.access_key_id, "not-the-secret").to_json()]},
            "bad_signature",
        ),
        (lambda: token(KEY_B), IAM_USER, {}, "unknown_key"),
        (
            lambda: token(KEY_STS),
            IAM_USER,
            {"keys": [AwsKey(KEY_STS.access_key_id, KEY_STS.secret_access_key, "other").to_json()]},
            "bad_session_token",
        ),
        (
            lambda: _drop_param(token(KEY_STS), "X-Amz-Security-Token"),
            IAM_USER,
            {},
            "bad_session_token",
        ),
        (lambda: token(), IAM_USER, {"clock_offset_s": 1000.0}, "expired"),
        (lambda: token(), IAM_USER, {"clock_offset_s": 61.0, "max_age_s": 60}, "expired"),
        (
            lambda: token(at=dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10)),
            IAM_USER,
            {},
            "future_dated",
        ),
        (lambda: token(KEY_STS)[: iam_verify.PAM_EXEC_MAX_TOKEN_CHARS], IAM_USER, {}, "truncated"),
        (lambda: token().replace("X-Amz-Date=", "X-Amz-Date=1"), IAM_USER, {}, "malformed"),
        (lambda: token() + "&Action=connect", IAM_USER, {}, "malformed"),
        (lambda: token().split("&X-Amz-Signature=")[0], IAM_USER, {}, "malformed"),
        (lambda: "hunter2", IAM_USER, {}, "malformed"),
    ],
    ids=[
        "pam_user_differs",
        "token_for_other_user",
        "wrong_region",
        "wrong_host",
        "wrong_port",
        "wrong_action",
        "tampered_dbuser",
        "wrong_secret",
        "unknown_key",
        "other_session_token",
        "session_token_dropped",
        "expired_by_clock_offset",
        "older_than_max_age",
        "future_dated",
        "truncated_by_pam_exec",
        "bad_date",
        "repeated_param",
        "no_signature",
        "not_a_token",
    ],
)
def test_rejects(make: Any, pam_user: str, changes: dict[str, Any], reason: str) -> None:
    assert check_token(make(), pam_user, config(**changes), time.time()) == reason


def test_token_age_limits() -> None:
    signed = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    tok, t0 = token(at=signed), signed.timestamp()
    assert check_token(tok, IAM_USER, config(), t0 + 900) is None
    assert check_token(tok, IAM_USER, config(), t0 + 901) == "expired"
    assert check_token(tok, IAM_USER, config(), t0 - 60) is None  # within the allowed skew
    assert check_token(tok, IAM_USER, config(), t0 - 61) == "future_dated"
    assert check_token(tok, IAM_USER, config(clock_offset_s=-61.0), t0) == "future_dated"


def _drop_param(tok: str, name: str) -> str:
    head, _, query = tok.partition("/?")
    return head + "/?" + "&".join(p for p in query.split("&") if not p.startswith(name + "="))


def run_verifier(cfg_path: Path, stdin: bytes, pam_user: str = IAM_USER) -> int:
    """The verifier as pam_exec runs it: bare environment, token on stdin with a NUL."""
    python, script = sys.executable, iam_verify.__file__
    result = subprocess.run(
        [python, "-I", "-S", script, str(cfg_path)],
        input=stdin,
        env={"PAM_USER": pam_user, "PAM_SERVICE": "jitproxy-iam-unit", "PAM_TYPE": "auth"},
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert result.stdout == b""
    return result.returncode


def test_verifier_script_exit_status_and_log(tmp_path: Path) -> None:
    log = tmp_path / "decisions.jsonl"
    cfg_path = tmp_path / "config.json"
    cfg_path.write_text(json.dumps(config(log_path=str(log))))
    good, sts = token(), token(KEY_STS)

    assert run_verifier(cfg_path, good.encode() + b"\0") == 0
    assert run_verifier(cfg_path, sts.encode()) == 0
    assert run_verifier(cfg_path, good.encode(), pam_user="root") == 1
    assert run_verifier(cfg_path, b"\xff\xfe not ascii") == 1
    assert run_verifier(tmp_path / "missing.json", good.encode()) == 1

    decisions = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(d["ok"], d["reason"], d["user"]) for d in decisions] == [
        (True, "ok", IAM_USER),
        (True, "ok", IAM_USER),
        (False, "wrong_user", "root"),
        (False, "malformed", IAM_USER),
    ]
    assert decisions[0]["key"] == KEY_A.access_key_id
    assert decisions[0]["service"] == "jitproxy-iam-unit"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    _assert_no_secrets(log.read_text(), [good, sts])


def _assert_no_secrets(text: str, tokens: list[str]) -> None:
    for key in ALL_KEYS:
        assert key.secret_access_key not in text
        if key.session_token:
            assert key.session_token not in text
    for tok in tokens:
        assert signature_of(tok) not in text
        assert tok not in text


def test_aws_key_repr_hides_secrets() -> None:
    text = repr(KEY_STS)
    assert KEY_STS.access_key_id in text
    assert KEY_STS.secret_access_key not in text and str(KEY_STS.session_token) not in text


def test_pam_service_text(tmp_path: Path) -> None:
    text = pam_service_text(tmp_path / "c.json")
    auth, account = [line.split() for line in text.splitlines() if not line.startswith("#")]
    assert auth[:5] == ["auth", "required", auth[2], "expose_authtok", "quiet"]
    assert auth[2].endswith("/pam_exec.so")
    assert auth[5:] == [sys.executable, "-I", "-S", iam_verify.__file__, str(tmp_path / "c.json")]
    assert account == ["account", "required", "pam_permit.so"]
    with pytest.raises(IamAuthError, match="whitespace"):
        pam_service_text(tmp_path / "with space.json")


class _NotStarted:
    running = False


class _WithoutAuthPam:
    running = True

    def execute_root(self, sql: str, args: Any = None) -> list[tuple[Any, ...]]:
        return []


def test_install_needs_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(IamAuthError, match="needs root.*/etc/pam.d"):
        install_iam_auth(_NotStarted(), host=LOOPBACK, port=PORT, keys=[KEY_A])  # type: ignore


def test_install_needs_a_running_server_with_auth_pam() -> None:
    with pytest.raises(IamAuthError, match="start the LocalMariaDB"):
        install_iam_auth(_NotStarted(), host=LOOPBACK, port=PORT, keys=[KEY_A])  # type: ignore
    with pytest.raises(IamAuthError, match="IAM_SERVER_ARGS"):
        install_iam_auth(_WithoutAuthPam(), host=LOOPBACK, port=PORT, keys=[KEY_A])  # type: ignore


# -- through MariaDB, auth_pam and pam_exec ---------------------------------------------------


@pytest.fixture(scope="module")
def tls_context(tls_files: TlsFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_files.ca_cert))


def connect(iam: IamAuthSetup, password: str, **kwargs: Any) -> pymysql.Connection:
    return pymysql.connect(
        host=LOOPBACK, port=iam.port, user=iam.user, password=password, connect_timeout=10, **kwargs
    )


def assert_denied(iam: IamAuthSetup, password: str, reason: str, **kwargs: Any) -> None:
    before = len(iam.decisions())
    with pytest.raises(pymysql.err.OperationalError) as denied:
        connect(iam, password, **kwargs).close()
    assert denied.value.args[0] == ACCESS_DENIED
    assert [d["reason"] for d in iam.decisions()[before:]] == [reason]


def test_no_anonymous_accounts_shadow_the_iam_user(iam_mariadb: LocalMariaDB) -> None:
    assert iam_mariadb.execute_root("SELECT Host FROM mysql.global_priv WHERE User = ''") == []


def test_valid_token_logs_in_with_pymysql(iam: IamAuthSetup, tls_context: ssl.SSLContext) -> None:
    before = len(iam.decisions())
    with connect(iam, make_token(KEY_A, port=iam.port), ssl=tls_context) as conn:
        with conn.cursor() as cursor:
            cursor.execute("SELECT CURRENT_USER()")
            assert cursor.fetchone() == (f"{IAM_USER}@%",)
            cursor.execute("SHOW SESSION STATUS LIKE 'Ssl_cipher'")
            assert cursor.fetchone()[1] != ""
            cursor.execute("SELECT COUNT(*) > 0 FROM hr_prod.employee")  # grants_sql applied
            assert cursor.fetchone() == (1,)
    assert [(d["ok"], d["reason"], d["user"]) for d in iam.decisions()[before:]] == [
        (True, "ok", IAM_USER)
    ]


def test_valid_token_logs_in_with_the_mariadb_cli(iam: IamAuthSetup, tls_files: TlsFiles) -> None:
    # The MariaDB client answers mysql_clear_password without --enable-cleartext-plugin
    # (obsolete: it only prints a warning).
    result = subprocess.run(
        [
            "mariadb",
            "--no-defaults",
            f"--host={LOOPBACK}",
            f"--port={iam.port}",
            f"--user={iam.user}",
            f"--ssl-ca={tls_files.ca_cert}",
            "--ssl-verify-server-cert",
            "--batch",
            "--skip-column-names",
            "--execute=SELECT CURRENT_USER()",
        ],
        env={**os.environ, "MYSQL_PWD": make_token(KEY_A, port=iam.port)},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{IAM_USER}@%"


def test_session_token_is_cut_short_by_pam_exec(
    iam: IamAuthSetup, tls_context: ssl.SSLContext
) -> None:
    # A known limit of this harness, not of Aurora: pam_exec passes 511 characters on.
    tok = make_token(KEY_STS, port=iam.port)
    assert len(tok) > iam_verify.PAM_EXEC_MAX_TOKEN_CHARS
    assert_denied(iam, tok, "truncated", ssl=tls_context)


def test_expired_token_is_denied(iam: IamAuthSetup, tls_context: ssl.SSLContext) -> None:
    tok = make_token(KEY_A, port=iam.port)
    iam.set_clock_offset(1000)
    assert_denied(iam, tok, "expired", ssl=tls_context)
    iam.set_clock_offset(0)
    connect(iam, tok, ssl=tls_context).close()


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"region": "us-east-1"}, "wrong_region"),
        ({"user": "someone_else"}, "wrong_user"),
        ({"host": "db.example.com"}, "wrong_host"),
    ],
)
def test_token_for_something_else_is_denied(
    iam: IamAuthSetup, tls_context: ssl.SSLContext, changes: dict[str, str], reason: str
) -> None:
    assert_denied(iam, make_token(KEY_A, port=iam.port, **changes), reason, ssl=tls_context)


def test_key_rotation(iam: IamAuthSetup, tls_context: ssl.SSLContext) -> None:
    old, new = make_token(KEY_A, port=iam.port), make_token(KEY_B, port=iam.port)
    assert_denied(iam, new, "unknown_key", ssl=tls_context)
    iam.set_keys([KEY_B])
    assert_denied(iam, old, "unknown_key", ssl=tls_context)
    connect(iam, new, ssl=tls_context).close()
    assert iam.decisions()[-1]["key"] == KEY_B.access_key_id


def test_connection_without_tls_is_refused(iam: IamAuthSetup) -> None:
    # MariaDB checks REQUIRE SSL only after the plugin accepted the password, so the token has
    # crossed in plaintext by then (Aurora too: a client must never send it without TLS), and
    # the refusal is a plain 1045.
    assert_denied(iam, make_token(KEY_A, port=iam.port), "ok", ssl_disabled=True)


def test_no_secret_reaches_a_log(
    iam: IamAuthSetup, iam_mariadb: LocalMariaDB, tls_context: ssl.SSLContext
) -> None:
    good, sts = make_token(KEY_A, port=iam.port), make_token(KEY_STS, port=iam.port)
    wrong = make_token(KEY_A, port=iam.port, region="us-east-1")
    connect(iam, good, ssl=tls_context).close()
    for tok in (sts, wrong):
        with pytest.raises(pymysql.err.OperationalError):
            connect(iam, tok, ssl=tls_context)
    logs = [iam.log_path, iam_mariadb.error_log_path, iam_mariadb.general_log_path]
    logs += [iam_mariadb.basedir / "mariadbd.out"]
    text = "\n".join(p.read_text(errors="replace") for p in logs if p.exists())
    assert iam.service_name in text  # the decision log is among them
    _assert_no_secrets(text, [good, sts, wrong])


def test_setup_files_and_remove(iam_mariadb: LocalMariaDB, tls_context: ssl.SSLContext) -> None:
    with install_iam_auth(
        iam_mariadb, user="iam_other", host=LOOPBACK, port=iam_mariadb.port, keys=[KEY_B]
    ) as other:
        assert other.service_name.startswith("jitproxy-iam-")
        assert other.pam_path == Path("/etc/pam.d") / other.service_name
        assert stat.S_IMODE(other.config_path.stat().st_mode) == 0o600
        assert other.config_path.parent == iam_mariadb.basedir
        tok = make_token(KEY_B, port=other.port, user="iam_other")
        connect(other, tok, ssl=tls_context).close()
    assert not other.pam_path.exists() and not other.config_path.exists()
    gone = "SELECT 1 FROM mysql.global_priv WHERE User = 'iam_other'"
    assert iam_mariadb.execute_root(gone) == []
    assert [d["user"] for d in other.decisions()] == ["iam_other"]
    other.remove()  # idempotent
    with pytest.raises(IamAuthError, match="removed"):
        other.set_clock_offset(0)

