"""The audit trail end to end: a session of mixed statements (allowed, denied, failed), prepared
statements with parameters, an admin action and a policy reload produce exactly the expected
events, identical in every sink (memory, file, store), valid against the published JSON
Schema; `jitproxy audit verify` accepts the file and catches an edited field, a deleted event
and two swapped events; `jitproxy audit search` finds the denial."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import mysql.connector
import pymysql
import pytest

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.inprocess import RunningProxy
from jitproxy_demo.mariadb import Credentials, LocalMariaDB
from proxy.audit.sinks import StreamSink
from proxy.cli import main
from proxy.audit.query import AuditQuery
from tests.helpers import api_cli
from tests.integration.conftest import client_ssl, local_proxy_config

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "docs" / "audit-event.schema.json").read_text())
POLICY = """
grants:
  - {subject: user:trail, grant: hr_prod.employee, privileges: [SELECT]}
  - {subject: user:trail, grant: hr_prod.title, privileges: [SELECT]}
"""


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory, mariadb: LocalMariaDB, tls_files: TlsFiles,
            upstream_credentials: Credentials) -> Iterator[tuple[RunningProxy, Path, Path]]:
    policies = tmp_path_factory.mktemp("trail-policies")
    (policies / "grants.yaml").write_text(POLICY)
    directory = tmp_path_factory.mktemp("trail")
    audit_file = directory / "audit.jsonl"
    cfg = local_proxy_config(directory, mariadb, tls_files, upstream_credentials, policies, extra={
        "audit": {"sinks": [{"type": "file", "path": str(audit_file)}, {"type": "store"}]},
        "api": {"auditor_groups": ["auditors"]},
    })
    stdout = io.StringIO()  # the stdout sink's code, writing into a buffer instead of fd 1
    running = RunningProxy(cfg, extra_sinks=[StreamSink(stdout, name="stdout")])
    running.stdout = stdout
    yield running, audit_file, policies
    running.stop()


def _session_events(proxy: RunningProxy, session_id: str) -> list[dict]:
    return [e for e in proxy.events if e.get("session_id") == session_id]


def _cli(monkeypatch, capsys, proxy: RunningProxy, tls_files: TlsFiles, user: str, groups: tuple[str, ...],
         *argv: str) -> tuple[int, str]:
    return api_cli(monkeypatch, capsys, proxy, user, groups, *argv, ca=tls_files.ca_cert)


def test_a_mixed_session_gives_exactly_the_expected_events_in_every_sink(audited, tls_files, monkeypatch, capsys):
    proxy, audit_file, policies = audited
    conn = pymysql.connect(host="127.0.0.1", port=proxy.port, user="trail", password=proxy.token("trail", ("oncall",)),
                           database="hr_prod", ssl=client_ssl(tls_files), program_name="trail-test",
                           autocommit=None)
    with conn.cursor() as cur:
        cur.execute("SELECT id FROM employee WHERE id = 7")
        with pytest.raises(pymysql.MySQLError):
            cur.execute("SELECT amount FROM salary WHERE employee_id = 7")
        with pytest.raises(pymysql.MySQLError):
            cur.execute("SELECT no_such_column FROM employee")
        cur.execute("SELECT CONNECTION_ID()")
    conn.close()
    # an admin action through the API, and a policy change
    code, out = _cli(monkeypatch, capsys, proxy, tls_files, "root-admin", ("dba",), "grant", "add", "--user", "trail",
                     "--grant", "hr_prod.salary", "--for", "1h", "--reason", "INC-77")
    assert code == 0, out
    (policies / "extra.yaml").write_text("grants:\n  - {subject: user:trail2, grant: hr_prod.title, privileges: [SELECT]}\n")
    proxy.ctx.grants.policies._checked = 0.0  # the next statement's check sees the file now
    proxy.ctx.grants()
    assert proxy.ctx.audit.flush()

    start = next(e for e in proxy.events if e["type"] == "session.start" and e["user"] == "trail"
                 and e["client_program"] == "trail-test")
    events = _session_events(proxy, start["session_id"])
    assert [(e["type"], e.get("statement_class"), e.get("reason_code") or e.get("error_code")) for e in events] == [
        ("session.start", None, None),
        ("statement.completed", "SET", None),  # PyMySQL's own SET NAMES at connect
        ("statement.completed", "SELECT", None),
        ("statement.denied", "SELECT", "missing_grant"),
        ("statement.failed", "SELECT", 1054),
        ("statement.completed", "SELECT", None),
        ("session.end", None, None),
    ]  # best_effort (no environment): one event per statement, when it ends
    completed = events[2]
    assert completed["statement"] == "SELECT id FROM employee WHERE id = 7" and completed["db"] == "hr_prod"
    assert completed["tables"] == ["hr_prod.employee"] and completed["privileges"] == ["SELECT on hr_prod.employee"]
    assert completed["grants"] and completed["rows"] == 1 and completed["decision"] == "allow"
    assert completed["fingerprint"] and completed["statement_id"].startswith(start["session_id"])
    failed = events[4]
    assert failed["statement"] == "SELECT no_such_column FROM employee" and failed["sqlstate"] == "42S22"
    assert events[-1]["statements"] == 5 and events[-1]["denied"] == 1
    for e in events:
        assert (e["user"], e["groups"], e["client_program"], e["instance"]) == ("trail", ["oncall"], "trail-test", "default")
        assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+:\d+", e["client_addr"]) and e["proxy_instance"]

    admin = [e for e in proxy.events if e.get("actor") == "root-admin"]
    assert [e["type"] for e in admin] == ["grant.added", "admin.api_call"]
    assert admin[0]["object"] == "hr_prod.salary" and admin[0]["user"] == "root-admin"
    assert admin[1]["method"] == "POST" and admin[1]["path"] == "/v1/grants" and admin[1]["status"] == 201
    assert admin[0]["client_addr"] == admin[1]["client_addr"] is not None  # the caller, on both
    reload = [e for e in proxy.events if e["type"] == "policy.reloaded"]
    assert reload and any(f.endswith("extra.yaml") for f in reload[-1]["files"])

    # every sink holds the same events, byte for byte as sealed
    lines = {json.loads(line)["event_id"]: json.loads(line) for line in audit_file.read_text().splitlines()}
    assert proxy.stdout.getvalue() == audit_file.read_text()  # stdout and file: the same bytes
    stored = {e["event_id"]: e for e in proxy.ctx.audit_store.search_audit(AuditQuery(limit=10_000))}
    for e in [*events, *admin, reload[-1]]:
        assert lines[e["event_id"]] == e
        assert stored[e["event_id"]] == e
    assert set(lines) == set(stored) == {e["event_id"] for e in proxy.events}
    for e in proxy.events:
        jsonschema.validate(e, SCHEMA)


def test_prepared_statements_record_their_parameters(audited, tls_files):
    proxy = audited[0]
    conn = mysql.connector.connect(host="127.0.0.1", port=proxy.port, user="trail", password=proxy.token("trail"),
                                   database="hr_prod", ssl_ca=str(tls_files.ca_cert), ssl_verify_cert=True,
                                   use_pure=True)
    cur = conn.cursor(prepared=True)
    cur.execute("SELECT id FROM employee WHERE id = ? AND last_name <> ?", (7, "Zoë"))
    cur.fetchall()
    cur.close()
    conn.close()
    assert proxy.ctx.audit.flush()
    execute = [e for e in proxy.events if e.get("command") == "COM_STMT_EXECUTE" and e["type"] == "statement.completed"
               and e["user"] == "trail"]
    assert execute[-1]["params"] == [7, "Zoë"]
    assert execute[-1]["statement"] == "SELECT id FROM employee WHERE id = ? AND last_name <> ?"
    jsonschema.validate(execute[-1], SCHEMA)


def test_audit_verify_accepts_the_file_and_catches_tampering(audited, tmp_path, capsys):
    proxy, audit_file = audited[0], audited[1]
    assert proxy.ctx.audit.flush()
    lines = audit_file.read_text().splitlines()
    assert len(lines) > 6
    assert main(["audit", "verify", "--allow-open", str(audit_file)]) == 0  # the proxy still runs: no seal yet
    assert "OK:" in capsys.readouterr().out

    def check(tampered: list[str]) -> str:
        path = tmp_path / "tampered.jsonl"
        path.write_text("\n".join(tampered) + "\n")
        assert main(["audit", "verify", str(path)]) == 1
        return capsys.readouterr().out

    edited = list(lines)
    event = json.loads(edited[3])
    event["user"] = "somebody-else"
    edited[3] = json.dumps(event)
    assert f"EDITED       {event['proxy_instance']} seq {event['seq']}" in check(edited)
    deleted = lines[:4] + lines[5:]
    assert "MISSING" in check(deleted)
    swapped = list(lines)
    swapped[2], swapped[3] = swapped[3], swapped[2]
    out = check(swapped)
    assert "OUT_OF_ORDER" in out or "MISSING" in out


def test_audit_search_finds_the_denial_for_auditors_only(audited, tls_files, monkeypatch, capsys):
    proxy = audited[0]
    assert proxy.ctx.audit.flush()
    args = ("audit", "search", "--user", "trail", "--since", "1h", "--table", "hr_prod.salary", "--decision", "deny")
    code, out = _cli(monkeypatch, capsys, proxy, tls_files, "ivy", ("auditors",), *args, "--json")
    assert code == 0, out
    found = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert found and all(e["type"] == "statement.denied" and e["user"] == "trail" for e in found)
    assert any(e["statement"] == "SELECT amount FROM salary WHERE employee_id = 7" for e in found)
    code, out = _cli(monkeypatch, capsys, proxy, tls_files, "ivy", ("auditors",), *args)
    assert code == 0 and "missing_grant" in out and "trail" in out
    code, out = _cli(monkeypatch, capsys, proxy, tls_files, "trail", (), *args)
    assert code == 1 and "auditors" in out  # not for the people being audited
