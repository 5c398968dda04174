"""proxy.cli_login without a proxy: the option files (0600, the [client-jitproxy] group kept
apart from the rest of ~/.my.cnf), the JDBC text (no secret), and the truncated-token hint."""

from __future__ import annotations

import base64
import json
import stat
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from proxy.cli import main
from proxy.cli_login import SESSION_FILE, config_dir, jdbc_text, option_file_text
from proxy.identity.personal_tokens import TokenError, looks_truncated


def _unsigned_jwt(header: dict, claims: dict) -> str:
    """A token-shaped string (not a signed token: nothing here checks it)."""
    part = lambda d: base64.urlsafe_b64encode(json.dumps(d, separators=(",", ":")).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{part(header)}.{part(claims)}.c2ln"


def sign_in_here(token: str = _unsigned_jwt({"alg": "EdDSA"}, {"sub": "carol"})) -> None:
    d = config_dir()
    d.mkdir(parents=True, exist_ok=True)
    end = (datetime.now(timezone.utc) + timedelta(hours=1)).isoformat()
    (d / SESSION_FILE).write_text(json.dumps({"api": "https://127.0.0.1:8443", "ca": "/etc/ca.pem", "token": token,
                                              "user": "carol", "groups": [], "expires_at": end,
                                              "mysql": {"host": "0.0.0.0", "ports": {"default": 3307}}}))


def test_write_mycnf_replaces_only_its_group(tmp_path: Path, capsys) -> None:
    sign_in_here()
    mycnf = tmp_path / "my.cnf"
    mycnf.write_text("[client]\nuser=someone\n\n[client-jitproxy]\npassword=old\n\n[mysqld]\nport=1\n")
    assert main(["connect", "--write-mycnf", "--mycnf", str(mycnf)]) == 0
    text = mycnf.read_text()
    assert "[client]\nuser=someone" in text and "[mysqld]\nport=1" in text and "password=old" not in text
    assert text.count("[client-jitproxy]") == 1 and 'host="127.0.0.1"' in text and "port=3307" in text
    assert stat.S_IMODE(mycnf.stat().st_mode) == 0o600
    assert "eyJ" not in capsys.readouterr().out


def test_print_jdbc_has_no_secret(capsys) -> None:
    sign_in_here()
    assert main(["connect", "--print-jdbc", "--db", "hr_prod"]) == 0
    out = capsys.readouterr().out
    assert "jdbc:mariadb://127.0.0.1:3307/hr_prod?user=carol&sslMode=verify-full&serverSslCert=/etc/ca.pem" in out
    assert "useSsl=true" in out and "jdbc:mysql://" in out and "DBeaver" in out and "eyJ" not in out
    assert "useSsl=true" in jdbc_text(user="u", host="h", port=1, db=None, ca=None)


def test_option_file_and_not_signed_in(capsys) -> None:
    text = option_file_text(user="carol", password="p", host="h", port=1, ca="/ca.pem")
    assert text.startswith("[client]\n") and "ssl-verify-server-cert" in text
    with pytest.raises(SystemExit) as e:
        main(["connect"])
    assert "jitproxy login" in str(e.value)


def test_truncated_tokens_are_told_apart() -> None:
    assert looks_truncated("eyJ" + "a" * 76) and looks_truncated("eyJ" + "a" * 77)
    assert not looks_truncated("eyJ" + "a" * 70) and not looks_truncated("x" * 79)
    e = TokenError("truncated", "m")
    assert repr(e) == "TokenError(code='truncated')"
