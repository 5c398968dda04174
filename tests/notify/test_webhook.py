"""WebhookNotifier against a real HTTP receiver on 127.0.0.1 (stdlib ThreadingHTTPServer in a
thread, ephemeral port). pytest-asyncio is not installed: each test runs its coroutine with
`asyncio.run`. Nothing waits with fixed sleeps: `close()` drains the queues before assertions,
and where a test must observe a delivery while others are still in flight it waits on the
receiver's threading.Condition (with a deadline) from a worker thread."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import structlog

from proxy.notify import EVENTS, WebhookNotifier, WebhookTarget, escape_mrkdwn, slack_payload

SECRET_PATH = "/services/T000/B000/SECRETXYZ"


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def sample_request(**overrides: Any) -> dict[str, Any]:
    request: dict[str, Any] = {
        "id": "r-0123456789ab",
        "requester": "alice",
        "db": "hr_prod",
        "tables": ["employees", "salaries"],
        "privileges": ["SELECT"],
        "reason": "INC-42: check a salary export",
        "environment": "prod",
        "status": "pending",
        "duration_s": 3600,
        "access_until": None,
        "approvals": [],
        "actor": "alice",
        "approve_command": "jitproxy request approve r-0123456789ab",
    }
    request.update(overrides)
    return request


# -- the receiver -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Received:
    method: str
    path: str  # without the query
    query: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Receiver:
    """Records every request; answers each path with its scripted statuses in turn, then 200."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self._scripts: dict[str, deque[tuple[int, dict[str, str]]]] = defaultdict(deque)
        self._changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                path, _, query = self.path.partition("?")
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, headers = receiver._record(Received("POST", path, query, headers, body))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def script(self, path: str, *statuses: int, headers: dict[str, str] | None = None) -> None:
        self._scripts[path].extend((s, headers or {}) for s in statuses)

    def _record(self, request: Received) -> tuple[int, dict[str, str]]:
        # Recorded before the answer is sent, so the notifier never sees a 2xx for a request
        # the test cannot see yet.
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()
            script = self._scripts[request.path]
            return script.popleft() if script else (200, {})

    def on(self, path: str) -> list[Received]:
        with self._changed:
            return [r for r in self.requests if r.path == path]

    def wait_for(self, path: str, count: int, timeout_s: float = 5.0) -> list[Received]:
        """Block (a thread, not the event loop) until `path` got `count` requests."""
        with self._changed:
            ok = self._changed.wait_for(lambda: len(self.on(path)) >= count, timeout=timeout_s)
        assert ok, f"{path} got {len(self.on(path))} requests, expected {count}"
        return self.on(path)

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture(autouse=True)
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # The notifier's default client honours HTTP(S)_PROXY; the receiver is local.
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def black_hole() -> Iterator[str]:
    """A URL whose server accepts connections (the kernel's listen backlog does) but never
    answers: every request to it ends in a timeout."""
    sock = socket.create_server(("127.0.0.1", 0), backlog=16)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hole"
    finally:
        sock.close()


def closed_port_url(path: str) -> str:
    """A URL on a port nothing listens on: connection refused."""
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}{path}"


def target(url: str, fmt: str = "json", **kwargs: Any) -> WebhookTarget:
    return WebhookTarget(url=url, format=fmt, **kwargs)  # type: ignore[arg-type]


def notifier(*targets: WebhookTarget, **kwargs: Any) -> WebhookNotifier:
    kwargs.setdefault("backoff_s", 0.01)
    return WebhookNotifier(targets, **kwargs)


# -- formats ----------------------------------------------------------------------------------


def test_json_body_and_headers(receiver: Receiver) -> None:
    async def scenario() -> WebhookNotifier:
        async with notifier(target(receiver.base + "/hook", name="audit")) as n:
            n.notify("request.created", sample_request())
        return n

    n = run(scenario())
    [got] = receiver.on("/hook")
    assert got.method == "POST"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == "jitproxy"
    assert got.headers["x-jitproxy-event"] == "request.created"
    assert "x-jitproxy-signature" not in got.headers
    body = got.json()
    assert set(body) == {"event", "request", "sent_at"}
    assert body["event"] == "request.created"
    assert body["request"] == sample_request()
    assert body["sent_at"].endswith("Z") and "T" in body["sent_at"]
    assert (n.sent, n.failed, n.dropped) == (1, 0, 0)


def test_request_is_snapshotted_when_notified(receiver: Receiver) -> None:
    async def scenario() -> None:
        request = sample_request()
        async with notifier(target(receiver.base + "/hook")) as n:
            n.notify("request.created", request)
            request["reason"] = "changed after notify"  # the caller keeps using its dict

    run(scenario())
    assert receiver.on("/hook")[0].json()["request"]["reason"] == "INC-42: check a salary export"


def test_slack_body_shape_and_escaping(receiver: Receiver) -> None:
    evil = "<!channel> urgent & <https://evil.example|click here> @here"

    async def scenario() -> None:
        async with notifier(target(receiver.base + "/slack", "slack")) as n:
            n.notify("request.created", sample_request(reason=evil, requester="mallory<@U999>"))

    run(scenario())
    [got] = receiver.on("/slack")
    raw = got.body.decode()
    assert "<!channel>" not in raw and "<https://" not in raw and "<@U999>" not in raw
    body = got.json()
    assert set(body) == {"text", "blocks"}
    assert "\n" not in body["text"]
    assert "mallory&lt;@U999&gt;" in body["text"] and "SELECT on hr_prod" in body["text"]
    assert all(block["type"] == "section" for block in body["blocks"])
    texts = [b["text"]["text"] for b in body["blocks"] if "text" in b]
    fields = [f["text"] for b in body["blocks"] for f in b.get("fields", [])]
    assert all(
        t["type"] == "mrkdwn" for b in body["blocks"] for t in ([b["text"]] if "text" in b else b["fields"])
    )
    reason = next(t for t in texts if t.startswith("*Reason*"))
    assert "&lt;!channel&gt; urgent &amp; &lt;https://evil.example|click here&gt; @\u200bhere" in reason
    assert "*Database*\n`hr_prod`" in fields
    assert "*Tables*\nemployees, salaries" in fields
    assert "*Privileges*\nSELECT" in fields
    assert "*Duration*\n1h" in fields
    assert "*Environment*\nprod" in fields
    assert "*Status*\npending" in fields
    assert texts[-1] == "*To approve:* `jitproxy request approve r-0123456789ab`"


def test_slack_names_the_instance_when_the_request_has_one() -> None:
    def fields(**overrides: Any) -> list[str]:
        body = slack_payload("request.created", sample_request(**overrides))
        return [f["text"] for b in body["blocks"] for f in b.get("fields", [])]

    assert "*Instance*\n`hr-prod`" in fields(instance="hr-prod")
    assert not any(f.startswith("*Instance*") for f in fields(instance="*") + fields())


def test_slack_truncates_reason_and_omits_approve_command_after_creation() -> None:
    payload = slack_payload(
        "request.approved",
        sample_request(
            reason="x" * 5000,
            status="approved",
            access_until="2030-01-01T10:00:00+00:00",
            approvals=[{"approver": "bob", "decision": "approve", "comment": "<b>ok</b>", "at": "t"}],
            actor="bob",
        ),
    )
    texts = [b["text"]["text"] for b in payload["blocks"] if "text" in b]
    reason = next(t for t in texts if t.startswith("*Reason*"))
    assert 490 <= len(reason) - len("*Reason*\n") <= 501
    assert not any("approve r-" in t for t in texts)
    assert "*Decisions*\n• *bob* approve: &lt;b&gt;ok&lt;/b&gt;" in texts
    assert payload["text"].startswith("[prod] r-0123456789ab: bob approved alice's request")


def test_escape_mrkdwn() -> None:
    assert escape_mrkdwn("a & <!here> > b") == "a &amp; &lt;!here&gt; &gt; b"


# -- routing, retries, failures ---------------------------------------------------------------


def test_only_subscribed_events_are_sent(receiver: Receiver) -> None:
    async def scenario() -> WebhookNotifier:
        decided = target(receiver.base + "/decided", events=frozenset({"request.approved", "request.denied"}))
        async with notifier(target(receiver.base + "/all"), decided) as n:
            for event in sorted(EVENTS):
                n.notify(event, sample_request())
            n.notify("request.bogus", sample_request())  # unknown: ignored, no exception
        return n

    n = run(scenario())
    assert sorted(r.json()["event"] for r in receiver.on("/decided")) == ["request.approved", "request.denied"]
    assert [r.json()["event"] for r in receiver.on("/all")] == sorted(EVENTS)  # in order
    assert (n.sent, n.failed, n.dropped) == (len(EVENTS) + 2, 0, 0)


def test_retries_after_503_then_succeeds_keeping_order(receiver: Receiver) -> None:
    receiver.script("/hook", 503, 429)

    async def scenario() -> WebhookNotifier:
        async with notifier(target(receiver.base + "/hook"), max_attempts=3) as n:
            n.notify("request.created", sample_request(id="r-1"))
            n.notify("request.approved", sample_request(id="r-2"))
        return n

    n = run(scenario())
    got = receiver.on("/hook")
    assert [r.json()["request"]["id"] for r in got] == ["r-1", "r-1", "r-1", "r-2"]
    assert len({r.headers["x-jitproxy-delivery"] for r in got[:3]}) == 1  # the same delivery retried
    assert (n.sent, n.failed, n.dropped) == (2, 0, 0)


def test_gives_up_after_max_attempts(receiver: Receiver) -> None:
    receiver.script("/hook", 500, 502, 503)

    async def scenario() -> WebhookNotifier:
        async with notifier(target(receiver.base + "/hook"), max_attempts=3) as n:
            n.notify("request.created", sample_request())
        return n

    n = run(scenario())
    assert len(receiver.on("/hook")) == 3
    assert (n.sent, n.failed) == (0, 1)


def test_400_is_not_retried(receiver: Receiver) -> None:
    receiver.script("/hook", 400)

    async def scenario() -> WebhookNotifier:
        async with notifier(target(receiver.base + "/hook"), max_attempts=5) as n:
            n.notify("request.created", sample_request(id="r-1"))
            n.notify("request.denied", sample_request(id="r-2"))  # the next one still goes out
        return n

    n = run(scenario())
    assert [r.json()["request"]["id"] for r in receiver.on("/hook")] == ["r-1", "r-2"]
    assert (n.sent, n.failed) == (1, 1)


def test_connection_refused_is_retried_then_failed() -> None:
    async def scenario() -> WebhookNotifier:
        async with notifier(target(closed_port_url("/hook")), max_attempts=2) as n:
            n.notify("request.created", sample_request())
        return n

    n = run(scenario())
    assert (n.sent, n.failed, n.dropped) == (0, 1, 0)


def test_silent_target_does_not_delay_a_good_target(receiver: Receiver, black_hole: str) -> None:
    timeout_s = 2.0

    async def scenario() -> tuple[WebhookNotifier, float, float]:
        n = notifier(target(black_hole, timeout_s=timeout_s, name="hole"), target(receiver.base + "/good"))
        await n.start()
        started = time.monotonic()
        n.notify("request.created", sample_request(id="r-1"))
        n.notify("request.approved", sample_request(id="r-2"))
        await asyncio.to_thread(receiver.wait_for, "/good", 2)
        delivered = time.monotonic() - started
        # The silent target is still on its first attempt: close gives up on it quickly.
        started = time.monotonic()
        await n.close(drain_timeout_s=0.2)
        return n, delivered, time.monotonic() - started

    n, delivered, closing = run(scenario())
    assert delivered < timeout_s / 2
    assert closing < 1.0
    # good: 2 sent; hole: the attempt in flight failed, the queued one was dropped.
    assert (n.sent, n.failed, n.dropped) == (2, 1, 1)


def test_silent_target_times_out(black_hole: str) -> None:
    async def scenario() -> tuple[WebhookNotifier, float]:
        started = time.monotonic()
        async with notifier(target(black_hole, timeout_s=0.2), max_attempts=2) as n:
            n.notify("request.created", sample_request())
        return n, time.monotonic() - started

    with structlog.testing.capture_logs() as logs:
        n, elapsed = run(scenario())
    assert (n.sent, n.failed) == (0, 1)
    assert 0.4 <= elapsed < 2.0
    assert [e["error"] for e in logs if e["event"] in ("notify.retry", "notify.failed")] == ["timeout"] * 2


# -- queueing and lifecycle -------------------------------------------------------------------


def test_full_queue_drops_and_counts(receiver: Receiver) -> None:
    async def scenario() -> WebhookNotifier:
        n = notifier(target(receiver.base + "/hook"), queue_size=2)
        for i in range(5):  # not started yet: nothing is consumed
            n.notify("request.created", sample_request(id=f"r-{i}"))
        assert n.dropped == 3
        await n.start()
        await n.close()
        return n

    with structlog.testing.capture_logs() as logs:
        n = run(scenario())
    assert [r.json()["request"]["id"] for r in receiver.on("/hook")] == ["r-0", "r-1"]
    assert (n.sent, n.failed, n.dropped) == (2, 0, 3)
    drops = [e for e in logs if e["event"] == "notify.dropped"]
    assert len(drops) == 3 and all(e["log_level"] == "warning" for e in drops)


def test_close_drains_queued_events_and_then_refuses(receiver: Receiver) -> None:
    receiver.script("/hook", 503)  # the first needs a retry while the rest wait in the queue

    async def scenario() -> WebhookNotifier:
        n = notifier(target(receiver.base + "/hook"))
        await n.start()
        for i in range(20):
            n.notify("request.created", sample_request(id=f"r-{i}"))
        await n.close(drain_timeout_s=5)
        n.notify("request.created", sample_request(id="late"))  # after close: dropped, no raise
        return n

    n = run(scenario())
    ids = [r.json()["request"]["id"] for r in receiver.on("/hook")]
    assert ids == ["r-0"] + [f"r-{i}" for i in range(20)]
    assert (n.sent, n.failed, n.dropped) == (20, 0, 1)


def test_notify_from_another_thread(receiver: Receiver) -> None:
    async def scenario() -> WebhookNotifier:
        async with notifier(target(receiver.base + "/hook")) as n:
            await asyncio.to_thread(n.notify, "request.expired", sample_request())
        return n

    n = run(scenario())
    assert [r.json()["event"] for r in receiver.on("/hook")] == ["request.expired"]
    assert n.sent == 1


def test_unserializable_request_is_dropped_not_raised(receiver: Receiver) -> None:
    circular: dict[str, Any] = sample_request()
    circular["self"] = circular

    async def scenario() -> WebhookNotifier:
        async with notifier(target(receiver.base + "/hook")) as n:
            n.notify("request.created", circular)
            n.notify("request.created", sample_request(access_until=object()))  # str()-ed
        return n

    n = run(scenario())
    assert (n.sent, n.dropped) == (1, 1)


def test_a_given_client_is_not_closed(receiver: Receiver) -> None:
    async def scenario() -> bool:
        async with httpx.AsyncClient() as client:
            async with notifier(target(receiver.base + "/hook"), client=client) as n:
                n.notify("request.created", sample_request())
            return client.is_closed

    assert run(scenario()) is False
    assert len(receiver.on("/hook")) == 1


# -- signing and secrets ----------------------------------------------------------------------


def test_hmac_signature_verifies(receiver: Receiver) -> None:
    secret = "s3cret-shared-with-receiver"

    async def scenario() -> None:
        async with notifier(target(receiver.base + "/signed", "slack", secret=secret)) as n:
            n.notify("request.created", sample_request())

    run(scenario())
    [got] = receiver.on("/signed")
    ts = got.headers["x-jitproxy-timestamp"]
    assert abs(int(ts) - time.time()) < 60
    expected = hmac.new(secret.encode(), ts.encode() + b"." + got.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(got.headers["x-jitproxy-signature"], f"sha256={expected}")
    tampered = hmac.new(secret.encode(), ts.encode() + b"." + got.body + b" ", hashlib.sha256).hexdigest()
    assert got.headers["x-jitproxy-signature"] != f"sha256={tampered}"


def test_webhook_url_never_logged(receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.script(SECRET_PATH, 503, 200, 404)

    async def scenario() -> None:
        targets = [
            target(receiver.base + SECRET_PATH + "?token=QUERYSECRET", "slack", name="approvers", secret="k"),
            target(closed_port_url(SECRET_PATH), name="refused"),
        ]
        async with notifier(*targets, max_attempts=2, queue_size=2) as n:
            for event in ("request.created", "request.approved", "request.denied"):
                n.notify(event, sample_request())  # retry, success, 404 failure, drop (queue of 2)

    with caplog.at_level(logging.DEBUG), structlog.testing.capture_logs() as logs:
        run(scenario())
    got = receiver.on(SECRET_PATH)
    assert len(got) == 3 and got[0].query == "token=QUERYSECRET"  # the scenario did run
    kinds = {e["event"] for e in logs}
    assert {"notify.retry", "notify.sent", "notify.failed", "notify.dropped"} <= kinds
    assert {e.get("target") for e in logs} >= {"approvers", "refused"}
    assert all(e.get("host") == "127.0.0.1" for e in logs if "target" in e)
    everything = repr(logs) + caplog.text  # caplog: httpx's own "HTTP Request: POST <url>" lines
    assert "httpx" in {r.name for r in caplog.records}
    for leak in ("SECRETXYZ", "/services/", "QUERYSECRET"):
        assert leak not in everything


def test_target_validation_and_repr_hide_the_url() -> None:
    url = "https://hooks.slack.com" + SECRET_PATH
    t = target(url, "slack", secret="k")
    assert t.name == t.host == "hooks.slack.com"
    assert "SECRETXYZ" not in repr(t) and "'k'" not in repr(t)
    assert target(url, events=["request.created"]).events == frozenset({"request.created"})
    for bad in (
        dict(url=url, format="xml"),
        dict(url=url, format="json", events=frozenset({"request.approve"})),
        dict(url=url, format="json", timeout_s=0),
        dict(url="ftp://example.com" + SECRET_PATH, format="json"),
        dict(url="not a url" + SECRET_PATH, format="json"),
    ):
        with pytest.raises(ValueError) as error:
            WebhookTarget(**bad)  # type: ignore[arg-type]
        assert "SECRETXYZ" not in str(error.value)
