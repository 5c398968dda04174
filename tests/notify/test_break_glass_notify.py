"""Break glass is loud: an on-call person's request granted at once goes to the webhooks
(subscribed by default, in the style of an admin's break-glass grant) and to the Slack channel as
a new message whose buttons review it after the fact (Deny revokes it), with the same rules as
the CLI (the Slack click that denies one: test_slack.py)."""

from __future__ import annotations

from typing import Any

from proxy.config import WebhookConfig
from proxy.notify.slack import render
from proxy.notify.webhook import EVENTS, WebhookTarget, slack_payload
from tests.notify.test_webhook import sample_request


def _break_glass(**overrides: Any) -> dict[str, Any]:
    return sample_request(**{"status": "approved", "break_glass": True, "review": "pending", "actor": "carl",
                             "requester": "carl", "access_until": "2030-01-01T10:00:00+00:00",
                             "review_command": "jitproxy request approve r-0123456789ab",
                             "revoke_command": "jitproxy request deny r-0123456789ab --comment '...'",
                             "approve_command": None, **overrides})


def test_webhooks_hear_of_break_glass_and_its_review_by_default() -> None:
    assert {"request.break_glass", "request.reviewed"} <= EVENTS
    assert {"request.break_glass", "request.reviewed"} <= set(WebhookConfig(name="x", url_env="X").events)
    WebhookTarget("https://hooks.example.com/x", "json", events=frozenset({"request.break_glass"}))

    payload = slack_payload("request.break_glass", _break_glass(reason="INC-9 <!channel>"))
    texts = [b["text"]["text"] for b in payload["blocks"] if "text" in b]
    fields = [f["text"] for b in payload["blocks"] for f in b.get("fields", [])]
    assert texts[0].startswith("*BREAK GLASS: on-call access granted at once, review pending*\n")
    assert payload["text"] == ("[prod] r-0123456789ab: carl broke glass: SELECT on hr_prod (employees, salaries) "
                               "for 1h, granted at once")
    assert "*Break-glass review*\npending" in fields
    assert texts[-1] == ("*To review:* `jitproxy request approve r-0123456789ab` keeps it; "
                         "`jitproxy request deny r-0123456789ab --comment '...'` revokes it at once")
    assert "<!channel>" not in str(payload)

    reviewed = slack_payload("request.reviewed", _break_glass(review="denied by lena", actor="lena",
                                                              status="revoked", review_command=None))
    assert reviewed["text"].endswith("lena reviewed carl's break-glass access to SELECT on hr_prod "
                                     "(employees, salaries): denied by lena")
    assert not any("To review" in b.get("text", {}).get("text", "") for b in reviewed["blocks"])


def test_the_slack_message_of_a_break_glass_request_reviews_it() -> None:
    text, blocks = render(_break_glass(status_by="jitproxy"))
    assert text.endswith(": approved")
    assert "*BREAK GLASS* (granted at once, on call): review pending; Approve keeps it, Deny revokes it at once" \
        in blocks[0]["text"]["text"]
    (actions,) = [b for b in blocks if b["type"] == "actions"]
    assert actions["elements"][1]["confirm"]["text"]["text"] == "Its access is revoked at once."
    _, blocks = render(_break_glass(review="approved by lena"))
    assert not [b for b in blocks if b["type"] == "actions"]
    assert "review approved by lena" in blocks[0]["text"]["text"]
