"""Fixtures of the differential suite: the scratch schema and the equivalent MariaDB account on
the session's MariaDB, the real proxy in front of it with `policy.yaml`, and a report whose
summary lines are printed at the end of every run (pytest_terminal_summary)."""

from __future__ import annotations

import itertools
import shutil
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.inprocess import RunningProxy, proxy_config
from jitproxy_demo.mariadb import LocalMariaDB
from tests.differential import scratch as scratch_schema
from tests.differential.canary import ViaProxy
from tests.differential.harness import Direct, Jit
from tests.differential.scratch import Scratch

_REPORT = pytest.StashKey[list[str]]()


@pytest.fixture(scope="session")
def report(request: pytest.FixtureRequest) -> list[str]:
    """Lines for the terminal summary; tests append their summary lines here."""
    return request.config.stash.setdefault(_REPORT, [])


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ANN001
    lines = config.stash.get(_REPORT, [])
    if lines:
        terminalreporter.write_sep("-", "differential testing against MariaDB")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def scratch(mariadb: LocalMariaDB) -> Iterator[Scratch]:
    prepared = scratch_schema.create(mariadb)
    yield prepared
    scratch_schema.drop(mariadb)


@pytest.fixture(scope="session")
def jit(scratch: Scratch) -> Jit:
    return Jit(scratch.grants, scratch.person.user, scratch.table_columns, scratch.view_definitions)


@pytest.fixture(scope="session")
def direct(scratch: Scratch) -> Direct:
    return Direct(scratch.mariadb, scratch.person, scratch.nobody, scratch.upstream)


@pytest.fixture(scope="session")
def diff_proxy(
    tmp_path_factory: pytest.TempPathFactory, scratch: Scratch, tls_files: TlsFiles
) -> Iterator[RunningProxy]:
    """The real proxy with policy.yaml, upstream as `diffproxy` (ALL on diff_*)."""
    policies = tmp_path_factory.mktemp("differential-policies")
    shutil.copy(scratch_schema.POLICY_PATH, policies / "differential.yaml")
    cfg = proxy_config(
        tmp_path_factory.mktemp("differential-proxy"),
        upstream_host="127.0.0.1",
        upstream_port=scratch.mariadb.port,
        upstream_user=scratch.upstream.user,
        upstream_password=scratch.upstream.password,
        cert_file=tls_files.server_cert,
        key_file=tls_files.server_key,
        upstream_ca=tls_files.ca_cert,
        policies_dir=Path(policies),
    )
    running = RunningProxy(cfg)
    yield running
    running.stop()


@pytest.fixture
def via_proxy(diff_proxy: RunningProxy, tls_files: TlsFiles, scratch: Scratch) -> Iterator[ViaProxy]:
    tls = ssl.create_default_context(cafile=str(tls_files.ca_cert))
    session = ViaProxy(diff_proxy.port, scratch.person.user, diff_proxy.token(scratch.person.user), tls)
    yield session
    session.close()


class Markers:
    """Unique comments that tag statements sent through the proxy, so the general log can prove
    which of them reached MariaDB."""

    def __init__(self) -> None:
        self.run = uuid.uuid4().hex[:8]
        self._n = itertools.count()

    def next(self) -> str:
        return f"dtx{self.run}n{next(self._n):06d}x"

    def tag(self, sql: str) -> tuple[str, str]:
        m = self.next()
        return m, f"/*{m}*/ {sql}"


@pytest.fixture(scope="session")
def markers() -> Markers:
    return Markers()
