"""Audit search over the file sink (proxy.audit.file_trail): the same events written by one
emitter to a store sink and a file sink answer every search of test_search_api.py the same,
through the real API; rotated files, torn lines and an unreadable file; the 404 is kept for a
proxy with neither sink; and the export formats (proxy.audit.export)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from proxy.api.app import create_app
from proxy.audit.chain import verify
from proxy.audit.events import AuditEmitter, EventType, FileSink, SessionInfo
from proxy.audit.export import CSV_COLUMNS, render
from proxy.audit.file_trail import FileTrail, trail_of_sinks
from proxy.audit.search import build_query
from proxy.audit.store_sink import StoreSink
from proxy.config import AuditSinkConfig
from proxy.store import open_store
from proxy.audit.query import AuditQuery
from proxy.store.base import Store
from tests.audit import test_search_api as store_tests
from tests.audit.test_search_api import ADMIN, NOW, Api, Verifier, _service


class Tee:
    """A sink writing each batch to a store sink and a file sink: the same events in both."""

    synchronous = False
    name = "tee"
    required = True

    def __init__(self, store: Store, path: Path) -> None:
        self.sinks = [StoreSink(store), FileSink(path, fsync=False)]

    def write_batch(self, records: list[Any]) -> None:
        for sink in self.sinks:
            sink.write_batch(records)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


@pytest.fixture
def both(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Store, FileTrail]]:
    """test_search_api's trail, written once to a store and a file."""
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    path = tmp_path / "audit.jsonl"
    monkeypatch.setattr(store_tests, "StoreSink", lambda s: Tee(s, path))
    store_tests._fill(store)
    yield store, FileTrail(path)
    store.close()


@pytest.mark.parametrize(("params", "expected"), store_tests.test_filters.pytestmark[0].args[1])
def test_every_search_answers_as_the_store_does(both: tuple[Store, FileTrail], params: dict[str, Any],
                                               expected: list[int]) -> None:
    store, trail = both
    query = build_query(now=NOW, **params)
    from_file = trail.search_audit(query)
    assert from_file == store.search_audit(query)
    api = Api(create_app(_service(store), Verifier(), audit_store=trail))  # type: ignore[arg-type]
    assert api.hours(**params) == expected


def test_the_chain_reads_as_the_stores(both: tuple[Store, FileTrail]) -> None:
    store, trail = both
    assert trail.audit_chain("p:1") == store.audit_chain("p:1")
    assert [e["seq"] for e in trail.audit_chain("p:1", after_seq=3, limit=2)] == [4, 5]
    assert verify(trail.audit_chain("p:1")).intact
    assert trail.audit_chain("nowhere:1") == []
    api = Api(create_app(_service(store), Verifier(), audit_store=trail))  # type: ignore[arg-type]
    assert [e["seq"] for e in api.get("/v1/audit/chain", ADMIN, proxy_instance="p:2").json()["events"]] == [1, 2, 3]


def _emit(path: Path, count: int, **sink: Any) -> None:
    at = {"now": NOW - timedelta(hours=1)}
    audit = AuditEmitter([FileSink(path, fsync=False, **sink)], instance="h:1", clock=lambda: at["now"])
    session = SessionInfo("s-9", "10.0.0.9:1", "rita", (), "mysql", instance="db", environment="prod")
    for i in range(count):
        at["now"] += timedelta(seconds=1)
        audit.emit(EventType.STATEMENT_DENIED, session, statement=f"SELECT {i} FROM t", tables=["app.t"],
                   decision="deny", reason_code="missing_grant")
        audit.flush()  # one batch per event: files rotate between batches
    audit.close()


def test_rotated_files_are_read_oldest_first(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    _emit(path, 60, max_bytes=4000, backups=3)
    assert path.with_name("audit.jsonl.1").exists() and path.with_name("audit.jsonl.3").exists()
    trail = trail_of_sinks([AuditSinkConfig(type="stdout"),
                            AuditSinkConfig(type="file", path=path, max_bytes=4000, backups=3)])
    assert trail == FileTrail(path, 3)
    everything = trail.audit_chain("h:1")
    seqs = [e["seq"] for e in everything]
    assert seqs == sorted(seqs) and seqs[-1] == 61  # 60 and the seal; the oldest rotated away
    oldest = trail.search_audit(AuditQuery(user="rita", oldest_first=True, limit=1))
    assert oldest[0]["seq"] == seqs[0]
    newest = trail.search_audit(AuditQuery(user="rita", limit=1))
    assert newest[0]["seq"] == 60


def test_a_torn_line_and_a_missing_file_are_not_errors(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    assert FileTrail(path).search_audit(AuditQuery()) == []  # nothing written yet
    _emit(path, 3)
    with open(path, "ab") as f:
        f.write(b'{"type": "statement.denied", "time": "2030-')  # cut short by a crash
    assert len(FileTrail(path).search_audit(AuditQuery(user="rita"))) == 3


def test_an_unreadable_file_is_503_and_no_file_sink_is_404(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    (tmp_path / "audit.jsonl").mkdir()  # a path that exists but cannot be read as a file
    api = Api(create_app(_service(store), Verifier(), audit_store=FileTrail(tmp_path / "audit.jsonl")))  # type: ignore[arg-type]
    failed = api.get("/v1/audit", ADMIN)
    assert failed.status_code == 503 and "the audit file audit.jsonl cannot be read" in failed.json()["detail"]
    assert trail_of_sinks([AuditSinkConfig(type="stdout")]) is None
    missing = Api(create_app(_service(store), Verifier())).get("/v1/audit", ADMIN)  # type: ignore[arg-type]
    assert missing.status_code == 404 and "no 'file' or 'store' sink" in missing.json()["detail"]
    store.close()


# -- export ---------------------------------------------------------------------------------------


def test_csv_has_fixed_columns_and_neutralizes_formulas() -> None:
    events = [
        {"time": "2030-01-01T00:00:00+00:00", "type": "statement.denied", "user": "dev", "decision": "deny",
         "statement": "=HYPERLINK(\"http://x\")", "tables": ["hr_prod.salary", "hr_prod.title"], "rows": None,
         "event_id": "e1", "seq": 3},
        {"time": "2030-01-01T00:00:01+00:00", "type": "request.created", "id": "r-1", "user": "dev",
         "reason": "-1 INC, @ops", "privileges": ["SELECT"], "affected_rows": 0},
    ]
    rows = list(csv.DictReader(io.StringIO(render(events, "csv"))))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[0]["statement"] == "'=HYPERLINK(\"http://x\")" and rows[0]["tables"] == "hr_prod.salary hr_prod.title"
    assert rows[0]["seq"] == "3" and rows[0]["rows"] == ""
    assert rows[1]["request_id"] == "r-1" and rows[1]["reason"] == "'-1 INC, @ops" and rows[1]["affected_rows"] == "0"
    assert json.loads(render(events, "json")) == events
    assert [json.loads(line) for line in render(events, "jsonl").splitlines()] == events
    with pytest.raises(ValueError):
        render(events, "xml")


def test_a_time_range_in_utc_and_local_forms_selects_the_same(both: tuple[Store, FileTrail]) -> None:
    _, trail = both
    since = (NOW - timedelta(hours=4)).astimezone(UTC)
    as_utc = trail.search_audit(build_query(now=NOW, since=since.isoformat(), until="2h", user="dev"))
    local = since.astimezone(datetime.now().astimezone().tzinfo).replace(tzinfo=None).isoformat()
    as_local = trail.search_audit(build_query(now=NOW, since=local, until="2h", user="dev",
                                              naive_tz=datetime.now().astimezone().tzinfo or UTC))
    assert as_utc == as_local and [e["type"] for e in as_utc] == ["request.created"]  # dev's, at NOW-4h


def test_names_json_escapes_are_found_too(tmp_path: Path) -> None:
    """Lines are skipped unparsed only by plain names; others are checked in full."""
    path = tmp_path / "audit.jsonl"
    audit = AuditEmitter([FileSink(path, fsync=False)], instance="h:2")
    for user in ('o"neil', "zoë", "eve"):
        session = SessionInfo("s-1", "10.0.0.1:1", user, (), "mysql")
        audit.emit(EventType.STATEMENT_DENIED, session, statement="SELECT 1 FROM `odd``db`.`t`",
                   tables=["odd`db.t"], decision="deny", reason_code="missing_grant")
    audit.close()
    trail = FileTrail(path)
    for user in ('o"neil', "zoë", "eve"):
        assert [e["user"] for e in trail.search_audit(AuditQuery(user=user))] == [user]
    assert len(trail.search_audit(AuditQuery(table="odd`db.t"))) == 3
    assert trail.search_audit(AuditQuery(user="ev")) == []  # a whole name, not a part of one
