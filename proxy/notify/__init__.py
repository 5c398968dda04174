"""Notifications about access requests: webhooks (Slack or JSON) for approvers; approvals from
Slack with buttons in proxy.notify.slack (not imported here: slack_sdk loads only when configured)."""

from proxy.notify.webhook import (
    EVENTS,
    WebhookNotifier,
    WebhookTarget,
    encode_body,
    escape_mrkdwn,
    json_payload,
    render,
    sign,
    slack_payload,
)

__all__ = [
    "EVENTS",
    "WebhookNotifier",
    "WebhookTarget",
    "encode_body",
    "escape_mrkdwn",
    "json_payload",
    "render",
    "sign",
    "slack_payload",
]
