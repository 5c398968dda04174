"""Approvers are told, through a running proxy: `notify.webhooks` in the config (URLs and the
signing secret from the environment) → `build_context` → the API's workflow → a local HTTP
receiver. One proxy of its own (its config differs from the shared one)."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.inprocess import RunningProxy
from jitproxy_demo.mariadb import Credentials, LocalMariaDB
from tests.helpers import api_cli
from tests.integration.conftest import local_proxy_config
from tests.notify.test_webhook import SECRET_PATH, Receiver

APPROVALS = """
approval_policies:
  - {environment: prod, privileges: [SELECT], approvals: 1, approvers: ["group:project-owner"], max_duration: 8h}
"""
SIGNING_SECRET = "whsec-e2e-0123456789"


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture(scope="module")
def notifying_proxy(
    tmp_path_factory: pytest.TempPathFactory,
    mariadb: LocalMariaDB,
    tls_files: TlsFiles,
    upstream_credentials: Credentials,
    receiver: Receiver,
) -> Iterator[RunningProxy]:
    policies = tmp_path_factory.mktemp("webhook-policies")
    (policies / "approvals.yaml").write_text(APPROVALS)
    mp = pytest.MonkeyPatch()
    mp.setenv("E2E_SLACK_URL", receiver.base + SECRET_PATH)
    mp.setenv("E2E_JSON_URL", receiver.base + "/hooks/jitproxy")
    mp.setenv("E2E_JSON_SECRET", SIGNING_SECRET)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        mp.delenv(name, raising=False)
    cfg = local_proxy_config(
        tmp_path_factory.mktemp("webhook-proxy"), mariadb, tls_files, upstream_credentials, policies,
        extra={"upstream": {"environments": {"hr_prod": "prod"}}, "notify": {"webhooks": [
            {"name": "approvers-slack", "url_env": "E2E_SLACK_URL", "format": "slack"},
            {"name": "siem", "url_env": "E2E_JSON_URL", "format": "json", "secret_env": "E2E_JSON_SECRET"},
        ]}},
    )
    running = RunningProxy(cfg)
    yield running
    running.stop()
    mp.undo()


def _cli(monkeypatch, capsys, proxy: RunningProxy, ca: Path, user: str, groups: tuple[str, ...], *argv: str) -> str:
    code, out = api_cli(monkeypatch, capsys, proxy, user, groups, *argv, ca=ca)
    assert code == 0, out
    return out


def _object(out: str) -> dict:
    """The CLI's --json object; the proxy's own log lines (same process) may surround it."""
    lines = out.splitlines()
    start = lines.index("{")
    return json.loads("\n".join(lines[start : lines.index("}", start) + 1]))


def _json_events(receiver: Receiver, count: int) -> list[dict]:
    received = receiver.wait_for("/hooks/jitproxy", count)
    for r in received:  # every delivery is signed with the configured secret
        expected = hmac.new(SIGNING_SECRET.encode(), f"{r.headers['x-jitproxy-timestamp']}.".encode() + r.body,
                            hashlib.sha256).hexdigest()
        assert r.headers["x-jitproxy-signature"] == f"sha256={expected}"
    return [r.json() for r in received]


def test_request_lifecycle_reaches_both_webhooks(notifying_proxy, receiver, tls_files, monkeypatch, capsys):
    proxy = notifying_proxy
    ca = tls_files.ca_cert
    created = _object(_cli(monkeypatch, capsys, proxy, ca, "hook-dev", (), "request", "create", "--json",
                              "--db", "hr_prod", "--table", "salary", "--for", "1h", "--reason", "INC-77"))
    events = _json_events(receiver, 1)
    assert [e["event"] for e in events] == ["request.created"]
    assert events[0]["request"]["id"] == created["id"] and events[0]["request"]["reason"] == "INC-77"
    slack = receiver.wait_for(SECRET_PATH, 1)[0].json()
    assert created["id"] in json.dumps(slack) and "hook-dev" in json.dumps(slack)

    _cli(monkeypatch, capsys, proxy, ca, "olga", ("project-owner",), "request", "approve", created["id"])
    second = _object(_cli(monkeypatch, capsys, proxy, ca, "hook-dev", (), "request", "create", "--json",
                             "--db", "hr_prod", "--table", "title", "--for", "1h", "--reason", "INC-78"))
    _cli(monkeypatch, capsys, proxy, ca, "olga", ("project-owner",), "request", "deny", second["id"],
         "--comment", "use the test copy")
    third = _object(_cli(monkeypatch, capsys, proxy, ca, "hook-dev", (), "request", "create", "--json",
                            "--db", "hr_prod", "--table", "employee", "--for", "1h", "--reason", "INC-79"))
    proxy.clock.advance(proxy.cfg.api.pending_ttl + timedelta(minutes=1))
    try:
        assert [r.id for r in proxy.call(_expire(proxy))] == [third["id"]]
    finally:
        proxy.clock.advance(-(proxy.cfg.api.pending_ttl + timedelta(minutes=1)))

    events = _json_events(receiver, 6)
    assert [(e["event"], e["request"]["id"]) for e in events] == [
        ("request.created", created["id"]),
        ("request.approved", created["id"]),
        ("request.created", second["id"]),
        ("request.denied", second["id"]),
        ("request.created", third["id"]),
        ("request.expired", third["id"]),
    ]
    assert len(receiver.wait_for(SECRET_PATH, 6)) == 6
    # The Slack URL is a secret: it is in no audit event.
    assert "SECRETXYZ" not in json.dumps(proxy.events, default=str)


async def _expire(proxy: RunningProxy) -> list:
    import asyncio

    return await asyncio.to_thread(proxy.ctx.workflow.expire_pending)
