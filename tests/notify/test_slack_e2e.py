"""Approvals from Slack end to end: a running proxy (the `slack:` section of its config, the
token and signing secret from the environment) posts each new request to a fake Slack Web API
on loopback; clicks are posted to the proxy's admin API as Slack posts them (form-encoded
`payload`, signed with the signing secret) and decided by the workflow with the CLI's rules; the
message follows every change. One proxy of its own (its config differs from the shared one)."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pymysql
import pytest

from jitproxy_demo.certs import TlsFiles
from jitproxy_demo.inprocess import RunningProxy
from jitproxy_demo.mariadb import Credentials, LocalMariaDB
from tests.helpers import eventually
from tests.integration.conftest import client_ssl, local_proxy_config
from tests.notify.fake_slack import FakeSlack, click_payload, signed

APPROVALS = """
approval_policies:
  - {environment: prod, privileges: [SELECT], approvals: 1, approvers: ["group:project-owner"], max_duration: 8h}
  - {environment: prod, privileges: [INSERT, UPDATE, DELETE], approvals: 2,
     approvers: ["group:project-owner", "group:dba"], require: ["group:dba"], max_duration: 2h}
"""
BOT_TOKEN = "xoxb-e2e-4242-SECRETBOT"
SIGNING_SECRET = "slack-signing-e2e-SECRETSIGN"
PEOPLE = {
    "U0OWNER": {"user": "olga", "groups": ["project-owner"]},
    "U0DBA": {"user": "dana", "groups": ["dba"]},
    "U0ADMIN": {"user": "ada", "groups": ["project-owner", "dba"]},
    "U0SELF": {"user": "slack-self", "groups": ["project-owner"]},  # an owner, asking for themselves
    "U0EVE": {"user": "eve", "groups": []},  # known, but no approver
    "nora@example.com": {"user": "nora", "groups": ["project-owner"]},  # matched through users.info
}
SLACK_USERS = {
    "U0NORA": {"id": "U0NORA", "team_id": "T0JITPROXY", "is_email_confirmed": True,
               "profile": {"email": "Nora@example.com"}},
    "U0FAKENORA": {"id": "U0FAKENORA", "team_id": "T0JITPROXY", "is_email_confirmed": False,
                   "profile": {"email": "nora@example.com"}},
}


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    fake = FakeSlack(users=SLACK_USERS)
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory, mariadb: LocalMariaDB, tls_files: TlsFiles,
          upstream_credentials: Credentials, slack: FakeSlack) -> Iterator[RunningProxy]:
    policies = tmp_path_factory.mktemp("slack-policies")
    (policies / "approvals.yaml").write_text(APPROVALS)
    mp = pytest.MonkeyPatch()
    mp.setenv("E2E_SLACK_BOT_TOKEN", BOT_TOKEN)
    mp.setenv("E2E_SLACK_SIGNING_SECRET", SIGNING_SECRET)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        mp.delenv(name, raising=False)
    cfg = local_proxy_config(
        tmp_path_factory.mktemp("slack-proxy"), mariadb, tls_files, upstream_credentials, policies,
        extra={"upstream": {"environments": {"hr_prod": "prod"}},
               "slack": {"channel": "#db-approvals", "bot_token_env": "E2E_SLACK_BOT_TOKEN",
                         "signing_secret_env": "E2E_SLACK_SIGNING_SECRET", "team_id": "T0JITPROXY",
                         "api_url": slack.url, "people": PEOPLE}},
    )
    running = RunningProxy(cfg)
    yield running
    running.stop()
    mp.undo()
    everything = json.dumps(running.events, default=str)
    assert BOT_TOKEN not in everything and SIGNING_SECRET not in everything


class Api:
    def __init__(self, proxy: RunningProxy, tls: TlsFiles) -> None:
        self.proxy = proxy
        self.url = f"https://127.0.0.1:{proxy.server.api.port}"
        self.verify = ssl.create_default_context(cafile=str(tls.ca_cert))

    def post(self, path: str, *, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        with httpx.Client(base_url=self.url, verify=self.verify, timeout=30) as client:
            return client.post(path, headers=headers, **kwargs)

    def request(self, requester: str, table: str, privilege: str = "SELECT") -> str:
        response = self.post("/v1/requests", token=self.proxy.token(requester), json={
            "db": "hr_prod", "tables": [table], "privileges": [privilege], "duration": "1h",
            "reason": f"INC-77 {privilege} {table}"})
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def click(self, request_id: str, slack_user: str, *, approve: bool = True, message_ts: str | None = None,
              **signing: Any) -> httpx.Response:
        payload = click_payload(request_id, slack_user, approve=approve,
                                **({"message_ts": message_ts} if message_ts else {}))
        body, headers = signed(signing.pop("secret", SIGNING_SECRET), payload, **signing)
        return self.post("/v1/slack/interactions", content=body, headers=headers)

    def status(self, request_id: str) -> str:
        request = self.proxy.ctx.workflow.store.get_request(request_id)
        assert request is not None
        return request.status.value


@pytest.fixture
def api(proxy: RunningProxy, tls_files: TlsFiles) -> Api:
    return Api(proxy, tls_files)


def posted(slack: FakeSlack, request_id: str) -> dict[str, Any]:
    """The chat.postMessage of the request (waits for the proxy's Slack worker)."""
    found = eventually(lambda: [m for m in slack.of("chat.postMessage") if _buttons_for(m) == request_id
                                or request_id in m.get("text", "")])
    assert len(found) == 1, found
    return found[0]


def updates(slack: FakeSlack, request_id: str) -> list[dict[str, Any]]:
    return [m for m in slack.of("chat.update") if request_id in m.get("text", "")]


def last_update(slack: FakeSlack, request_id: str, containing: str) -> dict[str, Any]:
    """The latest chat.update of the request, once one contains `containing`."""
    found = eventually(lambda: [m for m in updates(slack, request_id) if containing in _all_text(m)])
    assert found, (containing, updates(slack, request_id))
    return found[-1]


def told(slack: FakeSlack, slack_user: str, containing: str) -> dict[str, Any]:
    found = eventually(lambda: [m for m in slack.of("chat.postEphemeral")
                                if m["user"] == slack_user and containing in m["text"]])
    assert found, (slack_user, containing, slack.of("chat.postEphemeral"))
    return found[-1]


def _buttons_for(message: dict[str, Any]) -> str | None:
    for block in message.get("blocks") or ():
        if block.get("type") == "actions":
            return block["elements"][0]["value"]
    return None


def _all_text(message: dict[str, Any]) -> str:
    return message.get("text", "") + json.dumps(message.get("blocks"))


# -- approve and deny -------------------------------------------------------------------------------


def test_approve_in_slack_grants_access_and_updates_the_message(api: Api, slack: FakeSlack, proxy: RunningProxy,
                                                                 tls_files: TlsFiles) -> None:
    request_id = api.request("slack-dev1", "salary")
    message = posted(slack, request_id)
    assert message["channel"] == "#db-approvals"
    assert _buttons_for(message) == request_id
    assert [e["action_id"] for b in message["blocks"] if b["type"] == "actions" for e in b["elements"]] == [
        "jitproxy_approve", "jitproxy_deny"]
    assert "pending" in message["text"] and "0 of 1 approval" in message["text"]
    calls = [c for c in slack.calls if c["method"] == "chat.postMessage"]
    assert calls[-1]["authorization"] == f"Bearer {BOT_TOKEN}"  # the configured bot token reached Slack

    response = api.click(request_id, "U0OWNER")
    assert response.status_code == 200, response.text
    assert response.json()["request"]["status"] == "approved"
    update = last_update(slack, request_id, "approved")
    assert update["channel"] == "C0APPROVE" and update["ts"] == "1700000000.000001"  # the clicked message
    assert _buttons_for(update) is None  # decided: no more buttons
    assert "Approved by olga" in _all_text(update) and "access until" in _all_text(update)

    # the grant bites at once: the requester's statement through the proxy works
    conn = pymysql.connect(host="127.0.0.1", port=proxy.port, user="slack-dev1", password=proxy.token("slack-dev1"),
                           ssl=client_ssl(tls_files), autocommit=True)
    with conn.cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM hr_prod.salary")
        assert cur.fetchone()[0] > 0
    conn.close()

    approved = next(e for e in proxy.events if e.get("id") == request_id and e["type"] == "request.approved")
    assert approved["actor"] == "olga" and approved["approvals"][0]["comment"] == "via Slack (U0OWNER)"
    calls = [e for e in proxy.events if e["type"] == "admin.api_call" and e["path"] == "/v1/slack/interactions"]
    assert (calls[-1]["user"], calls[-1]["status"]) == ("olga", 200)


def test_deny_in_slack(api: Api, slack: FakeSlack) -> None:
    request_id = api.request("slack-dev2", "salary")
    ts = posted(slack, request_id)
    response = api.click(request_id, "U0ADMIN", approve=False)
    assert response.status_code == 200 and response.json()["request"]["status"] == "denied"
    assert api.status(request_id) == "denied"
    update = last_update(slack, request_id, "denied")
    assert _buttons_for(update) is None and "Denied by ada" in _all_text(update)
    assert ts  # posted first, then updated


# -- refusals ---------------------------------------------------------------------------------------


def test_unsigned_stale_and_forged_clicks_are_refused(api: Api, slack: FakeSlack, proxy: RunningProxy) -> None:
    request_id = api.request("slack-dev3", "salary")
    posted(slack, request_id)
    payload = click_payload(request_id, "U0OWNER")
    body, _ = signed(SIGNING_SECRET, payload)

    unsigned = api.post("/v1/slack/interactions", content=body,
                        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert unsigned.status_code == 401 and "unsigned" in unsigned.json()["detail"]
    stale = api.click(request_id, "U0OWNER", timestamp=int(time.time()) - 301)  # correctly signed, too old
    assert stale.status_code == 401 and "stale" in stale.json()["detail"]
    future = api.click(request_id, "U0OWNER", timestamp=int(time.time()) + 330)  # margin: the clock moves on
    assert future.status_code == 401 and "stale" in future.json()["detail"]
    forged = api.click(request_id, "U0OWNER", secret="not-the-signing-secret")
    assert forged.status_code == 401 and forged.json()["detail"] == "bad signature"
    _, good_headers = signed(SIGNING_SECRET, click_payload("r-other", "U0OWNER"))
    swapped = api.post("/v1/slack/interactions", content=body, headers=good_headers)  # a signature of another body
    assert swapped.status_code == 401 and swapped.json()["detail"] == "bad signature"
    garbage = api.click(request_id, "U0OWNER", signature="v0=" + "0" * 64)
    assert garbage.status_code == 401

    assert api.status(request_id) == "pending"
    assert not [e for e in proxy.events if e.get("id") == request_id and e["type"] != "request.created"]
    refused = [e for e in proxy.events if e["type"] == "admin.api_call" and e["path"] == "/v1/slack/interactions"
               and e["status"] == 401]
    assert len(refused) >= 6 and all(e["user"] is None for e in refused)  # audited, nobody named


def test_self_approval_is_refused_even_for_an_approver(api: Api, slack: FakeSlack) -> None:
    request_id = api.request("slack-self", "salary")
    posted(slack, request_id)
    response = api.click(request_id, "U0SELF")
    assert response.status_code == 403
    assert response.json()["detail"] == "nobody approves or denies their own request"
    assert api.status(request_id) == "pending"
    told(slack, "U0SELF", "nobody approves or denies their own request")


def test_unknown_slack_users_and_non_approvers_are_refused(api: Api, slack: FakeSlack) -> None:
    request_id = api.request("slack-dev4", "salary")
    posted(slack, request_id)
    stranger = api.click(request_id, "U0STRANGER")
    assert stranger.status_code == 403 and "U0STRANGER is nobody in jitproxy" in stranger.json()["detail"]
    told(slack, "U0STRANGER", "is nobody in jitproxy")
    eve = api.click(request_id, "U0EVE")
    assert eve.status_code == 403 and "not an approver" in eve.json()["detail"]
    other_team = click_payload(request_id, "U0OWNER", team="T0ELSEWHERE")
    body, headers = signed(SIGNING_SECRET, other_team)
    elsewhere = api.post("/v1/slack/interactions", content=body, headers=headers)
    assert elsewhere.status_code == 403 and "workspace" in elsewhere.json()["detail"]
    assert api.status(request_id) == "pending"


def test_a_slack_account_matched_by_its_confirmed_email(api: Api, slack: FakeSlack) -> None:
    request_id = api.request("slack-dev5", "salary")
    posted(slack, request_id)
    unconfirmed = api.click(request_id, "U0FAKENORA")  # claims nora's email, Slack has not confirmed it
    assert unconfirmed.status_code == 403
    nora = api.click(request_id, "U0NORA")
    assert nora.status_code == 200, nora.text
    assert nora.json()["request"]["approvals"][0]["approver"] == "nora"
    lookups = [c for c in slack.calls if c["method"] == "users.info"]
    assert lookups and all(c["authorization"] == f"Bearer {BOT_TOKEN}" for c in lookups)
    assert not [c for c in slack.calls if "token" in c["args"]]  # the token travels in the header only


# -- several approvers, and changes made elsewhere ------------------------------------------------------------


def test_multi_approver_progress_is_shown_and_updated(api: Api, slack: FakeSlack) -> None:
    request_id = api.request("slack-dev6", "employee", "UPDATE")
    message = posted(slack, request_id)
    assert "0 of 2 approvals, needs one from group:dba" in message["text"]

    first = api.click(request_id, "U0OWNER")
    assert first.status_code == 200 and first.json()["request"]["status"] == "pending"
    update = last_update(slack, request_id, "1 of 2 approvals, needs one from group:dba")
    assert _buttons_for(update) == request_id  # still pending: the buttons stay
    assert "olga" in _all_text(update)  # the decisions so far

    again = api.click(request_id, "U0OWNER")
    assert again.status_code == 409 and "already approved" in again.json()["detail"]

    second = api.click(request_id, "U0DBA")
    assert second.status_code == 200 and second.json()["request"]["status"] == "approved"
    final = last_update(slack, request_id, "Approved by dana")
    assert _buttons_for(final) is None


def test_the_message_follows_cancel_and_expiry_made_elsewhere(api: Api, slack: FakeSlack,
                                                              proxy: RunningProxy) -> None:
    cancelled = api.request("slack-dev7", "salary")
    posted(slack, cancelled)
    response = api.post(f"/v1/requests/{cancelled}/cancel", token=proxy.token("slack-dev7"))
    assert response.status_code == 200, response.text
    assert _buttons_for(last_update(slack, cancelled, "cancelled")) is None

    expiring = api.request("slack-dev8", "title")
    posted(slack, expiring)
    offset = proxy.clock.offset
    try:
        proxy.clock.advance(timedelta(hours=25))  # past api.pending_ttl (24 h)
        proxy.ctx.workflow.expire_pending()
        assert _buttons_for(last_update(slack, expiring, "expired")) is None
        late = api.click(expiring, "U0OWNER")  # a click on a message that was not yet updated
        assert late.status_code == 409 and "expired, not pending" in late.json()["detail"]
        told(slack, "U0OWNER", "expired, not pending")
    finally:
        proxy.clock.offset = offset


def test_not_a_click_of_ours_is_400(api: Api) -> None:
    body, headers = signed(SIGNING_SECRET, {"type": "view_submission", "user": {"id": "U0OWNER"}})
    response = api.post("/v1/slack/interactions", content=body, headers=headers)
    assert response.status_code == 400
    body, headers = signed(SIGNING_SECRET, {})
    headers["X-Slack-Signature"] = signed(SIGNING_SECRET, {})[1]["X-Slack-Signature"]
    junk = api.post("/v1/slack/interactions", content=b"not a form", headers=headers)
    assert junk.status_code == 401  # the signature covers the exact bytes


def test_the_message_follows_access_given_back_early(api: Api, slack: FakeSlack, proxy: RunningProxy) -> None:
    request_id = api.request("slack-dev9", "title")
    posted(slack, request_id)
    assert api.click(request_id, "U0OWNER").status_code == 200
    last_update(slack, request_id, "access until")
    response = api.post(f"/v1/requests/{request_id}/release", token=proxy.token("slack-dev9"),
                        json={"reason": "done early"})
    assert response.status_code == 200, response.text
    update = last_update(slack, request_id, "Released by slack-dev9: done early")
    assert _buttons_for(update) is None
