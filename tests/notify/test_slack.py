"""proxy.notify.slack without a proxy: the message (with how far a request has got:
proxy.workflow.approvals.Plan.progress, tested there), the signature checks at
their edges, the configuration, and a Slack that fails (against the loopback fake Web API, with
a real AccessService on SQLite). End to end through a running proxy: test_slack_e2e.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog
import yaml
from slack_sdk import WebClient

from proxy.audit.events import AuditEmitter, MemorySink
from proxy.authz.model import Principal
from proxy.config import SlackConfig
from proxy.notify.slack import Person, SlackApprovals, render, slack_from_config
from proxy.store import open_store
from proxy.workflow.approvals import ApprovalPolicies, break_glass_from_document, rules_from_document
from proxy.workflow.service import AccessService
from tests.helpers import environments, eventually
from tests.notify.fake_slack import FakeSlack, click_payload, signed

SECRET = "unit-signing-secret"
POLICY = {
    "approval_policies": [
        {"environment": "prod", "privileges": ["SELECT"], "approvals": 1, "approvers": ["group:owner"]},
        {"environment": "prod", "privileges": ["UPDATE"], "approvals": 2, "approvers": ["group:owner", "group:dba"],
         "require": ["group:dba"]},
        {"environment": "prod", "break_glass": True, "who": ["group:oncall"], "max_duration": "2h"},  # owners review
    ],
}


def _policies() -> ApprovalPolicies:
    return ApprovalPolicies(tuple(rules_from_document(POLICY, "test")),
                            break_glass=tuple(break_glass_from_document(POLICY, "test")))


# -- the message ---------------------------------------------------------------------------------------


def _request(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "r-1", "requester": "dev", "instance": "*", "db": "hr_prod", "tables": ["salary"],
        "privileges": ["SELECT"], "duration_s": 3600, "reason": "INC-1 <!channel> @here <https://x|y>",
        "environment": "prod", "status": "pending", "access_until": None, "approvals": [], "status_by": None,
    }
    return {**base, **changes}


def test_a_pending_message_has_buttons_and_escapes_what_people_typed() -> None:
    text, blocks = render(_request(progress="0 of 1 approval"))
    assert text == "[prod] r-1: dev requests SELECT on hr_prod (salary): pending (0 of 1 approval)"
    (actions,) = [b for b in blocks if b["type"] == "actions"]
    assert [(e["action_id"], e["value"]) for e in actions["elements"]] == [
        ("jitproxy_approve", "r-1"), ("jitproxy_deny", "r-1")]
    everything = str(blocks)
    assert "<!channel>" not in everything and "<https://x|y>" not in everything and "@here" not in everything
    assert "&lt;!channel&gt;" in everything


def test_a_decided_message_says_who_and_until_when_and_has_no_buttons() -> None:
    approved = _request(status="approved", status_by="olga", access_until="2030-05-01T13:00:00+00:00")
    text, blocks = render(approved)
    assert text.endswith(": approved")
    assert not [b for b in blocks if b["type"] == "actions"]
    assert "Approved by olga; access until 2030-05-01T13:00:00+00:00" in blocks[0]["text"]["text"]
    _, blocks = render(_request(status="expired", status_by="jitproxy"))
    assert blocks[0]["text"]["text"].endswith("\nExpired")  # what ends on its own has no "by"
    _, blocks = render(_request(status="revoked", status_by="ada", status_reason="INC closed"))
    assert blocks[0]["text"]["text"].endswith("\nRevoked by ada: INC closed")
    _, blocks = render(_request(ends_at="2030-05-01T18:00:00+00:00"))
    assert "Access would end at 2030-05-01T18:00:00+00:00" in blocks[0]["text"]["text"]


# -- against the fake Web API, with a real service ------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.at = float(int(time.time()))  # whole seconds, as Slack's timestamps

    def __call__(self) -> float:
        return self.at


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    slack = FakeSlack()
    yield slack
    slack.stop()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def wired(fake: FakeSlack, tmp_path: Path, clock: Clock) -> Iterator[tuple[SlackApprovals, AccessService]]:
    """SlackApprovals on the fake Web API, bound to a real service on SQLite (and back)."""
    slack = SlackApprovals(WebClient(token="xoxb-unit-SECRETTOKEN", base_url=fake.url), "C1", SECRET,
                           {"U0OWNER": Person("olga", ("owner",))}, clock=clock)
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    audit = AuditEmitter([MemorySink()], instance="t")
    service = AccessService(store, _policies, audit, lambda: datetime.now(UTC), notify=slack.notify,
                            environments=environments({"hr_prod": "prod"}))
    slack.bind(service)
    slack.start()
    yield slack, service
    slack.close()
    audit.close()
    store.close()


def test_signature_edges(wired: tuple[SlackApprovals, AccessService], clock: Clock) -> None:
    slack, service = wired
    request = service.create_request(Principal("dev"), "hr_prod", ["salary"], ["SELECT"], "INC-2 check",
                                     duration=timedelta(hours=1))
    body, headers = signed(SECRET, click_payload(request.id, "U0OWNER"), timestamp=int(clock.at))
    assert slack.handle_interaction(body, {**headers, "X-Slack-Request-Timestamp": "soon"}).status == 401
    assert slack.handle_interaction(b"\xff\xfe", headers).status == 401  # not UTF-8: not what was signed
    clock.at += 300  # exactly 5 minutes later: still accepted (Slack's rule is "more than 5 minutes")
    lower = {k.lower(): v for k, v in headers.items()}
    clock.at += 1
    assert slack.handle_interaction(body, lower).body["detail"].startswith("stale")
    clock.at -= 1
    answer = slack.handle_interaction(body, lower)
    assert answer.status == 200 and answer.principal == Principal("olga", ("owner",)) and answer.changed


def test_a_failing_slack_is_logged_without_secrets_and_later_messages_still_go(
        wired: tuple[SlackApprovals, AccessService], fake: FakeSlack, monkeypatch: pytest.MonkeyPatch) -> None:
    slack, service = wired
    real_answer = fake.answer
    monkeypatch.setattr(fake, "answer", lambda method, args: {"ok": False, "error": "channel_not_found"})
    with structlog.testing.capture_logs() as logs:
        first = service.create_request(Principal("dev"), "hr_prod", ["salary"], ["SELECT"], "INC-3 one",
                                       duration=timedelta(hours=1))
        eventually(lambda: slack.stats.failed == 1)
    assert logs[-1]["event"] == "slack.api_error" and logs[-1]["error"] == "channel_not_found"
    assert "SECRETTOKEN" not in str(logs) and SECRET not in str(logs)
    monkeypatch.setattr(fake, "answer", real_answer)
    second = service.create_request(Principal("dev2"), "hr_prod", ["salary"], ["SELECT"], "INC-3 two",
                                    duration=timedelta(hours=1))
    eventually(lambda: slack.stats.posted == 1)
    assert [m["blocks"][-1]["elements"][0]["value"] for m in fake.of("chat.postMessage")] == [first.id, second.id]
    assert "SECRETTOKEN" not in repr(slack) and SECRET not in repr(slack)


def test_a_break_glass_request_is_posted_and_a_deny_click_revokes_it(
        wired: tuple[SlackApprovals, AccessService], fake: FakeSlack, clock: Clock) -> None:
    slack, service = wired
    request, _ = service.submit_request(Principal("carl", ("oncall",)), "hr_prod", ["salary"], ["SELECT"],
                                        "INC-7 payroll down", duration=timedelta(hours=1), break_glass=True)
    eventually(lambda: slack.stats.posted == 1)  # new to the channel, though approved at once
    (posted,) = fake.of("chat.postMessage")
    assert "*BREAK GLASS*" in posted["blocks"][0]["text"]["text"]
    assert posted["blocks"][-1]["elements"][1]["value"] == request.id
    body, headers = signed(SECRET, click_payload(request.id, "U0OWNER", approve=False), timestamp=int(clock.at))
    answer = slack.handle_interaction(body, headers)
    assert answer.status == 200 and answer.changed
    view = answer.body["request"]
    assert (view["status"], view["review"], view["status_reason"]) == (
        "revoked", "denied by olga", "break glass denied in review: via Slack (U0OWNER)")
    eventually(lambda: slack.stats.updated >= 1)
    assert not [b for b in fake.of("chat.update")[-1]["blocks"] if b["type"] == "actions"]


def test_only_request_events_are_shown_and_a_full_queue_drops(fake: FakeSlack) -> None:
    slack = SlackApprovals(WebClient(token="xoxb-x", base_url=fake.url), "C1", SECRET, {}, max_queue=1)
    slack.notify("grant.added", {"id": "g-1"})
    slack.notify("request.created", {"id": "r-1"})
    slack.notify("request.created", {"id": "r-2"})  # not started: the queue holds one
    assert slack.stats.dropped == 1


def test_configuration_needs_both_secrets_and_names_only_the_variables() -> None:
    cfg = SlackConfig(channel="C1", people={"U1": {"user": "olga", "groups": ["owner"]}})
    with pytest.raises(ValueError, match="JITPROXY_SLACK_BOT_TOKEN is not set"):
        slack_from_config(cfg, {})
    with pytest.raises(ValueError, match="JITPROXY_SLACK_SIGNING_SECRET is not set"):
        slack_from_config(cfg, {"JITPROXY_SLACK_BOT_TOKEN": "xoxb-1"})
    slack = slack_from_config(cfg, {"JITPROXY_SLACK_BOT_TOKEN": "xoxb-SECRET1",
                                    "JITPROXY_SLACK_SIGNING_SECRET": "SECRET2"})
    assert "SECRET" not in repr(slack)
    with pytest.raises(ValueError):
        SlackConfig(channel="C1", people={"U1": {"user": "not a name!"}})


def test_the_commented_example_in_config_example_is_valid() -> None:
    from tests.unit.test_instances_config import ROOT, _commented_block

    example = yaml.safe_load(_commented_block((ROOT / "config.example.yaml").read_text(), "slack:"))
    cfg = SlackConfig.model_validate(example["slack"])
    assert cfg.people["U024BE7LH"].groups == ("project-owner", "dba") and "bob@example.com" in cfg.people
