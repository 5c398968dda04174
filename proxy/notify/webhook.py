"""Webhook notifications of access-request lifecycle events, so approvers hear about requests.

Design
------
* The request workflow calls `WebhookNotifier.notify(event, request)`. It is synchronous, cheap
  and never blocks or raises: it snapshots the request (a JSON round-trip, so the caller may go on
  mutating its dict, and values such as datetimes become strings) and puts one delivery on the
  bounded queue of every target subscribed to the event. A full queue drops the delivery (counted
  in `dropped`, logged as a warning): granting or denying access never waits on Slack.
* Each target has its own queue and its own worker task (started by `start()`), which delivers
  that queue in order. A slow or broken target therefore delays only its own deliveries, never
  another target's, not even by its timeout: approvers on a healthy channel are told at once.
* Each attempt is bounded by the target's `timeout_s` (a total deadline, not only httpx's
  per-read timeout, so a receiver trickling bytes cannot hold a worker). Connection errors,
  timeouts, 429 and 5xx are retried up to `max_attempts` in all, after `backoff_s * 2**(n-1)`
  seconds (at least the receiver's Retry-After in seconds, capped at 30 s). Other answers
  (3xx, 4xx) are final: a wrong or revoked webhook does not improve with retries. Redirects are
  not followed.
* `close(drain_timeout_s)` stops taking events, delivers what is queued within the timeout, then
  cancels the workers. Every delivery (one event to one target) ends in exactly one of the
  counters: `sent` (a 2xx answer), `failed` (given up, or cut off by `close`), `dropped` (never
  attempted: queue full, notifier closed, still queued when `close` gave up).
* A webhook URL is a credential (anyone holding a Slack incoming-webhook URL can post to the
  channel), so it is never logged: logs name the target (`name`) and its `host` only, error texts
  are scrubbed of the URL, `repr(WebhookTarget)` leaves out `url` and `secret`, and a filter on the
  "httpx" logger redacts the URL from httpx's own per-request INFO line.

Formats
-------
"json" posts ``{"event": ..., "request": {...}, "sent_at": "2024-05-01T12:00:00Z"}``.
"slack" posts a Slack incoming-webhook message: ``{"text": <one-line summary>, "blocks": [...]}``
of mrkdwn section blocks. Every user-provided value is escaped (``&``, ``<``, ``>``) so a reason
cannot carry links or mentions such as ``<!channel>``, and the text objects are `verbatim` so
Slack does not turn a bare ``@channel`` into a mention either.

Every request carries ``Content-Type: application/json``, ``User-Agent: jitproxy``,
``X-Jitproxy-Event`` and ``X-Jitproxy-Delivery`` (a random id, the same on every retry of the
delivery and for every target of the event: receivers may use it to ignore a retried duplicate).

Verifying a signed delivery
---------------------------
With `secret` set on a target, each attempt also carries::

    X-Jitproxy-Timestamp: <unix seconds when the attempt was made>
    X-Jitproxy-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.{raw body}")>

A receiver recomputes the HMAC over the timestamp header, a ".", and the raw request body bytes
(before any JSON parsing), compares it with `hmac.compare_digest`, and rejects timestamps more
than a few minutes from its clock so that a captured request cannot be replayed later::

    expected = "sha256=" + hmac.new(secret.encode(), ts.encode() + b"." + body, "sha256").hexdigest()
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

import httpx
import structlog

EVENTS: frozenset[str] = frozenset(
    {"request.created", "request.approved", "request.denied", "request.expired", "request.cancelled",
     "request.revoked", "request.released", "grant.break_glass", "request.break_glass", "request.reviewed"}
)
Format = Literal["slack", "json"]
USER_AGENT = "jitproxy"
SIGNATURE_HEADER = "X-Jitproxy-Signature"
TIMESTAMP_HEADER = "X-Jitproxy-Timestamp"
EVENT_HEADER = "X-Jitproxy-Event"
DELIVERY_HEADER = "X-Jitproxy-Delivery"

_MAX_RETRY_AFTER_S = 30.0  # a receiver asking for longer would stall the target's queue
_REDACTED = "<redacted>"


# -- targets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WebhookTarget:
    """Where to post, in which format, for which events.

    `url` and `secret` are credentials: they are left out of repr and never logged. `name`
    (default: the URL's host) is what logs call the target."""

    url: str = field(repr=False)
    format: Format
    events: frozenset[str] = EVENTS
    timeout_s: float = 5.0
    name: str = ""
    secret: str | None = field(default=None, repr=False)
    host: str = field(init=False, default="")  # derived from url: safe to log

    def __post_init__(self) -> None:
        host = _url_host(self.url, self.name)
        label = f"webhook {self.name or host}"
        if self.format not in ("slack", "json"):
            raise ValueError(f"{label}: format must be 'slack' or 'json', not {self.format!r}")
        events = frozenset(self.events)  # accept any iterable of names, keep the frozen type
        if unknown := events - EVENTS:
            raise ValueError(f"{label}: unknown events {sorted(unknown)}; known: {sorted(EVENTS)}")
        if not events:
            raise ValueError(f"{label}: subscribes to no event")
        if not self.timeout_s > 0:
            raise ValueError(f"{label}: timeout_s must be positive")
        object.__setattr__(self, "events", events)
        object.__setattr__(self, "host", host)
        object.__setattr__(self, "name", self.name or host)


def _url_host(url: str, name: str) -> str:
    """The URL's host, or ValueError. The message never quotes the URL: it is a credential."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        label = f"webhook {name or '(unnamed)'}"
        raise ValueError(f"{label}: the URL must be http(s)://host/... (the value is not shown)")
    return parsed.host


def _url_secrets(url: str) -> set[str]:
    """The parts of a webhook URL that must not reach a log: all of it, its path and query
    (where Slack puts the secret) and any user:password."""
    parsed = httpx.URL(url)
    parts = {url, str(parsed), parsed.raw_path.decode("ascii"), parsed.path}
    parts |= {parsed.query.decode("ascii"), parsed.userinfo.decode("ascii")}
    # "/" or "" alone is no secret, and redacting it would mangle every message.
    return {p for p in parts if len(p) > 1}


def _redact(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):  # the whole URL before its path
        text = text.replace(secret, _REDACTED)
    return text


class _RedactWebhookUrls(logging.Filter):
    """httpx logs every request at INFO as 'HTTP Request: POST <full URL> ...': with stdlib
    logging turned up to INFO that line would print the webhook secret. Redact it there."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            message = record.getMessage()
            redacted = _redact(message, self.secrets)
            if redacted != message:
                record.msg, record.args = redacted, None
        return True


_HTTPX_REDACTOR = _RedactWebhookUrls()
logging.getLogger("httpx").addFilter(_HTTPX_REDACTOR)


# -- payloads ---------------------------------------------------------------------------------


def json_payload(event: str, request: Mapping[str, Any], sent_at: datetime) -> dict[str, Any]:
    """The "json" format: the event, the request as given, and when this attempt was made."""
    return {"event": event, "request": dict(request), "sent_at": _iso_utc(sent_at)}


def _iso_utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def encode_body(payload: Mapping[str, Any]) -> bytes:
    """The exact bytes posted (and signed)."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The X-Jitproxy-Signature value: HMAC-SHA256 of f"{timestamp}.{body}" with the secret."""
    digest = hmac.new(secret.encode("utf-8"), timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


# Slack: text objects are limited to 3000 characters and section fields to 2000.
_MAX_REASON = 500
_MAX_FIELD = 1000
_MAX_TABLES = 20
_MAX_APPROVALS = 10
_BROADCAST = re.compile(r"@(channel|here|everyone)\b", re.IGNORECASE)
_PARTIAL_ENTITY = re.compile(r"&[a-z]*$")
_WHITESPACE = re.compile(r"\s+")

_TITLES = {
    "request.created": "New access request",
    "request.approved": "Access request approved",
    "request.denied": "Access request denied",
    "request.expired": "Access request expired",
    "request.cancelled": "Access request cancelled",
    "request.revoked": "Access revoked",
    "request.released": "Access given back",
    "grant.break_glass": "BREAK GLASS: direct grant beyond the environment's maximum",
    "request.break_glass": "BREAK GLASS: on-call access granted at once, review pending",
    "request.reviewed": "Break-glass access reviewed",
}
_SUMMARIES = {
    "request.created": "{requester} requests {what} for {duration}",
    "request.approved": "{actor} approved {requester}'s request for {what}",
    "request.denied": "{actor} denied {requester}'s request for {what}",
    "request.expired": "{requester}'s request for {what} expired without a decision",
    "request.cancelled": "{actor} cancelled {requester}'s request for {what}",
    "request.revoked": "{actor} revoked {requester}'s access to {what}",
    "request.released": "{requester} gave back their access to {what} early",
    "grant.break_glass": "{actor} broke glass: {requester} gets {what} for {duration}",
    "request.break_glass": "{requester} broke glass: {what} for {duration}, granted at once",
    "request.reviewed": "{actor} reviewed {requester}'s break-glass access to {what}: {review}",
}


def escape_mrkdwn(text: object) -> str:
    """Slack's control characters made literal: '<' starts links and mentions (<!channel>,
    <@U123>, <http://x|y>), '&' entities. A bare @channel is neutralised too (zero-width space),
    in case a client ever parses it despite `verbatim`."""
    escaped = str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _BROADCAST.sub("@\u200b\\1", escaped)


def _mrkdwn(value: object, limit: int = _MAX_FIELD) -> str:
    """A user-provided value as one escaped line, cut to `limit` without splitting an entity."""
    text = escape_mrkdwn(_WHITESPACE.sub(" ", str(value)).strip())
    if len(text) <= limit:
        return text
    return _PARTIAL_ENTITY.sub("", text[: limit - 1]) + "…"


def _code(value: object) -> str:
    # A backtick would close the code span early; Slack renders entities inside code as text.
    return "`" + _mrkdwn(str(value).replace("`", "'")) + "`"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def _duration(seconds: object) -> str:
    try:
        remaining = int(seconds)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return str(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, remaining = divmod(remaining, size)
        if count:
            parts.append(f"{count}{unit}")
    return " ".join(parts) or "0s"


def _listing(values: object, limit: int = _MAX_TABLES) -> str:
    items = [str(v) for v in values] if isinstance(values, (list, tuple)) else [str(values or "")]
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _mrkdwn_text(text: str) -> dict[str, Any]:
    # verbatim: Slack otherwise auto-links channel names and "certain mentions" in the text.
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn_text(text)}


def _summary(event: str, request: Mapping[str, Any]) -> str:
    """One escaped line: who, what, and what happened."""
    what = (
        f"{_mrkdwn(_listing(request.get('privileges', [])))} on {_mrkdwn(request.get('db', '?'))}"
        f" ({_mrkdwn(_listing(request.get('tables', [])))})"
    )
    line = _SUMMARIES[event].format(
        requester=_mrkdwn(request.get("requester", "?")),
        actor=_mrkdwn(request.get("actor") or "someone"),
        what=what,
        duration=_mrkdwn(_duration(request.get("duration_s"))),
        review=_mrkdwn(request.get("review") or "?"),
    )
    return f"[{_mrkdwn(request.get('environment', '?'))}] {_mrkdwn(request.get('id', '?'))}: {line}"


def _fields(request: Mapping[str, Any]) -> dict[str, Any]:
    pairs = [
        ("Requester", _mrkdwn(request.get("requester", "?"))),
        ("Database", _code(request.get("db", "?"))),
        ("Tables", _mrkdwn(_listing(request.get("tables", [])))),
        ("Privileges", _mrkdwn(_listing(request.get("privileges", [])))),
        ("Duration", _mrkdwn(_duration(request.get("duration_s")))),
        ("Environment", _mrkdwn(request.get("environment", "?"))),
        ("Status", _mrkdwn(request.get("status", "?"))),
    ]
    if request.get("instance") not in (None, "*"):
        pairs.insert(1, ("Instance", _code(request["instance"])))
    if request.get("access_until"):
        pairs.append(("Access until", _mrkdwn(request["access_until"])))
    if request.get("break_glass"):  # an on-call person's request: its review after the fact
        pairs.append(("Break-glass review", _mrkdwn(request.get("review") or "?")))
    return {"type": "section", "fields": [_mrkdwn_text(f"*{label}*\n{value}") for label, value in pairs]}


def _reason(request: Mapping[str, Any]) -> str:
    # Cut before escaping (escaping lengthens it) and keep its line breaks: reasons are prose.
    reason = _clip(str(request.get("reason") or "").strip(), _MAX_REASON)
    return "*Reason*\n" + (escape_mrkdwn(reason) if reason else "_(none given)_")


def _approvals(request: Mapping[str, Any]) -> str | None:
    approvals = request.get("approvals") or []
    if not isinstance(approvals, list) or not approvals:
        return None
    lines = []
    for approval in approvals[:_MAX_APPROVALS]:
        a = approval if isinstance(approval, Mapping) else {}
        comment = f": {_mrkdwn(a['comment'], 300)}" if a.get("comment") else ""
        lines.append(f"• *{_mrkdwn(a.get('approver', '?'))}* {_mrkdwn(a.get('decision', '?'))}{comment}")
    return "*Decisions*\n" + "\n".join(lines)


_LINKABLE = re.compile(r"^https?://[^\s<>|\"'`]+/console/requests/[A-Za-z0-9_-]{1,64}$")


def console_link(request: Mapping[str, Any]) -> dict[str, Any] | None:
    """A block linking to the request's page in the web console (its `console_url`, set by the
    workflow when the console's address is known); None without one. Only a URL that cannot
    break out of Slack's <url|text> syntax is linked."""
    url = request.get("console_url")
    if not isinstance(url, str) or not _LINKABLE.match(url):
        return None
    return _section(f"<{url}|Open request {_mrkdwn(request.get('id', '?'))} in the console>")


def slack_payload(event: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """The "slack" format: a summary line (also the notification text) and section blocks."""
    summary = _summary(event, request)
    blocks = [_section(f"*{_TITLES[event]}*\n{summary}"), _fields(request), _section(_reason(request))]
    if decisions := _approvals(request):
        blocks.append(_section(decisions))
    if event == "request.created" and request.get("approve_command"):
        blocks.append(_section(f"*To approve:* {_code(request['approve_command'])}"))
    if request.get("review_command") and request.get("revoke_command"):  # break glass, not reviewed yet
        blocks.append(_section(f"*To review:* {_code(request['review_command'])} keeps it; "
                               f"{_code(request['revoke_command'])} revokes it at once"))
    if link := console_link(request):
        blocks.append(link)
    return {"text": summary, "blocks": blocks}


def render(
    target: WebhookTarget, event: str, request: Mapping[str, Any], delivery_id: str, now: datetime
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one attempt (signed at `now` when the target has a secret)."""
    payload = slack_payload(event, request) if target.format == "slack" else json_payload(event, request, now)
    body = encode_body(payload)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        EVENT_HEADER: event,
        DELIVERY_HEADER: delivery_id,
    }
    if target.secret:
        timestamp = str(int(now.timestamp()))
        headers[TIMESTAMP_HEADER] = timestamp
        headers[SIGNATURE_HEADER] = sign(target.secret, timestamp, body)
    return body, headers


# -- delivery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Delivery:
    event: str
    request: dict[str, Any]  # a private snapshot, shared read-only by the targets' queues
    id: str


@dataclass(frozen=True)
class _Outcome:
    ok: bool
    retryable: bool = False
    status: int | None = None
    error: str | None = None
    retry_after: float | None = None


def _snapshot(request: Mapping[str, Any]) -> dict[str, Any]:
    """A deep, JSON-safe copy: what is sent is the request as it was when notify was called."""
    snapshot = json.loads(json.dumps(request, default=str))
    if not isinstance(snapshot, dict):
        raise TypeError("the request must be a mapping")
    return snapshot


def _running_on(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _retry_after(response: httpx.Response) -> float | None:
    # Only the delta-seconds form: Slack and most gateways send that; an HTTP date is ignored.
    try:
        value = float(response.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value if value >= 0 else None


def _classify(response: httpx.Response, target: WebhookTarget) -> _Outcome:
    status = response.status_code
    if 200 <= status < 300:
        return _Outcome(ok=True, status=status)
    retryable = status == 429 or status >= 500
    # Slack answers errors in the body ("invalid_payload", "no_service"): worth a short log line.
    detail = _redact(_clip(_WHITESPACE.sub(" ", response.text), 200), _url_secrets(target.url))
    return _Outcome(
        ok=False, retryable=retryable, status=status, error=detail or None,
        retry_after=_retry_after(response) if retryable else None,
    )


class WebhookNotifier:
    """Posts access-request events to webhook targets in the background (see the module doc)."""

    def __init__(
        self,
        targets: Iterable[WebhookTarget],
        *,
        client: httpx.AsyncClient | None = None,
        max_attempts: int = 3,
        backoff_s: float = 0.5,
        queue_size: int = 1000,
    ) -> None:
        if max_attempts < 1 or backoff_s < 0 or queue_size < 1:
            raise ValueError("max_attempts and queue_size must be at least 1, backoff_s not negative")
        self.targets = tuple(targets)
        # One bounded queue per target (a list, not a dict: two targets may compare equal).
        self._queues = [(t, asyncio.Queue[_Delivery](maxsize=queue_size)) for t in self.targets]
        self._client = client
        self._owns_client = client is None  # a caller's client is the caller's to close
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._workers: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        # Per instance rather than module level: the CLI configures structlog with
        # cache_logger_on_first_use, which would pin a module-level logger to its first setup.
        self._log = structlog.get_logger("jitproxy.notify")
        for target in self.targets:
            _HTTPX_REDACTOR.secrets |= _url_secrets(target.url)

    async def __aenter__(self) -> WebhookNotifier:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- the caller's side: never blocks, never raises --

    def notify(self, event: str, request: Mapping[str, Any]) -> None:
        """Queue `event` about `request` for every subscribed target. Safe to call before
        `start()` (delivered once started) and, after `start()`, from other threads too."""
        try:
            self._notify(event, request)
        except Exception as exc:  # a notification problem must never fail the request workflow
            with contextlib.suppress(Exception):  # not even a broken logging setup
                self._log.error("notify.error", request_event=event, error=type(exc).__name__)

    def _notify(self, event: str, request: Mapping[str, Any]) -> None:
        if event not in EVENTS:
            self._log.warning("notify.unknown_event", request_event=event)
            return
        if not any(event in target.events for target, _ in self._queues):
            return
        try:
            delivery = _Delivery(event, _snapshot(request), uuid.uuid4().hex)
        except (TypeError, ValueError) as exc:
            self._log.warning("notify.unserializable_request", request_event=event, error=type(exc).__name__)
            self.dropped += sum(event in target.events for target, _ in self._queues)
            return
        loop = self._loop
        if loop is not None and not _running_on(loop):
            # asyncio.Queue is not thread-safe: hand the delivery to the loop's thread.
            loop.call_soon_threadsafe(self._enqueue, delivery)
        else:
            self._enqueue(delivery)

    def _enqueue(self, delivery: _Delivery) -> None:
        for target, queue in self._queues:
            if delivery.event not in target.events:
                continue
            if self._closed:
                self._drop(target, delivery, "notifier closed")
                continue
            try:
                queue.put_nowait(delivery)
            except asyncio.QueueFull:
                self._drop(target, delivery, "queue full")

    def _drop(self, target: WebhookTarget, delivery: _Delivery, why: str) -> None:
        self.dropped += 1
        self._log.warning(
            "notify.dropped", reason=why, dropped_total=self.dropped, **_log_fields(target, delivery)
        )

    # -- lifecycle --

    async def start(self) -> None:
        """Start one delivery worker per target (idempotent)."""
        if self._closed:
            raise RuntimeError("WebhookNotifier is closed")
        if self._workers:
            return
        self._loop = asyncio.get_running_loop()
        if self._client is None:
            self._client = httpx.AsyncClient(follow_redirects=False)
        self._workers = [
            asyncio.create_task(self._run(target, queue), name=f"jitproxy-notify-{target.name}")
            for target, queue in self._queues
        ]

    async def close(self, drain_timeout_s: float = 5.0) -> None:
        """Stop taking events, deliver what is queued within `drain_timeout_s`, then cancel the
        workers (an attempt in flight counts as failed, what is still queued as dropped)."""
        if self._closed:
            return
        self._closed = True
        try:
            if self._workers and not await self._drain(drain_timeout_s):
                pending = sum(q.qsize() for _, q in self._queues)
                self._log.warning("notify.close_timeout", timeout_s=drain_timeout_s, still_queued=pending)
        finally:
            for worker in self._workers:
                worker.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._drop_queued()
            if self._owns_client and self._client is not None:
                await self._client.aclose()

    async def _drain(self, timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                for _, queue in self._queues:
                    await queue.join()
        except TimeoutError:
            return False
        return True

    def _drop_queued(self) -> None:
        for target, queue in self._queues:
            while not queue.empty():
                self._drop(target, queue.get_nowait(), "still queued at close")

    # -- the worker's side --

    async def _run(self, target: WebhookTarget, queue: asyncio.Queue[_Delivery]) -> None:
        """Deliver one target's queue, in order, until cancelled."""
        while True:
            delivery = await queue.get()
            try:
                await self._handle(target, delivery)
            except Exception as exc:  # a bug (even in logging) must not stop later deliveries
                with contextlib.suppress(Exception):
                    self._log.error("notify.worker_error", target=target.name, error=type(exc).__name__)
            finally:
                queue.task_done()

    async def _handle(self, target: WebhookTarget, delivery: _Delivery) -> None:
        """Deliver one event to one target and account for it in `sent` or `failed`."""
        try:
            outcome, attempts = await self._deliver(target, delivery)
        except asyncio.CancelledError:
            self._fail(target, delivery, _Outcome(ok=False, error="cancelled at close"), None)
            raise
        except Exception as exc:  # e.g. a payload that cannot be rendered: final, not retried
            outcome, attempts = _Outcome(ok=False, error=type(exc).__name__), None
        if outcome.ok:
            self.sent += 1
            fields = _log_fields(target, delivery)
            self._log.info("notify.sent", status=outcome.status, attempts=attempts, **fields)
        else:
            self._fail(target, delivery, outcome, attempts)

    async def _deliver(self, target: WebhookTarget, delivery: _Delivery) -> tuple[_Outcome, int]:
        """Attempt until success, a final answer, or `max_attempts`; the last outcome."""
        attempt = 1
        while True:
            outcome = await self._attempt(target, delivery)
            if outcome.ok or not outcome.retryable or attempt >= self._max_attempts:
                return outcome, attempt
            delay = self._retry_delay(attempt, outcome.retry_after)
            self._log.info(
                "notify.retry", attempt=attempt, status=outcome.status, error=outcome.error,
                retry_in_s=round(delay, 3), **_log_fields(target, delivery),
            )
            await asyncio.sleep(delay)
            attempt += 1

    async def _attempt(self, target: WebhookTarget, delivery: _Delivery) -> _Outcome:
        assert self._client is not None  # set by start(), which started this worker
        now = datetime.now(timezone.utc)
        body, headers = render(target, delivery.event, delivery.request, delivery.id, now)
        try:
            async with asyncio.timeout(target.timeout_s):
                response = await self._client.post(
                    target.url, content=body, headers=headers, timeout=target.timeout_s
                )
        except (TimeoutError, httpx.TimeoutException):
            return _Outcome(ok=False, retryable=True, error="timeout")
        except httpx.TransportError as exc:
            # Messages name the peer address at most, but scrub them: they are about our URL.
            detail = _redact(str(exc), _url_secrets(target.url))
            error = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
            return _Outcome(ok=False, retryable=True, error=error)
        return _classify(response, target)

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float:
        delay = self._backoff_s * 2 ** (attempt - 1)
        if retry_after is not None:
            delay = max(delay, min(retry_after, _MAX_RETRY_AFTER_S))
        return delay

    def _fail(
        self, target: WebhookTarget, delivery: _Delivery, outcome: _Outcome, attempts: int | None
    ) -> None:
        self.failed += 1
        self._log.warning(
            "notify.failed", status=outcome.status, error=outcome.error, attempts=attempts,
            **_log_fields(target, delivery),
        )


def _log_fields(target: WebhookTarget, delivery: _Delivery) -> dict[str, Any]:
    """What logs say about a delivery: never the URL, only the target's name and host."""
    return {
        "target": target.name,
        "host": target.host,
        "request_event": delivery.event,  # not "event": structlog's key for the log message
        "request_id": delivery.request.get("id"),
        "delivery_id": delivery.id,
    }
