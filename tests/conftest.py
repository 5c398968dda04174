"""Session-wide fixtures shared by every test.

Sections: the upstream MariaDB (below); proxy fixtures go after it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from jitproxy_demo.certs import TlsFiles, make_ca_and_server_cert
from jitproxy_demo.mariadb import Credentials, LocalMariaDB
from jitproxy_demo.sample import create_proxy_upstream_user, load_sample_data

# -- upstream MariaDB -------------------------------------------------------------------------

UPSTREAM_PASSWORD = "upstream-test-password"


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A CA and a server certificate for localhost / 127.0.0.1."""
    return make_ca_and_server_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def mariadb(
    tmp_path_factory: pytest.TempPathFactory, tls_files: TlsFiles
) -> Iterator[LocalMariaDB]:
    """A private MariaDB with TLS, the general log, the sample data and the proxy's account.

    Shared by the whole session: tests that change data should use their own tables or undo
    what they did (`load_sample_data(mariadb)` restores hr_prod and hr_test).
    """
    with LocalMariaDB(tmp_path_factory.mktemp("mariadb"), tls=tls_files, general_log=True) as db:
        load_sample_data(db)
        create_proxy_upstream_user(db, password=UPSTREAM_PASSWORD)
        yield db


@pytest.fixture(scope="session")
def upstream_credentials(mariadb: LocalMariaDB) -> Credentials:
    """The account the proxy uses upstream: ALL on hr_prod.* and hr_test.*, nothing else."""
    return Credentials("jitproxy", UPSTREAM_PASSWORD)


# -- no secret in any captured output ---------------------------------------------------------

# The IAM tests' AWS secret keys and the parts of an RDS IAM token that are the credential. Every
# test's captured stdout, stderr and log records are searched for them; a test whose output
# holds one fails, whatever it asserted itself.
def _leak_markers() -> tuple[str, ...]:
    from tests.iam.conftest import ALL_KEYS

    secrets = [k.secret_access_key for k in ALL_KEYS] + [k.session_token for k in ALL_KEYS if k.session_token]
    return (*secrets, "X-Amz-Signature=", "X-Amz-Credential=")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if not report.passed:
        return
    for name, content in report.sections:
        leaked = [m for m in _leak_markers() if m in content]
        if leaked:
            report.outcome = "failed"
            report.longrepr = f"a secret or part of an IAM token appeared in '{name}' (markers: {len(leaked)})"
            return


# -- the person's sign-in (proxy.cli_login) ------------------------------------------------------


@pytest.fixture(autouse=True)
def _own_jitproxy_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the sign-in of whoever runs the tests (~/.config/jitproxy)."""
    monkeypatch.setenv("JITPROXY_HOME", str(tmp_path_factory.mktemp("jitproxy-home")))


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """This machine's zone is UTC+05:30 (no DST) for the test."""
    monkeypatch.setenv("TZ", "UTC-05:30")  # POSIX: the offset's sign is inverted
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()
