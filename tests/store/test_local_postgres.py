"""LocalPostgres: a real server on loopback that runs as the postgres user when we are root."""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from jitproxy_demo.postgres import LocalPostgres


def test_the_server_drops_root_and_listens_on_loopback_only(postgres_server: LocalPostgres) -> None:
    pid = int((postgres_server.datadir / "postmaster.pid").read_text().split()[0])
    expected = pwd.getpwnam("postgres").pw_uid if os.geteuid() == 0 else os.geteuid()
    assert os.stat(f"/proc/{pid}").st_uid == expected
    with postgres_server.connect() as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings"
            " WHERE name IN ('listen_addresses', 'fsync', 'unix_socket_directories')"
        ).fetchall())
    assert settings == {
        "listen_addresses": "127.0.0.1",
        "fsync": "off",
        "unix_socket_directories": str(postgres_server.basedir),
    }


@pytest.fixture
def basedir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="jitpg-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_new_server_object_on_the_same_basedir_keeps_data_and_password(basedir: Path) -> None:
    with LocalPostgres(basedir) as first:
        first.create_database("kept")
        password = first.password
    assert not first.running
    with LocalPostgres(basedir) as again:
        assert again.password == password
        with again.connect("kept") as conn:
            assert conn.execute("SELECT current_database()").fetchone() == ("kept",)
