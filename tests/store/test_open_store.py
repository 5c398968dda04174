"""`open_store` picks the backend from the URL, migrates it, and echoes no secret on errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from proxy.store import open_store
from proxy.store.postgres import PostgresStore
from proxy.store.sqlite import SQLiteStore
from tests.store.conftest import run_sql


def test_a_relative_sqlite_path_is_under_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///state.db")
    try:
        assert isinstance(store, SQLiteStore)
        assert store.revision() == 0  # migrated
    finally:
        store.close()
    assert (tmp_path / "state.db").is_file()


def test_an_absolute_sqlite_path_has_four_slashes_and_is_in_wal_mode(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'abs.db'}"
    assert url.startswith("sqlite:////")
    open_store(url).close()
    assert (tmp_path / "abs.db").is_file()
    assert run_sql(url, "PRAGMA journal_mode") == [("wal",)]


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_a_postgresql_url_opens_a_migrated_postgres_store(postgres_dsn: str, scheme: str) -> None:
    store = open_store(postgres_dsn.replace("postgresql://", f"{scheme}://", 1))
    try:
        assert isinstance(store, PostgresStore)
        assert store.revision() == 0
    finally:
        store.close()


@pytest.mark.parametrize(
    "url",
    ["mysql://admin:hunter2@db/state", "sqlite://hunter2.db", "sqlite:///", "hunter2", ""],
)
def test_other_urls_are_refused_without_echoing_them(url: str) -> None:
    with pytest.raises(ValueError) as caught:
        open_store(url)
    assert "hunter2" not in str(caught.value)
