"""Signals to `jitproxy serve` as operators send them: SIGHUP reloads the config and the policies
(an invalid file keeps what runs and says why) and never stops the proxy; SIGTERM drains."""

from __future__ import annotations

import signal
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pymysql
import pytest
import yaml

from proxy.config import load_config
from proxy.identity.personal_tokens import TokenIssuer
from tests.helpers import eventually
from tests.integration.conftest import client_ssl
from tests.integration.test_workers import ROOT, _config


def _serve(config: Path, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "proxy.cli", "serve", "--config", str(config)],
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT)


def _issuer(config: Path) -> TokenIssuer:
    cfg = load_config(config)
    assert cfg.identity.signing is not None
    return TokenIssuer(cfg.identity.signing.private_key_file.read_bytes(), issuer=cfg.identity.signing.issuer,
                       audience=cfg.identity.signing.audience, max_ttl=cfg.identity.max_token_ttl)


def _connect(port: int, issuer: TokenIssuer, tls_files) -> pymysql.Connection:
    return pymysql.connect(host="127.0.0.1", port=port, user="w", password=issuer.issue("w", (), ttl=timedelta(hours=1)),
                           database="hr_prod", ssl=client_ssl(tls_files), autocommit=True, connect_timeout=5)


def _up(port: int, issuer: TokenIssuer, tls_files) -> bool:
    try:
        _connect(port, issuer, tls_files).close()
        return True
    except pymysql.MySQLError:
        return False


def test_sighup_reloads_config_and_policies_and_never_exits(tmp_path, mariadb, tls_files, upstream_credentials):
    config = _config(tmp_path, mariadb, tls_files, upstream_credentials)
    raw = yaml.safe_load(config.read_text())
    port = raw["listen"]["port"]
    issuer = _issuer(config)
    log = tmp_path / "serve.log"
    proc = _serve(config, log)
    try:
        assert eventually(lambda: _up(port, issuer, tls_files), timeout_s=30), log.read_text()
        session = _connect(port, issuer, tls_files)

        # a valid change: one connection per person from now on
        raw["limits"] = {"max_connections_per_user": 1}
        config.write_text(yaml.safe_dump(raw))
        proc.send_signal(signal.SIGHUP)
        assert eventually(lambda: "config reloaded" in log.read_text()), log.read_text()
        with pytest.raises(pymysql.err.OperationalError) as refused:
            _connect(port, issuer, tls_files)
        assert refused.value.args[0] == 1203
        with session.cursor() as cur:  # the open session was never touched
            cur.execute("SELECT COUNT(*) FROM title")
            assert cur.fetchone()[0] > 0

        # an invalid file: the running config stays, the reason is logged, the process lives
        config.write_text("listen: [this is not a mapping\n")
        proc.send_signal(signal.SIGHUP)
        assert eventually(lambda: "config reload failed" in log.read_text()), log.read_text()
        assert proc.poll() is None
        with pytest.raises(pymysql.err.OperationalError) as still:
            _connect(port, issuer, tls_files)
        assert still.value.args[0] == 1203  # the last good config is the one in effect

        # policies: a grant taken away and a SIGHUP bite on the open session's next statement
        raw["limits"] = {"max_connections_per_user": 5}
        config.write_text(yaml.safe_dump(raw))
        (Path(raw["policies"]["dirs"][0]) / "grants.yaml").write_text("grants: []\n")
        proc.send_signal(signal.SIGHUP)
        assert eventually(lambda: log.read_text().count("config reloaded") >= 2), log.read_text()
        with session.cursor() as cur:
            with pytest.raises(pymysql.err.OperationalError) as denied:
                cur.execute("SELECT COUNT(*) FROM title")
            assert denied.value.args[0] == 1142
        session.close()
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    assert code == 0, log.read_text()
