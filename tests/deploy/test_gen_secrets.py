"""docker/gen-secrets.sh: certificates that verify for the names the deployment uses (with
Python's strict X.509 checks), keys and passwords that fit together, permissions, no overwrite."""

from __future__ import annotations

import ssl
import stat
import subprocess
from datetime import timedelta
from pathlib import Path

import jwt
import pytest

from proxy.identity.personal_tokens import TokenIssuer
from tests.deploy.conftest import DOCKER

CERTS = {"ca.pem", "jitproxy.pem", "mariadb.pem", "token-signing.pub"}
SECRETS = {"ca-key.pem", "jitproxy-key.pem", "mariadb-key.pem", "token-signing.key", "upstream-password",
           "mariadb-root-password", "store-password", "store-dsn"}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_every_file_with_its_permissions(generated: Path) -> None:
    assert {p.name for p in (generated / "certs").iterdir()} == CERTS
    assert {p.name for p in (generated / "secrets").iterdir()} == SECRETS
    assert _mode(generated / "secrets") == 0o700
    assert _mode(generated / "secrets" / "ca-key.pem") == 0o600
    for name in SECRETS - {"ca-key.pem"}:
        assert _mode(generated / "secrets" / name) == 0o644, name  # read by the containers' own users
    for name in CERTS:
        assert _mode(generated / "certs" / name) == 0o644, name


def _handshake(generated: Path, cert: str, key: str, server_name: str) -> None:
    """A real TLS handshake: server with the generated pair, client trusting only the CA."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(generated / "certs" / cert, generated / "secrets" / key)
    client = ssl.create_default_context(cafile=str(generated / "certs" / "ca.pem"))
    client.verify_flags |= ssl.VERIFY_X509_STRICT
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(c_in, c_out, server_hostname=server_name)
    s = server.wrap_bio(s_in, s_out, server_side=True)
    done = [False, False]
    for _ in range(10):
        for i, (side, out, peer_in) in enumerate(((c, c_out, s_in), (s, s_out, c_in))):
            if not done[i]:
                try:
                    side.do_handshake()
                    done[i] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(out.read())
        if all(done):
            return
    raise AssertionError("handshake did not finish")


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "::1", "jitproxy"])
def test_proxy_certificate_verifies_for_its_names(generated: Path, name: str) -> None:
    _handshake(generated, "jitproxy.pem", "jitproxy-key.pem", name)


def test_mariadb_certificate_verifies_for_the_service_name_only(generated: Path) -> None:
    _handshake(generated, "mariadb.pem", "mariadb-key.pem", "mariadb")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(generated, "mariadb.pem", "mariadb-key.pem", "localhost")


def test_token_keys_sign_and_verify(generated: Path) -> None:
    issuer = TokenIssuer((generated / "secrets" / "token-signing.key").read_bytes(), issuer="jitproxy",
                         audience="jitproxy", max_ttl=timedelta(hours=1))
    token = issuer.issue("dev", ("dba",), ttl=timedelta(minutes=5))
    claims = jwt.decode(token, (generated / "certs" / "token-signing.pub").read_text(), algorithms=["EdDSA"],
                        audience="jitproxy", issuer="jitproxy")
    assert claims["sub"] == "dev"


def test_store_dsn_carries_the_store_password(generated: Path) -> None:
    password = (generated / "secrets" / "store-password").read_text().strip()
    dsn = (generated / "secrets" / "store-dsn").read_text().strip()
    assert len(password) == 48 and dsn == f"postgresql://jitproxy:{password}@postgres:5432/jitproxy"
    upstream = (generated / "secrets" / "upstream-password").read_text().strip()
    assert len(upstream) == 48 and upstream != password


def test_keeps_existing_files_unless_forced(tmp_path: Path, generated: Path) -> None:
    out = tmp_path / "out"
    script = str(DOCKER / "gen-secrets.sh")
    subprocess.run(["sh", script, str(out)], check=True, capture_output=True, timeout=60)
    first = (out / "secrets" / "store-password").read_text()
    again = subprocess.run(["sh", script, str(out)], check=True, capture_output=True, text=True, timeout=60)
    assert "keeping them" in again.stdout
    assert (out / "secrets" / "store-password").read_text() == first
    subprocess.run(["sh", script, "--force", str(out)], check=True, capture_output=True, timeout=60)
    assert (out / "secrets" / "store-password").read_text() != first
