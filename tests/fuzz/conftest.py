"""Fixtures of the fuzz suite: `mariadb`, `tls_files`, `upstream_credentials` come from
tests/conftest.py; `policies_dir` from the integration suite (a non-root conftest may not use
`pytest_plugins`, so it is imported: pytest registers the fixtures a conftest module holds).

`proxy` is the fuzz suite's own: the integration one, with the admission limits out of the way.
The fuzzers fail thousands of logins and open connections by the hundred from 127.0.0.1, which
would lock the address out (limits.login_failures) and stop every later example from logging
in; the limits are tested elsewhere, the parsers are the subject here."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from proxy.demo.certs import TlsFiles
from proxy.demo.mariadb import Credentials, LocalMariaDB
from proxy.testing import RunningProxy
from tests.integration.conftest import assert_no_secrets, local_proxy_config, policies_dir  # noqa: F401

# The helpers assert too (the oracle, the audit model): show their failures as pytest shows a
# test's. Registered before the test modules import them.
pytest.register_assert_rewrite("tests.fuzz.oracle", "tests.fuzz.prepared_model", "tests.fuzz.wire_client",
                               "tests.fuzz.garbage")

UNLIMITED = 1_000_000
FUZZ_LIMITS = {
    "max_handshakes": 1000,
    "max_handshakes_per_address": 1000,
    "max_connections_per_address": 1000,
    "max_connections_per_user": 1000,
    "login_failures": {"free": UNLIMITED, "lockout_after": UNLIMITED, "backoff_base_s": 0},
}


@pytest.fixture(scope="session")
def proxy(
    tmp_path_factory: pytest.TempPathFactory,
    mariadb: LocalMariaDB,
    tls_files: TlsFiles,
    upstream_credentials: Credentials,
    policies_dir: Path,  # noqa: F811 - the imported fixture, used by name
) -> Iterator[RunningProxy]:
    cfg = local_proxy_config(tmp_path_factory.mktemp("fuzz-proxy"), mariadb, tls_files, upstream_credentials,
                             policies_dir, extra={"limits": FUZZ_LIMITS})
    running = RunningProxy(cfg)
    yield running
    running.stop()
    assert_no_secrets(running, upstream_credentials.password)
