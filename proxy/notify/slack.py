"""Approvals from Slack: every new access request is posted to a channel as a message with
Approve / Deny buttons; a click comes back to the admin API (POST /v1/slack/interactions,
proxy.api.slack) and is decided by the workflow service exactly as `jitproxy request
approve|deny` is (no self-approval, approver groups, several approvers); the message is then
updated (chat.update) whenever the request changes: each approval with how far it has got ("1 of
2 approvals, needs one from group:dba"), approved, denied, cancelled, expired, revoked, released
(the status the workflow shows everywhere, proxy.workflow.status).

Trust
-----
* A click is believed only when Slack signed it: `X-Slack-Signature` is the HMAC-SHA256 of
  "v0:<timestamp>:<raw body>" with the app's signing secret (slack_sdk's `SignatureVerifier`),
  and `X-Slack-Request-Timestamp` is within 5 minutes of our clock (a captured click cannot be
  replayed later). Unsigned, stale or wrongly signed posts are answered 401 and change nothing.
* The clicking Slack user is mapped to a jitproxy person by the configuration only
  (`slack.people`: a Slack user id, or the email of the Slack account as users.info reports it
  when Slack has confirmed it). A click carries no token, so the person's approver groups are
  the ones configured there. Anyone else is refused (403) and told why, privately.
* The bot token and the signing secret come from environment variables and are never logged:
  logs name the Slack API method and Slack's error code only (slack_sdk redacts the
  Authorization header from its own debug logs).

Delivery
--------
`notify(event, body)` (called by the workflow service inside its transaction's thread) only
queues the request id: a worker thread reads the request's current state from the store and
posts or updates the message, so a slow Slack never delays a decision, and an update always
shows the latest state (two quick events make two updates that both show the final one).
The message of each request is remembered in this process (request id -> channel, ts); a click
names its own message, so a decision made from Slack updates it even after a restart. A decision
made with the CLI on another replica, or after a restart, leaves the old message as it was
(its buttons then answer with the request's real status).
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import orjson
import structlog
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler
from slack_sdk.signature import SignatureVerifier

from proxy.authz.model import Principal
# The webhook's Slack blocks (escaped fields, reason, decisions): one look for both kinds of message.
from proxy.notify.webhook import _approvals, _fields, _listing, _mrkdwn, _reason, console_link, escape_mrkdwn
from proxy.store.base import RequestStatus
from proxy.workflow.status import SYSTEM
from proxy.workflow.service import WorkflowError

if TYPE_CHECKING:
    from proxy.config import SlackConfig
    from proxy.workflow.service import AccessService

log = structlog.get_logger("jitproxy.slack")

APPROVE = "jitproxy_approve"  # the buttons' action_id; their value is the request id
DENY = "jitproxy_deny"
MAX_AGE_S = 300  # Slack's own rule: a signed request older than 5 minutes is refused
_REMEMBERED = 10_000  # request -> message entries kept (oldest forgotten first)
_EMAIL_TTL_S = 600.0  # users.info answers are reused this long (Slack rate-limits it)


@dataclass(frozen=True)
class Person:
    """A jitproxy person as `slack.people` names them: who, and the groups they decide as."""

    user: str
    groups: tuple[str, ...] = ()


@dataclass(frozen=True)
class Answer:
    """What the interactions endpoint answers: HTTP status and body, the person (for the API
    call's audit event), and whether grants may have changed (the proxy then refreshes)."""

    status: int
    body: dict[str, Any]
    principal: Principal | None = None
    changed: bool = False


@dataclass(frozen=True)
class _Click:
    request_id: str
    approve: bool
    slack_user: str
    team: str | None
    channel: str | None
    message_ts: str | None


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class _Clock:
    """slack_sdk's clock interface over ours (tests move time)."""

    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now

    def now(self) -> float:
        return self._now()


@dataclass
class _Stats:
    posted: int = 0
    updated: int = 0
    failed: int = 0
    dropped: int = 0


class SlackApprovals:
    """The Slack side of the workflow: `notify` for the service, `handle_interaction` for the
    API. `bind(service)` before use (the service takes `notify` when it is built)."""

    def __init__(self, client: WebClient, channel: str, signing_secret: str, people: Mapping[str, Person], *,
                 team_id: str | None = None, clock: Callable[[], float] = time.time, max_queue: int = 1000) -> None:
        self._client = client
        self._channel = channel
        self._verifier = SignatureVerifier(signing_secret, clock=_Clock(clock))
        self._clock = clock
        self._by_id = {key: person for key, person in people.items() if "@" not in key}
        self._by_email = {key.lower(): person for key, person in people.items() if "@" in key}
        self._team_id = team_id
        self._service: AccessService | None = None
        self._messages: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._emails: dict[str, tuple[str | None, float]] = {}
        self._lock = threading.Lock()
        self._jobs: queue.Queue[tuple[Any, ...] | None] = queue.Queue(max_queue)
        self._thread: threading.Thread | None = None
        self.stats = _Stats()

    def __repr__(self) -> str:  # never the token or the secret
        return f"SlackApprovals(channel={self._channel!r}, people={len(self._by_id) + len(self._by_email)})"

    def bind(self, service: AccessService) -> None:
        self._service = service

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="jitproxy-slack", daemon=True)
            self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Send what is queued (within `timeout_s`), then stop the worker."""
        if self._thread is None:
            return
        try:
            self._jobs.put(None, timeout=timeout_s)
        except queue.Full:
            pass
        self._thread.join(timeout_s)
        self._thread = None

    # -- the workflow's side -----------------------------------------------------------------------

    def notify(self, event: str, body: Mapping[str, Any]) -> None:
        """Queue the request's message for posting (a new request) or updating (any change)."""
        request_id = body.get("id")
        if event.startswith("request.") and isinstance(request_id, str):
            # A break-glass request is new to the channel too: approved at once, its review pending.
            self._queue(("show", event in ("request.created", "request.break_glass"), request_id))

    def _queue(self, job: tuple[Any, ...]) -> None:
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self.stats.dropped += 1
            log.warning("slack.dropped", job=job[0], dropped_total=self.stats.dropped)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                self._do(job)
            except SlackApiError as e:
                self.stats.failed += 1
                log.warning("slack.api_error", job=job[0], error=e.response.get("error"))
            except Exception as e:  # noqa: BLE001 - Slack down must not stop later messages
                self.stats.failed += 1
                log.warning("slack.failed", job=job[0], error=type(e).__name__)

    def _do(self, job: tuple[Any, ...]) -> None:
        if job[0] == "show":
            self._show(job[2], new=job[1])
        elif job[0] == "tell":
            self._client.chat_postEphemeral(channel=job[1], user=job[2], text=job[3])

    def _show(self, request_id: str, *, new: bool) -> None:
        """Post the request's message (new) or update the one posted; its current state."""
        request = self._require_service().store.get_request(request_id)
        if request is None:
            return
        service = self._require_service()
        text, blocks = render({**service.view(request), "console_url": service.request_url(request_id)})
        where = self._message_of(request_id)
        if where is not None:
            self._client.chat_update(channel=where[0], ts=where[1], text=text, blocks=blocks)
            self.stats.updated += 1
        elif new:
            response = self._client.chat_postMessage(channel=self._channel, text=text, blocks=blocks)
            self._remember(request_id, str(response["channel"]), str(response["ts"]))
            self.stats.posted += 1

    def _remember(self, request_id: str, channel: str, ts: str) -> None:
        with self._lock:
            self._messages[request_id] = (channel, ts)
            self._messages.move_to_end(request_id)
            while len(self._messages) > _REMEMBERED:
                self._messages.popitem(last=False)

    def _message_of(self, request_id: str) -> tuple[str, str] | None:
        with self._lock:
            return self._messages.get(request_id)

    def _require_service(self) -> AccessService:
        if self._service is None:
            raise RuntimeError("SlackApprovals.bind(service) was not called")
        return self._service

    # -- Slack's side: a click -----------------------------------------------------------------

    def handle_interaction(self, body: bytes, headers: Mapping[str, str]) -> Answer:
        """A POST from Slack's interactivity: verified, mapped to a person, decided. `headers`
        with lower-case names. Synchronous (store transaction, maybe users.info): call it in a
        worker thread."""
        problem = self._signature_problem(body, {k.lower(): v for k, v in headers.items()})
        if problem is not None:
            return Answer(401, {"detail": problem})
        try:
            click = _click(body)
            self._check_team(click)
            who = self._principal(click)
        except _Refused as e:
            return Answer(e.status, {"detail": e.detail})
        return self._decide(click, who)

    def _signature_problem(self, body: bytes, headers: Mapping[str, str]) -> str | None:
        """Why the post is not Slack's signed request, or None."""
        timestamp, signature = headers.get("x-slack-request-timestamp"), headers.get("x-slack-signature")
        if not timestamp or not signature:
            return "unsigned: X-Slack-Signature and X-Slack-Request-Timestamp are required"
        try:
            signed_at = int(timestamp)
        except ValueError:
            return "bad signature: X-Slack-Request-Timestamp is not a Unix time"
        if abs(self._clock() - signed_at) > MAX_AGE_S:
            return "stale: signed more than 5 minutes from this proxy's clock (a replay, or a clock off)"
        try:
            valid = self._verifier.is_valid(body, timestamp, signature)
        except UnicodeDecodeError:
            valid = False
        return None if valid else "bad signature"

    def _check_team(self, click: _Click) -> None:
        if self._team_id is not None and click.team != self._team_id:
            raise _Refused(403, "this Slack workspace is not the one configured (slack.team_id)")

    def _principal(self, click: _Click) -> Principal:
        person = self._by_id.get(click.slack_user)
        if person is None and self._by_email:
            email = self._email_of(click.slack_user)
            person = self._by_email.get(email.lower()) if email else None
        if person is None:
            detail = f"Slack user {click.slack_user} is nobody in jitproxy (slack.people names who may decide)"
            self._tell(click, detail)
            raise _Refused(403, detail)
        return Principal(person.user, person.groups)

    def _email_of(self, slack_user: str) -> str | None:
        """The Slack account's email, when Slack confirmed it (users.info; cached a while)."""
        now = self._clock()
        cached = self._emails.get(slack_user)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            user = self._client.users_info(user=slack_user).get("user") or {}
        except SlackApiError as e:
            log.warning("slack.users_info_failed", error=e.response.get("error"))
            return None
        email = _confirmed_email(user, self._team_id)
        self._emails[slack_user] = (email, now + _EMAIL_TTL_S)
        return email

    def _decide(self, click: _Click, who: Principal) -> Answer:
        service = self._require_service()
        if click.channel and click.message_ts:
            self._remember(click.request_id, click.channel, click.message_ts)  # this message it is
        decide = service.approve if click.approve else service.deny
        try:
            request = decide(who, click.request_id, f"via Slack ({click.slack_user})")
        except WorkflowError as e:
            self._tell(click, f"Not recorded: {e.message}")
            self._queue(("show", False, click.request_id))  # the message may be out of date
            return Answer(e.status, {"detail": e.message}, principal=who)
        return Answer(200, {"request": service.view(request)}, principal=who, changed=True)

    def _tell(self, click: _Click, text: str) -> None:
        """A message only the clicking person sees (queued: the click is answered at once)."""
        if click.channel:
            self._queue(("tell", click.channel, click.slack_user, text))


def _click(body: bytes) -> _Click:
    """The button click in Slack's form-encoded `payload`; _Refused (400) for anything else."""
    try:
        fields = parse_qs(body.decode("utf-8"), strict_parsing=False)
        payload = orjson.loads(fields["payload"][0])
    except (UnicodeDecodeError, KeyError, IndexError, orjson.JSONDecodeError):
        raise _Refused(400, "expected Slack's form field `payload` holding JSON") from None
    if not isinstance(payload, dict) or payload.get("type") != "block_actions":
        raise _Refused(400, "only block_actions (the Approve / Deny buttons) are handled here")
    action = next((a for a in payload.get("actions") or () if isinstance(a, dict)
                   and a.get("action_id") in (APPROVE, DENY)), None)
    user = payload.get("user") or {}
    if action is None or not isinstance(action.get("value"), str) or not isinstance(user.get("id"), str):
        raise _Refused(400, "no jitproxy Approve / Deny action with a request id and a user")
    container = payload.get("container") or {}
    channel = container.get("channel_id") or (payload.get("channel") or {}).get("id")
    return _Click(action["value"], action["action_id"] == APPROVE, user["id"],
                  (payload.get("team") or {}).get("id") or user.get("team_id"),
                  channel if isinstance(channel, str) else None,
                  container.get("message_ts") if isinstance(container.get("message_ts"), str) else None)


def _confirmed_email(user: Mapping[str, Any], team_id: str | None) -> str | None:
    """users.info's email for a live human account Slack confirmed, of our workspace if one is
    configured; else None (a bot, a deactivated account, an unconfirmed or missing email)."""
    if user.get("deleted") or user.get("is_bot") or user.get("is_email_confirmed") is False:
        return None
    if team_id is not None and user.get("team_id") not in (None, team_id):
        return None
    email = (user.get("profile") or {}).get("email")
    return email if isinstance(email, str) and "@" in email else None


# -- what the message says -------------------------------------------------------------------------


def render(request: Mapping[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    """The message for a request as the service shows it (AccessService.view): (notification
    text, blocks), with how far a pending one has got (its `progress`). Buttons only while it is
    pending. Every value people typed is escaped (webhook.escape_mrkdwn)."""
    status = str(request.get("status", "?"))
    progress_text = str(request.get("progress") or "")
    headline = f"*Access request {_mrkdwn(request.get('id', '?'))}: {_mrkdwn(status)}*"
    if progress_text:
        headline += f"\n{_mrkdwn(progress_text)}"
    if status == RequestStatus.PENDING.value and request.get("ends_at"):
        headline += f"\nAccess would end at {_mrkdwn(request['ends_at'])}, however late the approval"
    if (outcome := _outcome(request)) is not None:
        headline += f"\n{outcome}"
    reviewing = bool(request.get("break_glass")) and request.get("review") == "pending"
    if request.get("break_glass"):
        headline += f"\n*BREAK GLASS* (granted at once, on call): review {_mrkdwn(request.get('review') or '?')}"
        if reviewing:
            headline += "; Approve keeps it, Deny revokes it at once"
    blocks = [_section(headline), _fields(request), _section(_reason(request))]
    if decisions := _approvals(request):
        blocks.append(_section(decisions))
    if link := console_link(request):  # the request's page in the web console, when its address is known
        blocks.append(link)
    if status == RequestStatus.PENDING.value or reviewing:
        blocks.append(_buttons(str(request.get("id", "")), review=reviewing))
    return _text(request, status, progress_text), blocks


def _text(request: Mapping[str, Any], status: str, progress_text: str) -> str:
    """The one line a notification shows."""
    what = (f"{_listing(request.get('privileges', []))} on {request.get('db', '?')} "
            f"({_listing(request.get('tables', []))})")
    line = (f"[{request.get('environment', '?')}] {request.get('id', '?')}: {request.get('requester', '?')} "
            f"requests {what}: {status}")
    return escape_mrkdwn(line + (f" ({progress_text})" if progress_text else ""))


def _outcome(request: Mapping[str, Any]) -> str | None:
    """Who decided or ended the request (not "jitproxy": what ends on its own), why, and until
    when access runs."""
    status = request.get("status")
    if status == RequestStatus.PENDING.value:
        return None
    text = f"{_mrkdwn(str(status).capitalize())}"
    if request.get("status_by") and request["status_by"] != SYSTEM:
        text += f" by {_mrkdwn(request['status_by'])}"
    if request.get("status_reason"):
        text += f": {_mrkdwn(request['status_reason'], 300)}"
    if request.get("access_until") and status == RequestStatus.APPROVED.value:
        text += f"; access until {_mrkdwn(request['access_until'])}"
    return text


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text, "verbatim": True}}


def _buttons(request_id: str, review: bool = False) -> dict[str, Any]:
    """Approve / Deny; `review`: of a break-glass request, whose Deny revokes its access."""
    deny_text = ("Its access is revoked at once." if review else "A denied request cannot be approved later.")
    return {"type": "actions", "block_id": "jitproxy_decision", "elements": [
        {"type": "button", "action_id": APPROVE, "style": "primary", "value": request_id,
         "text": {"type": "plain_text", "text": "Approve"}},
        {"type": "button", "action_id": DENY, "style": "danger", "value": request_id,
         "text": {"type": "plain_text", "text": "Deny"},
         "confirm": {"title": {"type": "plain_text", "text": "Deny this request?"},
                     "text": {"type": "plain_text", "text": deny_text},
                     "confirm": {"type": "plain_text", "text": "Deny"},
                     "deny": {"type": "plain_text", "text": "Cancel"}}},
    ]}


# -- from the configuration --------------------------------------------------------------------------


def slack_from_config(cfg: SlackConfig, environ: Mapping[str, str] = os.environ) -> SlackApprovals:
    """The Slack approvals of a `slack:` section; ValueError naming the variable that is unset.
    The token and the secret are read here and kept only by the client and the verifier."""
    token, secret = environ.get(cfg.bot_token_env), environ.get(cfg.signing_secret_env)
    if not token:
        raise ValueError(f"slack.bot_token_env: environment variable {cfg.bot_token_env} is not set")
    if not secret:
        raise ValueError(f"slack.signing_secret_env: environment variable {cfg.signing_secret_env} is not set")
    client = WebClient(token=token, base_url=cfg.api_url, timeout=max(1, round(cfg.timeout_s)),
                       retry_handlers=[ConnectionErrorRetryHandler(), RateLimitErrorRetryHandler(max_retry_count=2)])
    people = {key: Person(p.user, tuple(p.groups)) for key, p in cfg.people.items()}
    return SlackApprovals(client, cfg.channel, secret, people, team_id=cfg.team_id)


__all__ = ["APPROVE", "DENY", "Answer", "Person", "SlackApprovals", "render", "slack_from_config"]
